"""`jax.jit` of kernel functions and predictors, as neural-tangents programs write it, and the
PyTree structure of `get` selections."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
import pytest

import eqntk
from eqntk import dynamics, nn


def _model(key):
    k1, k2 = jr.split(key)
    return nn.Sequential(
        [nn.Dense(3, 16, W_std=1.5, b_std=0.1, key=k1), nn.Erf(), nn.Dense(16, 1, key=k2)]
    )


@pytest.fixture
def data(getkey):
    x_train = jr.normal(getkey(), (6, 3))
    x_test = jr.normal(getkey(), (4, 3))
    y_train = jr.normal(getkey(), (6, 1))
    return x_train, x_test, y_train


def test_jit_kernel_fn(getkey, data):
    x1, x2, _ = data
    kernel_fn = eqntk.limit(_model(getkey()))
    eager = kernel_fn(x1, x2)
    np.testing.assert_allclose(jax.jit(kernel_fn)(x1, x2).ntk, eager.ntk, rtol=1e-12)
    np.testing.assert_allclose(jax.jit(kernel_fn)(x1).nngp, kernel_fn(x1).nngp, rtol=1e-12)
    # The idiom of neural-tangents programs: `get` static, by name or by position.
    jitted = jax.jit(kernel_fn, static_argnames="get")
    np.testing.assert_allclose(jitted(x1, x2, "ntk"), eager.ntk, rtol=1e-12)
    nngp, ntk = jitted(x1, x2, get=("nngp", "ntk"))
    np.testing.assert_allclose(nngp, eager.nngp, rtol=1e-12)
    np.testing.assert_allclose(ntk, eager.ntk, rtol=1e-12)
    # Masks and diagonal layouts pass as traced and static arguments.
    jitted = jax.jit(kernel_fn, static_argnames=("get", "diagonal_spatial"))
    assert jitted(x1, None, "nngp", diagonal_spatial=True).shape == (6, 6)


def test_jit_kernel_fn_with_array_arguments_and_constants(getkey, data):
    """The model's arrays are constants of `jax.jit(kernel_fn)` and traced inputs of a jitted
    function that takes the kernel function as an argument: both give the eager kernel, and
    only the second follows a change of hyperparameters without recompiling."""
    x1, x2, _ = data
    kernel_fn = eqntk.limit(_model(getkey()))
    wider = eqx.tree_at(lambda f: f.model.layers[0].W_std, kernel_fn, jnp.asarray(2.0))

    traces = []

    @eqx.filter_jit
    def ntk_of(fn, a, b):
        traces.append(None)  # runs once per trace, not per call
        return fn(a, b, "ntk")

    for fn in (kernel_fn, wider):
        np.testing.assert_allclose(ntk_of(fn, x1, x2), fn(x1, x2, "ntk"), rtol=1e-12)
        np.testing.assert_allclose(jax.jit(fn)(x1, x2).ntk, fn(x1, x2, "ntk"), rtol=1e-12)
    assert len(traces) == 1  # one trace for both hyperparameters


def test_jit_batched_kernel_fn(getkey, data):
    x1, x2, _ = data
    kernel_fn = eqntk.limit(_model(getkey()))
    batched = eqntk.batch(kernel_fn, 4)
    # `batch` runs its own compiled tiles, so it is called outside `jit`; hashing it works.
    assert hash(batched) == hash(batched) and batched == batched
    np.testing.assert_allclose(batched(x1, x2, "ntk"), kernel_fn(x1, x2, "ntk"), rtol=1e-12)


def test_jit_predictors(getkey, data):
    x_train, x_test, y_train = data
    kernel_fn = eqntk.limit(_model(getkey()))
    k_dd = kernel_fn(x_train, None, ("nngp", "ntk"))
    k_td = kernel_fn(x_test, x_train, ("nngp", "ntk"))
    k_tt = kernel_fn(x_test, None, "nngp")

    gp = dynamics.gp_inference(k_dd, y_train, diag_reg=1e-3)
    eager = gp(k_td, k_tt, get="ntk")
    jitted = jax.jit(gp, static_argnames="get")(k_td, k_tt, get="ntk")
    np.testing.assert_allclose(jitted.mean, eager.mean, rtol=1e-10)
    np.testing.assert_allclose(jitted.cov, eager.cov, rtol=1e-10, atol=1e-14)

    mse = dynamics.gradient_descent_mse(k_dd.ntk, y_train, learning_rate=1.0)
    t = jnp.array([0.5, 2.0])
    eager = mse(t, 0.0, jnp.zeros((4, 1)), k_td.ntk)
    jitted = jax.jit(mse)(t, 0.0, jnp.zeros((4, 1)), k_td.ntk)
    np.testing.assert_allclose(jitted.fx_test, eager.fx_test, rtol=1e-10)

    ensemble = dynamics.gradient_descent_mse_ensemble(kernel_fn, x_train, y_train, diag_reg=1e-3)
    eager = ensemble(t, x_test, "ntk", compute_cov=True)
    jitted = jax.jit(ensemble, static_argnames=("get", "compute_cov"))(
        t, x_test, "ntk", compute_cov=True
    )
    np.testing.assert_allclose(jitted.mean, eager.mean, rtol=1e-10)

    loss = lambda fx, y: optax.l2_loss(fx, y).sum()
    ode = dynamics.gradient_descent(loss, k_dd.ntk, y_train, learning_rate=1.0)
    eager = ode(t, 0.0, jnp.zeros((4, 1)), k_td.ntk)
    jitted = jax.jit(ode)(t, 0.0, jnp.zeros((4, 1)), k_td.ntk)
    np.testing.assert_allclose(jitted.fx_test, eager.fx_test, rtol=1e-10)


def test_get_tuples_have_one_type(getkey, data):
    """Two identical calls return the same PyTree structure, so `lax.cond` can pick one."""
    x1, x2, y_train = data
    kernel_fn = eqntk.limit(_model(getkey()))
    a = kernel_fn(x1, x2, ("nngp", "ntk"))
    b = kernel_fn(x1, x2, ("nngp", "ntk"))
    assert type(a) is type(b)
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    picked = jax.lax.cond(True, lambda: a, lambda: b)
    np.testing.assert_array_equal(picked.ntk, a.ntk)
    assert type(kernel_fn(x1, x2, ("ntk", "nngp"))) is not type(a)  # another field order

    gp = dynamics.gp_inference(kernel_fn(x1, None, ("nngp", "ntk")), y_train, diag_reg=1e-3)
    k_td = kernel_fn(x2, x1, ("nngp", "ntk"))
    assert type(gp(k_td, get=("nngp", "ntk"))) is type(gp(k_td, get=("nngp", "ntk")))

    model = _model(getkey())
    first = eqntk.empirical_kernel(model, x1, x2, ("nngp", "ntk"))
    second = eqntk.empirical_kernel(model, x1, x2, ("nngp", "ntk"))
    assert type(first) is type(second)
