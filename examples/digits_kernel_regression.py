"""Kernel regression on scikit-learn's 8x8 digits: the NNGP and NTK of an FCN and a CNN against
an ensemble of trained finite networks of the same architectures.

This is the job behind the `eqntk demo` command, and this script runs it through the command's
own entry point (`eqntk demo --help` lists every option). For each architecture it computes the
kernels with [`eqntk.limit`][], predicts the test labels by exact GP inference
([`eqntk.dynamics.gp_inference`][]), trains the finite networks with optax, prints the test
accuracies side by side and saves a bar chart.

    python examples/digits_kernel_regression.py
"""

import json
import pathlib

from eqntk._cli import main as eqntk_command


def main(
    arch: tuple[str, ...] = ("fcn", "cnn"),
    n_train: int = 1000,
    n_test: int = 500,
    out: str | pathlib.Path = "examples-output/digits_kernel_regression",
    **options: int,
) -> dict:
    """Run `eqntk demo`; it prints the accuracy table and writes `results.json`, `accuracy.png`.

    `options` are further options of `eqntk demo` by name (`depth`, `width`, `ensemble`,
    `steps`, `seed`, ...). Returns the contents of `results.json`:
    `{"n_train", "n_test", "accuracy": {arch: {"nngp", "ntk", "finite"}}, ...}`.
    """
    argv = ["demo", "--arch", *arch, "--n-train", str(n_train), "--n-test", str(n_test)]
    for name, value in options.items():
        argv += [f"--{name.replace('_', '-')}", str(value)]
    argv += ["--out", str(out)]
    status = eqntk_command(argv)
    if status != 0:
        raise RuntimeError(f"`eqntk {' '.join(argv)}` failed with status {status}.")
    return json.loads((pathlib.Path(out) / "results.json").read_text())


if __name__ == "__main__":
    main()
