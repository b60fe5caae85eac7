"""Run one side of one case in this interpreter and print its result as a JSON line.

`python -m benchmarks._worker {eqntk,nt} CASE [--quick]`. The harness starts one of these per
side and case, with eqntk's interpreter or the reference one, and reads the last line that
starts with `BENCHMARK-RESULT`.
"""

import argparse
import importlib
import json
import sys
import traceback

from ._cases import CASES
from ._harness import NOT_AVAILABLE, RESULT_PREFIX
from ._timing import start_memory_window, warm_up_backend, window_peak_mib


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks._worker")
    parser.add_argument("side", choices=("eqntk", "nt"))
    parser.add_argument("case", choices=sorted(CASES))
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    case = CASES[args.case]
    side_fn = getattr(importlib.import_module(case.module), getattr(case, args.side))
    # The library is imported before the baseline so that the memory figure is the case's own
    # (a case may start the window later, after building its inputs and model).
    importlib.import_module("eqntk" if args.side == "eqntk" else "neural_tangents")
    warm_up_backend()
    start_memory_window()
    try:
        result = dict(side_fn(quick=args.quick), status="ok")
    except NOT_AVAILABLE as error:
        if args.side != "eqntk":
            raise
        result = {"status": "not available", "reason": f"{type(error).__name__}: {error}"}
    except Exception:
        result = {"status": "error", "reason": traceback.format_exc()}
    baseline, peak = window_peak_mib()
    result.update(peak_mib=peak, baseline_mib=baseline, work_mib=peak - baseline)
    import jax

    result["versions"] = {"python": sys.version.split()[0], "jax": jax.__version__}
    print(RESULT_PREFIX + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
