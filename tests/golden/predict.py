"""The prediction operations of golden `predict` cases (`gp_inference`, `gd_mse`, ...).

Each function compares eqntk's `eqntk.dynamics` results with the stored outputs of one op and
registers itself in `tests.golden.PREDICT_OPS`. The operations run on the stored kernels
(`k_train_train_*`, `k_test_train_*`, `k_test_test_*`), so they are checked whether or not the
case's network is implemented.
"""

import collections

import jax
import jax.numpy as jnp
import numpy as np

from eqntk import dynamics

from ._core import PREDICT_OPS, _compare


# The ODE reference was solved adaptively at rtol = atol = 1.4e-8, and agrees with an
# independent high-accuracy solve to about 1e-7 absolute (SPEC §6, §7): compare at 1e-5 relative
# plus 1e-6 of the array's scale, the accumulated error of two such solves.
ODE_RTOL = 1e-5
ODE_ATOL_SCALE = 1e-6

Pair = collections.namedtuple("Pair", ["nngp", "ntk"])

LOSSES = {
    "cross_entropy": lambda f, y: -jnp.mean(y * jax.nn.log_softmax(f, axis=-1)),
    "mse": lambda f, y: 0.5 * jnp.mean((f - y) ** 2),
}


def _kernels(arrays, which: str) -> Pair:
    return Pair(*(jnp.asarray(arrays[f"k_{which}_{g}"]) for g in Pair._fields))


def _trace_axes(op) -> tuple[int, ...]:
    return tuple(op.get("trace_axes", (-1,)))


def _register(name):
    def decorator(fn):
        PREDICT_OPS[name] = fn
        return fn

    return decorator


def _compare_outputs(op, prefix, arrays, got: dict) -> None:
    for key in op["outputs"]:
        name = key[len(prefix) :]
        if name in got:
            _compare(key, got[name], arrays[key])


def _compare_ode(key: str, got, want: np.ndarray) -> None:
    got = np.asarray(got)
    if got.shape != want.shape:
        raise AssertionError(f"{key}: shape {got.shape}, expected {want.shape}")
    err = np.abs(got - want)
    bound = ODE_RTOL * np.abs(want) + ODE_ATOL_SCALE * np.abs(want).max()
    if not np.all(err <= bound):
        raise AssertionError(
            f"{key}: {(~(err <= bound)).sum()} of {want.size} entries differ beyond the ODE "
            f"tolerance (max abs err {np.nanmax(err):.3g}, max |expected| {np.abs(want).max():.3g})"
        )


@_register("gp_inference")
def _gp_inference(case, arrays, op, prefix):
    y = jnp.asarray(arrays["y_train"])
    predictor = dynamics.gp_inference(
        _kernels(arrays, "train_train"),
        y,
        op["diag_reg"],
        op["diag_reg_absolute_scale"],
        _trace_axes(op),
    )
    k_tt = _kernels(arrays, "test_test") if op["compute_cov"] else None
    out = predictor(_kernels(arrays, "test_train"), k_tt, get=tuple(op["get"]))
    got = {}
    for g in op["get"]:
        got[f"{g}_mean"] = getattr(out, g).mean
        got[f"{g}_cov"] = getattr(out, g).cov
    _compare_outputs(op, prefix, arrays, got)


class _StoredKernelFn:
    """A kernel function that returns the stored kernels of the case for its two inputs."""

    def __init__(self, arrays):
        self.x_train = jnp.asarray(arrays["x_train"])
        self.x_test = jnp.asarray(arrays["x_test"])
        self.arrays = arrays

    def __call__(self, x1, x2=None, get=None):
        if x1 is self.x_train and x2 is None:
            which = "train_train"
        elif x1 is self.x_test and x2 is self.x_train:
            which = "test_train"
        elif x1 is self.x_test and x2 is None:
            which = "test_test"
        else:
            raise AssertionError("unexpected kernel inputs")
        if isinstance(get, str):
            return jnp.asarray(self.arrays[f"k_{which}_{get}"])
        Kernels = collections.namedtuple("Kernels", get)
        return Kernels(*(jnp.asarray(self.arrays[f"k_{which}_{g}"]) for g in get))


@_register("gd_mse_ensemble")
def _gd_mse_ensemble(case, arrays, op, prefix):
    kernel_fn = _StoredKernelFn(arrays)
    predictor = dynamics.gradient_descent_mse_ensemble(
        kernel_fn,
        kernel_fn.x_train,
        jnp.asarray(arrays["y_train"]),
        op["learning_rate"],
        op["diag_reg"],
        op["diag_reg_absolute_scale"],
        _trace_axes(op),
    )
    x_test = None if op["on"] == "train" else kernel_fn.x_test
    t = None if op["t"] is None else jnp.asarray(op["t"])
    out = predictor(t, x_test, get=tuple(op["get"]), compute_cov=op["compute_cov"])
    got = {}
    for g in op["get"]:
        got[f"{g}_mean"] = getattr(out, g).mean
        got[f"{g}_cov"] = getattr(out, g).cov
    _compare_outputs(op, prefix, arrays, got)


def _initial_outputs(arrays, prefix):
    return jnp.asarray(arrays[prefix + "fx_train_0"]), jnp.asarray(arrays[prefix + "fx_test_0"])


@_register("gd_mse")
def _gd_mse(case, arrays, op, prefix):
    kernel = op["kernel"]
    predictor = dynamics.gradient_descent_mse(
        jnp.asarray(arrays[f"k_train_train_{kernel}"]),
        jnp.asarray(arrays["y_train"]),
        op["learning_rate"],
        op["diag_reg"],
        op["diag_reg_absolute_scale"],
        _trace_axes(op),
    )
    f0, g0 = _initial_outputs(arrays, prefix)
    t = None if op["t"] is None else jnp.asarray(op["t"])
    out = predictor(t, f0, g0, jnp.asarray(arrays[f"k_test_train_{kernel}"]))
    _compare_outputs(op, prefix, arrays, {"fx_train_t": out.fx_train, "fx_test_t": out.fx_test})


@_register("gd")
def _gd(case, arrays, op, prefix):
    kernel = op["kernel"]
    predictor = dynamics.gradient_descent(
        LOSSES[op["loss"]],
        jnp.asarray(arrays[f"k_train_train_{kernel}"]),
        jnp.asarray(arrays["y_train"]),
        op["learning_rate"],
        op["momentum"],
        _trace_axes(op),
    )
    f0, g0 = _initial_outputs(arrays, prefix)
    out = predictor(jnp.asarray(op["t"]), f0, g0, jnp.asarray(arrays[f"k_test_train_{kernel}"]))
    _compare_ode(prefix + "fx_train_t", out.fx_train, arrays[prefix + "fx_train_t"])
    _compare_ode(prefix + "fx_test_t", out.fx_test, arrays[prefix + "fx_test_t"])


@_register("max_learning_rate")
def _max_learning_rate(case, arrays, op, prefix):
    size = op["y_train_size"]
    if size == "y_train.size":
        size = int(np.asarray(arrays["y_train"]).size)
    lr = dynamics.max_learning_rate(
        jnp.asarray(arrays[f"k_train_train_{op['kernel']}"]), size, op["momentum"]
    )
    _compare_outputs(op, prefix, arrays, {"lr": lr})
