"""Kernel regression on scikit-learn's 8x8 digits: the NNGP and NTK of an FCN and a CNN against
an ensemble of trained finite networks of the same architectures.

This is the job behind the `eqntk demo` command (same options); see `eqntk demo --help`.
For each architecture it computes the kernels with [`eqntk.limit`][], predicts the test labels
by exact GP inference ([`eqntk.dynamics.gp_inference`][]), trains the finite networks with
optax, prints the test accuracies side by side and saves a bar chart.

    python examples/digits_kernel_regression.py
"""

import json
import pathlib
import sys
from collections.abc import Sequence

from eqntk._cli import _table
from eqntk._demo import run_demo


def main(
    archs: Sequence[str] = ("fcn", "cnn"),
    n_train: int = 1000,
    n_test: int = 500,
    depth: int = 2,
    width: int = 256,
    ensemble: int = 4,
    steps: int = 300,
    seed: int = 0,
    out: str | pathlib.Path = "examples-output/digits_kernel_regression",
) -> dict:
    """Run the comparison; print the accuracy table and write `results.json`, `accuracy.png`.

    Returns `{"n_train", "n_test", "accuracy": {arch: {"nngp", "ntk", "finite"}}}`.
    """
    out = pathlib.Path(out)
    results = run_demo(
        archs=archs,
        n_train=n_train,
        n_test=n_test,
        depth=depth,
        width=width,
        ensemble=ensemble,
        steps=steps,
        seed=seed,
        out=out,
        log=lambda message: print(message, file=sys.stderr, flush=True),
    )
    print(_table(results))
    (out / "results.json").write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
