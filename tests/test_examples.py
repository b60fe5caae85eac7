"""Every example runs at a reduced size and its result means what the example says (the `eqntk`
command line itself: tests/test_cli.py)."""

import importlib.util
import pathlib

import jax
import numpy as np
import pytest


EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"

pytest.importorskip("optax")
pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"examples_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def user_settings():
    # The examples are written for users' default JAX settings, not this suite's strict ones.
    with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
        yield


def test_every_example_is_tested():
    tested = {"digits_kernel_regression", "function_space_dynamics", "hyperparameter_fitting"}
    tested |= {"linearization", "ode_dynamics", "phase_diagram", "wide_resnet", "cluster_kernel"}
    assert {p.stem for p in EXAMPLES.glob("*.py")} == tested


def test_phase_diagram(tmp_path):
    result = load("phase_diagram").main(n_grid=4, depth=20, out=tmp_path)
    c = np.asarray(result["correlation"])  # c[i, j] at W_std[i], b_std[j]
    assert np.all(np.isfinite(c)) and np.all((c >= -1e-6) & (c <= 1 + 1e-6))
    # Ordered phase (W_std = 0.5, b_std = 1.5): the inputs become indistinguishable.
    assert c[0, -1] > 0.999
    # Chaotic phase (W_std = 4, b_std = 0.05): the correlation falls to a fixed point far below
    # the input correlation 0.5 (about 0.005 here).
    assert c[-1, 0] < 0.1
    # More bias orders, more weight variance randomises: monotone along both grid axes.
    assert np.all(np.diff(c, axis=1) > -1e-6) and np.all(np.diff(c, axis=0) < 1e-6)
    assert (tmp_path / "phase_diagram.png").stat().st_size > 0


def test_hyperparameter_fitting(tmp_path):
    result = load("hyperparameter_fitting").main(n_train=100, steps=15, learning_rate=0.1)
    history = result["log_likelihood"]
    # Adam on 3 parameters from a poor start: the evidence rises by several nats.
    assert history[-1] > history[0] + 5.0
    # The fitted GP does not predict worse: at most 0.02 more MSE (targets have variance 1).
    assert result["test_error_after"] < result["test_error_before"] + 0.02
    assert result["noise"] > 0 and result["W_std"] > 0 and result["b_std"] > 0


def test_function_space_dynamics(tmp_path):
    result = load("function_space_dynamics").main(
        width=1024, n_train=16, n_test=50, steps=200, out=tmp_path
    )
    # The closed-form prediction from the infinite NTK tracks the real width-1024 training up
    # to the finite-width fluctuations of the NTK, O(1/sqrt(width)): the prediction's error is
    # under 10% of the distance the outputs travel in training (measured 4.7%; 8.1% at width 128).
    assert result["distance"] < 0.1
    assert (tmp_path / "function_space_dynamics.png").stat().st_size > 0


def test_linearization(tmp_path):
    result = load("linearization").main(widths=(32, 1024), n=32, steps=200, out=tmp_path)
    wide, narrow = result[1024], result[32]
    # At width 1024 the two training curves stay within 2% of the initial loss of each other
    # (measured 0.3-0.5%), and closer than at width 32 (measured 3.5%).
    assert wide["distance"] < 0.02
    assert wide["distance"] < narrow["distance"]
    assert float(wide["finite"][-1]) < 0.2 * float(wide["finite"][0])  # it did train
    assert (tmp_path / "linearization.png").stat().st_size > 0


def test_ode_dynamics(tmp_path):
    result = load("ode_dynamics").main(n_train=100, n_test=100, n_times=8, out=tmp_path)
    loss = np.asarray(result["loss"])
    # Gradient flow never increases the loss; it starts at log(10) (zero outputs).
    assert np.isclose(loss[0], np.log(10)) and np.all(np.diff(loss) < 1e-6)
    assert loss[-1] < 0.1
    # 100 training digits: the trained infinite network gets about 95% of 100 test digits.
    assert float(result["test_accuracy"][-1]) > 0.85
    assert (tmp_path / "ode_dynamics.png").stat().st_size > 0


# tests/nn/test_conv.py trains a WideResNet by default; golden cases check its kernel.
@pytest.mark.slow
def test_wide_resnet():
    load("wide_resnet").main()


def test_cluster_kernel(tmp_path):
    pytest.importorskip("zarr")
    example = load("cluster_kernel")
    store = str(tmp_path / "digits.zarr")
    nngp, ntk = example.main(store, n=10, batch_size=4, distributed=False)
    # Run again: every tile is found on disk, checked and kept.
    again, _ = example.main(store, n=10, batch_size=4, distributed=False)
    assert np.array_equal(np.asarray(nngp), np.asarray(again))
    assert ntk.shape == (10, 10) and np.array_equal(np.asarray(ntk), np.asarray(ntk).T)


def test_digits_kernel_regression(tmp_path):
    result = load("digits_kernel_regression").main(
        arch=("fcn",),
        n_train=100,
        n_test=100,
        depth=1,
        width=64,
        ensemble=1,
        steps=10,
        out=tmp_path,
    )
    # 100 training digits: NNGP regression gets about 80% of 100 test digits (chance: 10%).
    assert result["accuracy"]["fcn"]["nngp"] > 0.7
    assert (tmp_path / "accuracy.png").stat().st_size > 0
