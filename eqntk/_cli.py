"""The `eqntk` command line: `eqntk demo` runs kernel regression on scikit-learn's digits."""

import argparse
import json
import pathlib
import sys
import time
from collections.abc import Sequence


DEMO_DESCRIPTION = """\
Kernel regression with infinitely wide networks on the 8x8 handwritten digits that ship with
scikit-learn (no download). For each architecture it computes the NNGP and NTK with
`eqntk.limit`, predicts the test labels by exact Gaussian-process inference
(`eqntk.dynamics.gp_inference`), trains an ensemble of finite networks of the same architecture
with optax, and prints the test accuracies side by side. It writes the table (results.json) and
a bar chart (accuracy.png) to the output folder.
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eqntk",
        description="eqntk: infinite-width neural networks (NNGP and NTK) the Equinox way.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="digits kernel regression: infinite networks against trained finite ones",
        description=DEMO_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument(
        "--arch",
        nargs="+",
        choices=("fcn", "cnn"),
        default=["fcn", "cnn"],
        help="architectures to compare (default: both)",
    )
    demo.add_argument("--n-train", type=int, default=1000, help="training images (default 1000)")
    demo.add_argument("--n-test", type=int, default=500, help="test images (default 500)")
    demo.add_argument("--depth", type=int, default=2, help="hidden layers (default 2)")
    demo.add_argument(
        "--width", type=int, default=256, help="width of the finite FCNs (default 256)"
    )
    demo.add_argument(
        "--channels", type=int, default=16, help="channels of the finite CNNs (default 16)"
    )
    demo.add_argument(
        "--ensemble", type=int, default=3, help="finite networks trained per architecture"
    )
    demo.add_argument(
        "--steps", type=int, default=150, help="training steps per finite network (default 150)"
    )
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    demo.add_argument(
        "--out",
        type=pathlib.Path,
        default=pathlib.Path("eqntk-demo"),
        help="output folder for results.json and accuracy.png (default ./eqntk-demo)",
    )
    demo.add_argument("--quiet", action="store_true", help="no progress messages")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `eqntk` command line.

    **Arguments:**

    - `argv`: the arguments (without the program name); `None` reads `sys.argv`.

    **Returns:**

    The exit status.

    **Example:**

    ```python
    from eqntk._cli import main

    main(["demo", "--arch", "fcn", "--n-train", "100", "--n-test", "50", "--ensemble", "1",
          "--steps", "20", "--out", "/tmp/eqntk-demo", "--quiet"])
    ```
    """
    args = _parser().parse_args(argv)
    if args.command is None:
        _parser().print_help()
        return 0
    if args.command == "demo":
        return _demo(args)
    return 2


def _log(args: argparse.Namespace, message: str) -> None:
    if not args.quiet:
        print(message, file=sys.stderr, flush=True)


def _demo(args: argparse.Namespace) -> int:
    for name in ("n_train", "n_test", "depth", "width", "channels", "ensemble", "steps"):
        if getattr(args, name) < 1:
            print(f"eqntk demo: --{name.replace('_', '-')} must be at least 1.", file=sys.stderr)
            return 2
    try:
        from ._demo import run_demo
    except ImportError as error:
        print(
            f"eqntk demo needs the example dependencies ({error.name} is missing): "
            f'pip install "eqntk[examples]"',
            file=sys.stderr,
        )
        return 1
    start = time.perf_counter()
    results = run_demo(
        archs=args.arch,
        n_train=args.n_train,
        n_test=args.n_test,
        depth=args.depth,
        width=args.width,
        channels=args.channels,
        ensemble=args.ensemble,
        steps=args.steps,
        seed=args.seed,
        out=args.out,
        log=lambda message: _log(args, message),
    )
    print(_table(results))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    _log(
        args,
        f"wrote {args.out / 'results.json'} and {args.out / 'accuracy.png'} "
        f"({time.perf_counter() - start:.0f} s)",
    )
    return 0


def _table(results: dict) -> str:
    rows = [("architecture", "NNGP", "NTK", "finite ensemble")]
    for arch, r in results["accuracy"].items():
        rows.append((arch, f"{r['nngp']:.3f}", f"{r['ntk']:.3f}", f"{r['finite']:.3f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [f"Test accuracy on {results['n_test']} digits ({results['n_train']} training images):"]
    for i, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths)))
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
