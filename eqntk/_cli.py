"""The `eqntk` command line: `eqntk demo` runs kernel regression on scikit-learn's digits.

This module imports only the standard library: JAX and the rest of eqntk load in the command
that needs them, so that `eqntk --help` and `eqntk --version` answer at once.
"""

import argparse
import importlib.util
import json
import math
import pathlib
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import NoReturn


DIGITS = 1797  # images in scikit-learn's digits set

DEMO_DESCRIPTION = """\
Kernel regression with infinitely wide networks on the 8x8 handwritten digits that ship with
scikit-learn (no download). For each architecture it computes the NNGP and NTK with
`eqntk.limit`, predicts the test labels by exact Gaussian-process inference
(`eqntk.dynamics.gp_inference`), trains an ensemble of finite networks of the same architecture
with Adam (optax), and prints the test accuracies side by side: each infinite network, one
finite network (mean over the ensemble) and the ensemble's mean prediction. It writes the table
(results.json) and a bar chart (accuracy.png) to the output folder. With the defaults it takes
about a minute on two CPU cores.
"""


class _Parser(argparse.ArgumentParser):
    """Argument errors as one line, `eqntk demo: error: ...`, with exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _at_least(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def _seed(text: str) -> int:
    value = _at_least(0)(text)
    if value >= 2**32:
        raise argparse.ArgumentTypeError(f"must be below 2**32, got {value}")
    return value


def _learning_rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _count(n: int, noun: str) -> str:
    """`1 finite network`, `3 finite networks`."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _version() -> str:
    from . import __version__

    return f"eqntk {__version__}"


def _parser() -> tuple[_Parser, _Parser]:
    """The `eqntk` parser and its `demo` subparser."""
    parser = _Parser(
        prog="eqntk",
        description="eqntk: infinite-width neural networks (NNGP and NTK) the Equinox way.",
    )
    parser.add_argument("--version", action="version", version=_version())
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
        help="architectures to compare (default: fcn cnn)",
    )
    positive = _at_least(1)
    demo.add_argument(
        "--n-train",
        type=positive,
        default=1000,
        metavar="N",
        help="training images (default: %(default)s)",
    )
    demo.add_argument(
        "--n-test",
        type=positive,
        default=500,
        metavar="N",
        help=f"test images; at most {DIGITS} with --n-train (default: %(default)s)",
    )
    demo.add_argument(
        "--depth",
        type=positive,
        default=2,
        metavar="N",
        help="hidden layers (default: %(default)s)",
    )
    demo.add_argument(
        "--width",
        type=positive,
        default=256,
        metavar="N",
        help="width of the finite FCNs (default: %(default)s)",
    )
    demo.add_argument(
        "--channels",
        type=positive,
        default=16,
        metavar="N",
        help="channels of the finite CNNs (default: %(default)s)",
    )
    demo.add_argument(
        "--ensemble",
        type=positive,
        default=3,
        metavar="N",
        help="finite networks trained per architecture (default: %(default)s)",
    )
    demo.add_argument(
        "--steps",
        type=positive,
        default=1000,
        metavar="N",
        help="Adam steps per finite network (default: %(default)s)",
    )
    demo.add_argument(
        "--batch-size",
        type=positive,
        default=128,
        metavar="N",
        help="minibatch size; the whole training set if larger (default: %(default)s)",
    )
    demo.add_argument(
        "--learning-rate",
        type=_learning_rate,
        default=3e-3,
        metavar="RATE",
        help="Adam learning rate (default: %(default)s)",
    )
    demo.add_argument(
        "--seed",
        type=_seed,
        default=0,
        metavar="N",
        help="random seed, 0 to 2**32 - 1 (default: %(default)s)",
    )
    demo.add_argument(
        "--out",
        type=pathlib.Path,
        default=pathlib.Path("eqntk-demo"),
        metavar="FOLDER",
        help="output folder for results.json and accuracy.png (default: ./%(default)s)",
    )
    demo.add_argument(
        "--quiet", action="store_true", help="no progress messages (default: show them)"
    )
    return parser, demo


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `eqntk` command line.

    **Arguments:**

    - `argv`: the arguments (without the program name); `None` reads `sys.argv`.

    **Returns:**

    The exit status. Bad arguments exit (`SystemExit`) with status 2 and a one-line message
    before any computing starts.

    **Example:**

    ```python
    from eqntk._cli import main

    main(["demo", "--arch", "fcn", "--n-train", "100", "--n-test", "50", "--ensemble", "1",
          "--steps", "20", "--out", "/tmp/eqntk-demo", "--quiet"])
    ```
    """
    parser, demo = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    _check_demo(demo, args)
    return _demo(args)


def _check_demo(demo: _Parser, args: argparse.Namespace) -> None:
    """The checks that involve several arguments or the file system, before any computing."""
    if len(set(args.arch)) < len(args.arch):
        demo.error(f"argument --arch: each architecture at most once, got {' '.join(args.arch)}")
    if args.n_train + args.n_test > DIGITS:
        demo.error(
            f"argument --n-train/--n-test: together at most {DIGITS} (the images of the "
            f"digits set), got {args.n_train} + {args.n_test} = {args.n_train + args.n_test}"
        )
    out: pathlib.Path = args.out
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as error:
        reason = error.strerror or str(error)
        demo.error(f"argument --out: cannot write to the folder {str(out)!r} ({reason})")
    for name in ("results.json", "accuracy.png"):
        if (out / name).is_dir():
            demo.error(f"argument --out: {str(out / name)!r} is a folder, not a file")
    missing = [
        package
        for package in ("optax", "sklearn", "matplotlib")
        if importlib.util.find_spec(package) is None
    ]
    if missing:
        print(
            f"eqntk demo: error: needs the example dependencies ({', '.join(missing)} missing): "
            f'pip install "eqntk[examples]"',
            file=sys.stderr,
        )
        sys.exit(1)


# The options of `eqntk demo` that set up the networks and their training, passed on to
# `run_demo` and recorded in `results.json`.
_DEMO_SETTINGS = (
    "depth",
    "width",
    "channels",
    "ensemble",
    "steps",
    "batch_size",
    "learning_rate",
    "seed",
)


def _demo(args: argparse.Namespace) -> int:
    start = time.perf_counter()

    def log(message: str) -> None:
        if not args.quiet:
            print(f"[{time.perf_counter() - start:5.1f} s] {message}", file=sys.stderr, flush=True)

    log("importing JAX and eqntk ...")
    from . import __version__
    from ._demo import run_demo

    settings = {name: getattr(args, name) for name in _DEMO_SETTINGS}
    results = run_demo(
        archs=args.arch, n_train=args.n_train, n_test=args.n_test, out=args.out, log=log, **settings
    )
    results = {"eqntk": __version__, **results, "settings": settings}
    results["seconds"]["total"] = round(time.perf_counter() - start, 1)
    print(_table(results, args.ensemble), flush=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    log(f"wrote {args.out / 'results.json'} and {args.out / 'accuracy.png'}")
    return 0


def _table(results: dict, ensemble: int) -> str:
    ensemble_header = f"ensemble of {_count(ensemble, 'network')}"
    rows = [("architecture", "NNGP", "NTK", "one finite network", ensemble_header)]
    for arch, r in results["accuracy"].items():
        one = sum(r["finite_networks"]) / len(r["finite_networks"])
        rows.append(
            (arch, f"{r['nngp']:.3f}", f"{r['ntk']:.3f}", f"{one:.3f}", f"{r['finite']:.3f}")
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [f"Test accuracy on {results['n_test']} digits ({results['n_train']} training images):"]
    for i, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
