"""neural-tangents' `predict` module, on [`eqntk.dynamics`][]: the same functions, arguments
and return values (plain arrays, `(fx_train, fx_test)` tuples, `Gaussian(mean, covariance)`
named tuples, `ODEState`)."""

import functools
from typing import Any, NamedTuple

import equinox as eqx
import jax.numpy as jnp

from .. import dynamics
from .._callable import named_tuple


class Gaussian(NamedTuple):
    """A `(mean, covariance)` named tuple, as neural-tangents' `predict.Gaussian`.

    **Example:**

    ```python
    import jax.numpy as jnp
    from eqntk.compat import predict

    mean, cov = predict.Gaussian(jnp.zeros(2), jnp.eye(2))
    assert cov.shape == (2, 2)
    ```
    """

    mean: Any
    covariance: Any


class ODEState(eqx.Module):
    """The state of `gradient_descent`'s ODE: outputs and, with momentum, their velocities
    (neural-tangents' `predict.ODEState`).

    **Example:**

    ```python
    import jax.numpy as jnp
    from eqntk.compat import predict

    state = predict.ODEState(jnp.zeros((3, 1)))
    assert state.fx_test is None
    ```
    """

    fx_train: Any = None
    fx_test: Any = None
    qx_train: Any = None
    qx_test: Any = None


def _run_predictor(predictor, t, fx_train_0, fx_test_0, k_test_train, keywords=None):
    """Call an eqntk predictor with neural-tangents' initial outputs: `fx_train_0=None` starts
    the training outputs at zero, and `k_test_train` is needed (and only used) with
    `fx_test_0`; `keywords` go to the predictor as they are (e.g. initial velocities)."""
    if fx_test_0 is not None and k_test_train is None:
        raise ValueError("`k_test_train` must be given with `fx_test_0`.")
    return predictor(
        t,
        0.0 if fx_train_0 is None else fx_train_0,
        fx_test_0,
        k_test_train if fx_test_0 is not None else None,
        **(keywords or {}),
    )


def _nt_outputs(out, fx_train_0, fx_test_0):
    """neural-tangents' return value: `fx_train` without test outputs, `fx_test` when
    `fx_train_0` is `None`, `(fx_train, fx_test)` otherwise."""
    if fx_test_0 is None:
        return out.fx_train
    if fx_train_0 is None:
        return out.fx_test
    return out.fx_train, out.fx_test


def _gaussians(out, get, names, with_cov):
    """eqntk Gaussians -> neural-tangents' `Gaussian`s or means."""

    def one(g):
        return Gaussian(g.mean, g.cov) if with_cov else g.mean

    if isinstance(get, str):
        return one(getattr(out, get))
    return named_tuple("Gaussians", names)(*(one(getattr(out, n)) for n in names))


def gradient_descent_mse(
    k_train_train,
    y_train,
    learning_rate=1.0,
    diag_reg=0.0,
    diag_reg_absolute_scale=False,
    trace_axes=(-1,),
):
    """Closed-form gradient-flow dynamics of the MSE loss (neural-tangents'
    `predict.gradient_descent_mse`), computed by [`eqntk.dynamics.gradient_descent_mse`][].

    **Returns:**

    `predict_fn(t=None, fx_train_0=0., fx_test_0=None, k_test_train=None)`, returning
    `fx_train_t`, `fx_test_t` or `(fx_train_t, fx_test_t)` as neural-tangents does
    (`fx_train_0=None` skips the training set).

    **Example:**

    ```python
    import jax.random as jr
    import eqntk.compat as nt
    from eqntk.compat import stax

    _, _, kernel_fn = stax.serial(stax.Dense(8), stax.Relu(), stax.Dense(1))
    x_train, x_test = jr.normal(jr.key(0), (5, 3)), jr.normal(jr.key(1), (2, 3))
    y_train = jr.normal(jr.key(2), (5, 1))
    predict_fn = nt.predict.gradient_descent_mse(kernel_fn(x_train, None, "ntk"), y_train)
    fx_train, fx_test = predict_fn(t=1.0, fx_train_0=0.0, fx_test_0=0.0,
                                   k_test_train=kernel_fn(x_test, x_train, "ntk"))
    assert fx_train.shape == (5, 1) and fx_test.shape == (2, 1)
    ```
    """
    predictor = dynamics.gradient_descent_mse(
        jnp.asarray(k_train_train),
        y_train,
        learning_rate,
        diag_reg,
        diag_reg_absolute_scale,
        trace_axes,
    )
    y_train = jnp.asarray(y_train)

    def predict_fn(t=None, fx_train_0=0.0, fx_test_0=None, k_test_train=None):
        if fx_test_0 is None and fx_train_0 is None:
            raise ValueError("`fx_train_0` and `fx_test_0` cannot both be None.")
        out = _run_predictor(predictor, t, fx_train_0, fx_test_0, k_test_train)
        return _nt_outputs(out, fx_train_0, fx_test_0)

    return predict_fn


def gp_inference(
    k_train_train, y_train, diag_reg=0.0, diag_reg_absolute_scale=False, trace_axes=(-1,)
):
    """Exact Gaussian-process posteriors (neural-tangents' `predict.gp_inference`), computed by
    [`eqntk.dynamics.gp_inference`][].

    `k_train_train` is an array, a `Kernel`, or a named tuple with `nngp`/`ntk` fields.

    **Returns:**

    `predict_fn(get=None, k_test_train=None, k_test_test=None)`: means, or
    `Gaussian(mean, covariance)` when `k_test_test` is given; one value for a string `get`, a
    named tuple for a tuple (`None` means `("nngp", "ntk")`).

    **Example:**

    ```python
    import jax.random as jr
    import eqntk.compat as nt
    from eqntk.compat import stax

    _, _, kernel_fn = stax.serial(stax.Dense(8), stax.Relu(), stax.Dense(1))
    x_train, x_test = jr.normal(jr.key(0), (5, 3)), jr.normal(jr.key(1), (2, 3))
    y_train = jr.normal(jr.key(2), (5, 1))
    predict_fn = nt.predict.gp_inference(kernel_fn(x_train), y_train, diag_reg=1e-4)
    mean, cov = predict_fn("nngp", kernel_fn(x_test, x_train), kernel_fn(x_test, None, "nngp"))
    assert mean.shape == (2, 1) and cov.shape == (2, 2)
    ```
    """
    cache: dict = {}

    def predictor(names):
        if names not in cache:
            cache[names] = dynamics.gp_inference(
                _kernel_like(k_train_train),
                y_train,
                diag_reg,
                diag_reg_absolute_scale,
                trace_axes,
                get=names,
            )
        return cache[names]

    def predict_fn(get=None, k_test_train=None, k_test_test=None):
        names = ("nngp", "ntk") if get is None else (get,) if isinstance(get, str) else get
        names = tuple(names)
        out = predictor(names)(_kernel_like(k_test_train), _kernel_like(k_test_test), get=names)
        return _gaussians(out, get, names, k_test_test is not None)

    return predict_fn


def _kernel_like(k):
    """A compat `Kernel` (or anything with `nngp`/`ntk` fields) as a named tuple."""
    if k is None or isinstance(k, jnp.ndarray):
        return k
    if hasattr(k, "nngp") and not isinstance(k, tuple):
        ntk = getattr(k, "ntk", None)
        return named_tuple("Kernel", ("nngp", "ntk"))(k.nngp, ntk)
    return k


def gradient_descent_mse_ensemble(
    kernel_fn,
    x_train,
    y_train,
    learning_rate=1.0,
    diag_reg=0.0,
    diag_reg_absolute_scale=False,
    trace_axes=(-1,),
    **kernel_fn_train_train_kwargs,
):
    """Mean and covariance of an infinite ensemble trained on the MSE (neural-tangents'
    `predict.gradient_descent_mse_ensemble`), computed by
    [`eqntk.dynamics.gradient_descent_mse_ensemble`][].

    Keyword arguments (e.g. `mask_constant`, `diagonal_spatial`) are passed to every call of
    `kernel_fn`; those given to `predict_fn` are added for the calls on the test set.

    **Returns:**

    `predict_fn(t=None, x_test=None, get=None, compute_cov=False, **kernel_fn_kwargs)`:
    means, or `Gaussian(mean, covariance)` with `compute_cov=True`; one value for a string
    `get`, a named tuple for a tuple (`None` means `("nngp", "ntk")`).

    **Example:**

    ```python
    import jax.random as jr
    import eqntk.compat as nt
    from eqntk.compat import stax

    _, _, kernel_fn = stax.serial(stax.Dense(8), stax.Relu(), stax.Dense(1))
    x_train, x_test = jr.normal(jr.key(0), (5, 3)), jr.normal(jr.key(1), (2, 3))
    y_train = jr.normal(jr.key(2), (5, 1))
    predict_fn = nt.predict.gradient_descent_mse_ensemble(kernel_fn, x_train, y_train)
    mean, cov = predict_fn(x_test=x_test, get="ntk", compute_cov=True)
    assert mean.shape == (2, 1) and cov.shape == (2, 2)
    ```
    """

    def predict_fn(t=None, x_test=None, get=None, compute_cov=False, **kernel_fn_test_kwargs):
        kwargs = {**kernel_fn_train_train_kwargs, **kernel_fn_test_kwargs}
        fn = functools.partial(kernel_fn, **kwargs) if kwargs else kernel_fn
        predictor = dynamics.gradient_descent_mse_ensemble(
            fn,
            jnp.asarray(x_train),
            y_train,
            learning_rate,
            diag_reg,
            diag_reg_absolute_scale,
            trace_axes,
        )
        names = ("nngp", "ntk") if get is None else (get,) if isinstance(get, str) else tuple(get)
        x_test = None if x_test is None else jnp.asarray(x_test)
        out = predictor(t, x_test, get=names, compute_cov=compute_cov)
        return _gaussians(out, get, names, compute_cov)

    return predict_fn


def gradient_descent(
    loss, k_train_train, y_train, learning_rate=1.0, momentum=None, trace_axes=(-1,)
):
    """Gradient-descent dynamics for any loss (neural-tangents' `predict.gradient_descent`),
    solved by [`eqntk.dynamics.gradient_descent`][] (diffrax).

    **Returns:**

    `predict_fn(t=None, fx_train_or_state_0=0., fx_test_0=None, k_test_train=None)`, returning
    `fx_train_t`, `fx_test_t`, `(fx_train_t, fx_test_t)`, or an `ODEState` when given one.
    `t=None` means infinite time (integrated until the outputs stop changing).

    **Example:**

    ```python
    import jax.numpy as jnp
    import jax.random as jr
    import eqntk.compat as nt

    k = jnp.eye(3) + 0.1
    y = jr.normal(jr.key(0), (3, 1))
    loss = lambda fx, y_hat: 0.5 * jnp.sum((fx - y_hat) ** 2)
    predict_fn = nt.predict.gradient_descent(loss, k, y, learning_rate=1.0)
    state = predict_fn(1.0, nt.predict.ODEState(jnp.zeros((3, 1))))
    later = predict_fn(1.0, state)       # resumes from `state`: time 2 in all
    assert abs(later.fx_train - predict_fn(2.0, 0.0)).max() < 1e-5
    ```
    """
    predictor = dynamics.gradient_descent(
        loss, jnp.asarray(k_train_train), y_train, learning_rate, momentum, trace_axes
    )

    def predict_fn(t=None, fx_train_or_state_0=0.0, fx_test_0=None, k_test_train=None):
        state_in = isinstance(fx_train_or_state_0, ODEState)
        velocities = {}
        if state_in:
            state = fx_train_or_state_0
            fx_train_0, fx_test_0 = state.fx_train, state.fx_test
            if momentum is None and (state.qx_train is not None or state.qx_test is not None):
                raise ValueError(
                    "Got momentum state variables (`qx_train`, `qx_test`) while `momentum` is None."
                )
            velocities = {"qx_train_0": state.qx_train}
            if fx_test_0 is not None:
                velocities["qx_test_0"] = state.qx_test
        else:
            fx_train_0 = fx_train_or_state_0
        out: Any = _run_predictor(predictor, t, fx_train_0, fx_test_0, k_test_train, velocities)
        if state_in:
            return ODEState(out.fx_train, out.fx_test, out.qx_train, out.qx_test)
        return _nt_outputs(out, fx_train_0, fx_test_0)

    return predict_fn


def max_learning_rate(ntk_train_train, y_train_size=None, momentum=0.0, eps=1e-12):
    """The largest stable learning rate (neural-tangents' `predict.max_learning_rate`).

    **Example:**

    ```python
    import jax.numpy as jnp
    import eqntk.compat as nt

    assert abs(nt.predict.max_learning_rate(2 * jnp.eye(4)) - 4.0) < 1e-6
    ```
    """
    return dynamics.max_learning_rate(ntk_train_train, y_train_size, momentum, eps)
