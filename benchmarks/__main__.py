"""`python -m benchmarks [--compare-nt] [--nt-python PATH] [case ...]`: run the benchmark suite."""

import argparse
import datetime
import json
import os
import sys
from pathlib import Path

from ._cases import CASES
from ._harness import run_cases, table_lines


DEFAULT_NT_PYTHON = "/work/ntref/bin/python"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Time eqntk (and, with --compare-nt, neural-tangents 0.6.5 side by side).",
    )
    parser.add_argument(
        "cases",
        nargs="*",
        metavar="case",
        help=f"cases to run (default: all): {', '.join(CASES)}; a topic prefix such as 'cnn' "
        "selects all its cases",
    )
    parser.add_argument(
        "--compare-nt", action="store_true", help="also time neural-tangents in a subprocess"
    )
    parser.add_argument(
        "--nt-python",
        default=DEFAULT_NT_PYTHON,
        help=f"interpreter with neural-tangents 0.6.5 installed (default {DEFAULT_NT_PYTHON})",
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the harness only")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per side and case")
    parser.add_argument("--json", type=Path, default=None, help="also write all results here")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    parser.add_argument(
        "--compilation-cache",
        type=Path,
        default=None,
        metavar="DIR",
        help="both sides keep compiled programs in DIR (JAX's persistent compilation cache, "
        "programs that compile in 0.1 s or more): run twice, the second run's first calls "
        "are those of a process that finds its programs there",
    )
    args = parser.parse_args(argv)

    if args.list:
        for case in CASES.values():
            print(f"{case.name:24s} {case.description}")
        return 0
    selected = []
    for name in args.cases or list(CASES):
        matches = [c for c in CASES.values() if c.name == name or c.name.startswith(name + ".")]
        if not matches:
            parser.error(f"unknown case {name!r}; known cases: {', '.join(CASES)}")
        selected += [c for c in matches if c not in selected]
    if args.compare_nt and not Path(args.nt_python).exists():
        parser.error(
            f"--nt-python {args.nt_python} does not exist; create the reference environment "
            "as benchmarks/README.md describes."
        )

    if args.compilation_cache is not None:
        # The workers inherit the environment; JAX reads its options from it.
        args.compilation_cache.mkdir(parents=True, exist_ok=True)
        os.environ["JAX_COMPILATION_CACHE_DIR"] = str(args.compilation_cache.resolve())
        os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.1"
    results = run_cases(
        selected,
        compare_nt=args.compare_nt,
        nt_python=args.nt_python,
        quick=args.quick,
        timeout_s=args.timeout,
    )
    print()
    print(
        f"eqntk benchmarks, {datetime.date.today().isoformat()}"
        + (" (quick)" if args.quick else "")
    )
    print("\n".join(table_lines(results["evaluations"], results["unavailable"])))
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1))
    failed = any(e["verdict"].startswith("FAIL") for e in results["evaluations"])
    errored = any(why == "error" for _, why in results["unavailable"])
    return 1 if failed or errored else 0


if __name__ == "__main__":
    sys.exit(main())
