"""Fast checks of `eqntk.compat`'s conventions: layouts, return types, errors."""

import jax
import jax.numpy as jnp
import jax.random as jr
import pytest

import eqntk.compat as nt
from eqntk.compat import stax


def test_param_layouts_and_flatten_order():
    init_fn, apply_fn, _ = stax.serial(
        stax.Conv(3, (2, 2), b_std=0.1), stax.Flatten(), stax.Dense(2, b_std=0.1)
    )
    out_shape, (conv, flat, dense) = init_fn(jr.key(0), (-1, 4, 4, 2))
    assert out_shape == (-1, 2) and flat == ()
    assert conv[0].shape == (2, 2, 2, 3) and conv[1].shape == (1, 1, 1, 3)  # HWIO, NHWC bias
    assert dense[0].shape == (27, 2) and dense[1].shape == (1, 2)  # (in, out)
    _, flatten_apply, _ = stax.Flatten()
    x = jr.normal(jr.key(1), (2, 3, 3, 2))
    assert (flatten_apply((), x) == x.reshape(2, -1)).all()  # (h, w, c) order
    y = apply_fn((conv, flat, dense), jr.normal(jr.key(2), (5, 4, 4, 2)))
    assert y.shape == (5, 2)


def test_kernel_get_forms_and_continuation():
    _, _, kernel_fn = stax.serial(stax.Dense(4, 1.5, 0.1), stax.Relu(), stax.Dense(1))
    x1, x2 = jr.normal(jr.key(0), (3, 2)), jr.normal(jr.key(1), (2, 2))
    k = kernel_fn(x1, x2)
    assert isinstance(k, nt.Kernel) and k.shape1 == (3, 1) and k.shape2 == (2, 1)
    nngp, ntk = kernel_fn(x1, x2, ("nngp", "ntk"))
    assert jnp.array_equal(nngp, k.nngp) and jnp.array_equal(ntk, k.ntk)
    jitted = jax.jit(kernel_fn, static_argnames="get")
    assert jnp.allclose(jitted(x1, x2, get="ntk"), k.ntk)
    # Continuing from a Kernel of another width, and from a Kernel without an NTK.
    _, _, head = stax.serial(stax.Relu(), stax.Dense(3))
    assert head(k).nngp.shape == (3, 2)
    assert head(k.replace(ntk=None)).ntk is None


@pytest.mark.slow  # compiles three kernels and an eigendecomposition (~5 s)
def test_predict_return_values():
    _, _, kernel_fn = stax.serial(stax.Dense(4, 1.5, 0.1), stax.Relu(), stax.Dense(1))
    x_train, x_test = jr.normal(jr.key(0), (4, 2)), jr.normal(jr.key(1), (2, 2))
    y_train = jr.normal(jr.key(2), (4, 1))
    predict_fn = nt.predict.gradient_descent_mse_ensemble(kernel_fn, x_train, y_train)
    nngp_mean, ntk_mean = predict_fn(x_test=x_test)
    gaussian = predict_fn(x_test=x_test, get="nngp", compute_cov=True)
    assert isinstance(gaussian, nt.predict.Gaussian)
    assert jnp.allclose(gaussian.mean, nngp_mean) and gaussian.covariance.shape == (2, 2)
    assert ntk_mean.shape == (2, 1)


def test_batch_size_zero_is_unbatched():
    _, _, kernel_fn = stax.Dense(1)
    assert nt.batch(kernel_fn, batch_size=0) is kernel_fn
    with pytest.raises(ValueError, match="batch_size"):
        nt.batch(kernel_fn, batch_size=-1)


def test_monte_carlo_sample_counts_share_samples():
    init_fn, apply_fn, _ = stax.serial(stax.Dense(8), stax.Relu(), stax.Dense(1))
    x = jr.normal(jr.key(0), (2, 3))
    several = list(nt.monte_carlo_kernel_fn(init_fn, apply_fn, jr.key(1), [1, 2])(x, None, "ntk"))
    two = nt.monte_carlo_kernel_fn(init_fn, apply_fn, jr.key(1), 2)(x, None, "ntk")
    # The estimate at 2 samples continues the one at 1: exactly the 2-sample estimate.
    assert len(several) == 2 and jnp.allclose(several[1], two, rtol=1e-12)


def test_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match="Parameterization"):
        stax.Dense(2, parameterization="mean_field")
    with pytest.raises(ValueError, match="padding"):
        stax.Conv(2, (3, 3), padding="REFLECT")
    with pytest.raises(ValueError, match="n_samples"):
        nt.monte_carlo_kernel_fn(None, None, jr.key(0), [0, 2])


@pytest.mark.slow  # one ODE solve to steady state (~3 s unloaded)
def test_gradient_descent_infinite_time_is_the_mse_limit():
    k = jnp.eye(3) + 0.1
    k_td = jnp.full((2, 3), 0.2)
    y = jr.normal(jr.key(0), (3, 1))
    loss = lambda fx, y_hat: 0.5 * jnp.sum((fx - y_hat) ** 2)
    fx_train, fx_test = nt.predict.gradient_descent(loss, k, y)(None, 0.0, jnp.zeros((2, 1)), k_td)
    mse_train, mse_test = nt.predict.gradient_descent_mse(k, y)(None, 0.0, jnp.zeros((2, 1)), k_td)
    # The solve stops once the vector field is below the step-size controller's tolerances
    # (diffrax's steady-state event); the residual left is far below 1e-6 for this kernel.
    assert jnp.allclose(fx_train, mse_train, atol=1e-6)
    assert jnp.allclose(fx_test, mse_test, atol=1e-6)


def test_gradient_descent_with_momentum_resumes_from_an_ode_state():
    k = jnp.eye(3) + 0.1
    k_td = jnp.full((2, 3), 0.2)
    y = jr.normal(jr.key(0), (3, 1))
    loss = lambda fx, y_hat: 0.5 * jnp.sum((fx - y_hat) ** 2)
    predict_fn = nt.predict.gradient_descent(loss, k, y, learning_rate=0.5, momentum=0.9)
    start = nt.predict.ODEState(jnp.zeros((3, 1)), jnp.zeros((2, 1)))
    state = predict_fn(1.0, start, k_test_train=k_td)
    assert float(jnp.abs(state.qx_train).max()) > 1e-2  # a velocity to resume from
    later, whole = (
        predict_fn(1.0, state, k_test_train=k_td),
        predict_fn(2.0, start, k_test_train=k_td),
    )
    for field in ("fx_train", "fx_test", "qx_train", "qx_test"):
        # Two adaptive solves against one: agreement to the solver's tolerance.
        assert jnp.allclose(getattr(later, field), getattr(whole, field), rtol=1e-5, atol=1e-6)


@pytest.mark.slow  # two compilations (~3 s unloaded)
def test_batch_slices_patterns_with_their_examples():
    _, _, kernel_fn = stax.serial(
        stax.Dense(4), stax.Relu(), stax.Aggregate(), stax.GlobalSumPool(), stax.Dense(1)
    )
    x1, x2 = jr.normal(jr.key(0), (4, 3, 2)), jr.normal(jr.key(1), (2, 3, 2))
    p1 = (jr.uniform(jr.key(2), (4, 3, 3)) > 0.5).astype(float)
    p2 = (jr.uniform(jr.key(3), (2, 3, 3)) > 0.5).astype(float)
    whole = kernel_fn(x1, x2, pattern=(p1, p2))
    tiled = nt.batch(kernel_fn, batch_size=2)(x1, x2, pattern=(p1, p2))
    # Each entry depends on one example of each batch only: the tiles are exact.
    assert jnp.allclose(tiled.ntk, whole.ntk, rtol=1e-12)
    assert jnp.allclose(tiled.cov2, whole.cov2, rtol=1e-12) and tiled.shape1 == whole.shape1


def test_dot_general_kernel_is_the_map_on_both_sides():
    _, _, base_kernel = base = stax.serial(stax.Dense(2, 1.3, 0.2), stax.Relu())
    v = jnp.array([1.0, -2.0, 0.5])
    rows = ((1,), (0,)), ((), ())
    _, _, kernel_fn = stax.serial(base, stax.DotGeneral(rhs=v, dimension_numbers=rows))
    x = jr.normal(jr.key(0), (2, 3, 1, 2))  # NHWC
    k = base_kernel(x, get="nngp")  # (N, N, H, H, W, W)
    want = jnp.einsum("abhiwv,h,i->abwv", k, v, v)
    # The same sums in another order: agreement to rounding.
    assert jnp.allclose(kernel_fn(x, get="nngp"), want, rtol=1e-12)
    # Finite outputs: `stax_dot_general` (tests/compat/test_api.py) compares them with
    # neural-tangents'.


def test_dot_general_rejects_what_it_cannot_map():
    x = jnp.ones((2, 3, 4, 2))
    channels = stax.DotGeneral(rhs=jnp.ones(2), dimension_numbers=(((3,), (0,)), ((), ())))
    with pytest.raises(ValueError, match="channel axis"):
        channels[2](x)
    moved = stax.DotGeneral(lhs=jnp.ones((5, 3)), dimension_numbers=(((1,), (1,)), ((), ())))
    with pytest.raises(NotImplementedError, match="batch_axis"):
        moved[2](x)
    with pytest.raises(ValueError, match="At most one"):
        stax.DotGeneral(lhs=1.0, rhs=2.0)


def _probe(seen, **reqs):
    """A user layer that records the kernels its `kernel_fn` receives."""

    @stax.layer
    def Probe():
        def kernel_fn(k, **kwargs):
            seen.append((k.diagonal_spatial, k.batch_axis, k.channel_axis, k.shape1))
            return k

        kernel_fn = stax.requires(**reqs)(kernel_fn) if reqs else kernel_fn
        return (lambda rng, shape: (shape, ())), (lambda params, x, **kw: x), kernel_fn

    return Probe()


def test_requires_diagonal_spatial_is_honoured():
    x = jr.normal(jr.key(0), (2, 4, 1))  # NWC
    kernels = {}
    # Declared: the spatial diagonal suffices. `Bool.NO`, like no declaration: full covariance.
    cases = {"declared": stax.Diagonal(), "full": stax.Diagonal(stax.Bool.NO)}
    for name, diagonal in cases.items():
        seen = []
        _, _, kernel_fn = stax.serial(
            stax.Conv(2, (2,)), _probe(seen, diagonal_spatial=diagonal), stax.Flatten()
        )
        kernels[name] = kernel_fn(x, get="nngp")
        assert seen[0][0] == (name == "declared")  # the spatial diagonal only when declared
    # The same kernel either way (the diagonal layout skips the off-diagonal entries only).
    assert jnp.allclose(kernels["declared"], kernels["full"], rtol=1e-12)


def test_requires_layout_and_unavailable_batch_covariance():
    seen = []
    probe = _probe(seen, batch_axis=1, channel_axis=0)
    _, _, kernel_fn = stax.serial(stax.Dense(3, batch_axis=1, channel_axis=0), probe)
    assert kernel_fn(jnp.ones((2, 5)), get="nngp").shape == (5, 5)  # (C, N) inputs
    assert seen[0][1:] == (1, 0, (3, 5))
    with pytest.raises(NotImplementedError, match="diagonal_batch"):
        _probe([], diagonal_batch=False)
