"""The `limit` transform: API, composition, traceability, hyperparameters and edge cases."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
import pytest

import eqntk
from eqntk import nn
from eqntk.limits import AbstractRule, Requirements, register


def _mlp(key, d_in=4, width=16, depth=2, W_std=1.5, b_std=0.1, activation=nn.Relu):
    keys = jr.split(key, depth + 1)
    layers = [nn.Dense(d_in, width, W_std, b_std, key=keys[0])]
    for i in range(1, depth):
        layers += [activation(), nn.Dense(width, width, W_std, b_std, key=keys[i])]
    layers += [activation(), nn.Dense(width, 1, W_std, b_std, key=keys[-1])]
    return nn.Sequential(layers)


def test_get_selects_fields(getkey):
    kernel_fn = eqntk.limit(_mlp(getkey()))
    x1, x2 = jr.normal(getkey(), (3, 4)), jr.normal(getkey(), (5, 4))
    k = kernel_fn(x1, x2)
    assert isinstance(k, eqntk.Kernel)
    # Each `get` compiles its own program, which XLA may fuse (and so round) differently: the
    # same values to a few ulps (bit for bit with XLA's default code emitters).
    np.testing.assert_allclose(kernel_fn(x1, x2, "nngp"), k.nngp, rtol=1e-15)
    both = kernel_fn(x1, x2, get=("ntk", "nngp"))
    assert both._fields == ("ntk", "nngp")
    np.testing.assert_allclose(both.ntk, k.ntk, rtol=1e-15)
    np.testing.assert_allclose(both.nngp, k.nngp, rtol=1e-15)
    np.testing.assert_allclose(kernel_fn(x1, x2, "cov2"), k.cov2, rtol=1e-15)
    # With x2 = None, cov2 is cov1.
    assert jnp.array_equal(kernel_fn(x1, None, "cov2"), kernel_fn(x1, None, "cov1"))


def test_ntk_is_only_computed_when_asked(getkey):
    kernel_fn = eqntk.limit(_mlp(getkey()))
    x = jr.normal(getkey(), (3, 4))
    # Without jit the kernel function's operations appear one by one (not as one compiled call).
    with jax.disable_jit():
        jaxpr_nngp = jax.make_jaxpr(lambda x: kernel_fn(x, get="nngp"))(x)
        jaxpr_both = jax.make_jaxpr(lambda x: kernel_fn(x, get=("nngp", "ntk")))(x)
    assert 10 < len(jaxpr_nngp.eqns) < len(jaxpr_both.eqns)


def test_x2_none_is_exactly_symmetric_and_equals_x2_given(getkey):
    kernel_fn = eqntk.limit(_mlp(getkey(), depth=4))
    x = jr.normal(getkey(), (7, 4))
    k = kernel_fn(x)
    assert jnp.array_equal(k.nngp, k.nngp.T) and jnp.array_equal(k.ntk, k.ntk.T)
    assert k.cov2 is None and k.x1_is_x2
    k2 = kernel_fn(x, x)
    # With x2 given, the correlation of a row with itself is 1 only up to rounding (1e-16), and
    # the arc-cosine turns that into ~1e-8 (arccos(1 - d) ~ sqrt(2 d)); with x2 = None it is
    # exactly 1.
    assert jnp.allclose(k.nngp, k2.nngp, rtol=1e-7) and jnp.allclose(k.ntk, k2.ntk, rtol=1e-7)


def test_continuing_from_a_kernel_equals_the_whole_network(getkey):
    model = _mlp(getkey(), depth=3)
    x1, x2 = jr.normal(getkey(), (3, 4)), jr.normal(getkey(), (2, 4))
    whole = eqntk.limit(model)(x1, x2)
    k = eqntk.limit(model[:3])(x1, x2)
    rest = eqntk.limit(model[3:])(k)
    for name in ("nngp", "ntk", "cov1", "cov2"):
        assert jnp.allclose(getattr(rest, name), getattr(whole, name), rtol=1e-12)


def test_kernel_fn_is_a_module_and_jits(getkey):
    kernel_fn = eqntk.limit(_mlp(getkey()))
    assert isinstance(kernel_fn, eqx.Module)
    x1, x2 = jr.normal(getkey(), (3, 4)), jr.normal(getkey(), (2, 4))
    jitted = eqx.filter_jit(lambda f, a, b: f(a, b, get=("nngp", "ntk")))(kernel_fn, x1, x2)
    eager = kernel_fn(x1, x2, get=("nngp", "ntk"))
    assert jnp.allclose(jitted.nngp, eager.nngp, rtol=1e-12)
    assert jnp.allclose(jitted.ntk, eager.ntk, rtol=1e-12)


def test_vmap_over_inputs(getkey):
    kernel_fn = eqntk.limit(_mlp(getkey()))
    xs = jr.normal(getkey(), (5, 3, 4))
    batched = jax.vmap(lambda x: kernel_fn(x, get="ntk"))(xs)
    looped = jnp.stack([kernel_fn(x, get="ntk") for x in xs])
    assert jnp.allclose(batched, looped, rtol=1e-12)


def _with_w_std(model, w):
    layers = [i for i, layer in enumerate(model.layers) if isinstance(layer, nn.Dense)]
    return eqx.tree_at(lambda m: [m.layers[i].W_std for i in layers], model, [w] * len(layers))


def _with_b_std(model, b):
    layers = [i for i, layer in enumerate(model.layers) if isinstance(layer, nn.Dense)]
    return eqx.tree_at(lambda m: [m.layers[i].b_std for i in layers], model, [b] * len(layers))


@pytest.mark.parametrize("activation", [nn.Relu, nn.Erf, nn.Abs])
def test_grad_wrt_hyperparameters_matches_finite_differences(getkey, activation):
    model = _mlp(getkey(), depth=3, activation=activation)
    x = jr.normal(getkey(), (4, 4))

    def loss(w, b):
        k = eqntk.limit(_with_b_std(_with_w_std(model, w), b))(x)
        return jnp.sum(k.nngp**2) + jnp.sum(jnp.tanh(k.ntk / 10))

    w0, b0 = jnp.asarray(1.3), jnp.asarray(0.2)
    gw, gb = jax.grad(loss, argnums=(0, 1))(w0, b0)

    # Fourth-order central differences (Richardson): truncation error ~ h^4 |f^(5)| / 30.
    def derivative(f, x, h=1e-3):
        return (8 * (f(x + h) - f(x - h)) - (f(x + 2 * h) - f(x - 2 * h))) / (12 * h)

    fd_w = derivative(lambda w: loss(w, b0), w0)
    fd_b = derivative(lambda b: loss(w0, b), b0)
    assert np.isclose(gw, fd_w, rtol=1e-6)
    assert np.isclose(gb, fd_b, rtol=1e-6)


def test_vmap_over_a_grid_of_w_std_equals_the_loop(getkey):
    model = _mlp(getkey(), depth=3)
    x = jr.normal(getkey(), (4, 4))
    grid = jnp.linspace(0.5, 2.5, 5)

    def ntk(w):
        return eqntk.limit(_with_w_std(model, w))(x, get="ntk")

    batched = jax.vmap(ntk)(grid)
    looped = jnp.stack([ntk(w) for w in grid])
    assert jnp.allclose(batched, looped, rtol=1e-12)


def test_training_the_finite_network_leaves_hyperparameters_unchanged(getkey):
    model = _mlp(getkey(), depth=2, activation=lambda: nn.Erf(1.2, 0.8, 0.1))
    x = jr.normal(getkey(), (8, 4))
    y = jr.normal(getkey(), (8, 1))
    params, static = eqx.partition(model, eqx.is_inexact_array)
    optimiser = optax.adam(1e-2)
    state = optimiser.init(params)

    @jax.jit
    def step(params, state):
        def loss(p):
            return jnp.mean((jax.vmap(eqx.combine(p, static))(x) - y) ** 2)

        value, grads = jax.value_and_grad(loss)(params)
        updates, state = optimiser.update(grads, state, params)
        return optax.apply_updates(params, updates), state, value

    losses = []
    # optax mixes int32 step counts with floats, which strict promotion (on in tests) forbids.
    with jax.numpy_dtype_promotion("standard"):
        for _ in range(20):
            params, state, value = step(params, state)
            losses.append(value)
    trained = eqx.combine(params, static)
    assert losses[-1] < losses[0]  # the weights did train
    for before, after in zip(model.layers, trained.layers):
        if isinstance(before, nn.Dense):
            assert not jnp.array_equal(before.weight, after.weight)
            assert jnp.array_equal(before.W_std, after.W_std)
            assert jnp.array_equal(before.b_std, after.b_std)
        if isinstance(before, nn.Erf):
            assert jnp.array_equal(before.a, after.a) and jnp.array_equal(before.b, after.b)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("activation", [nn.Relu, nn.Abs, nn.Erf, lambda: nn.LeakyRelu(0.1)])
def test_edges_give_finite_values_and_gradients(getkey, dtype, activation):
    # Identical rows (correlation exactly 1), a zero row, colinear rows (correlation +-1).
    base = jr.normal(getkey(), (4,), dtype)
    x = jnp.stack([base, base, jnp.zeros(4, dtype), 3 * base, -2 * base])
    for b_std in (0.1, None):
        model = _mlp(getkey(), depth=3, b_std=b_std, activation=activation)
        model = jax.tree_util.tree_map(
            lambda a: a.astype(dtype) if eqx.is_inexact_array(a) else a, model
        )

        def loss(w, x):
            k = eqntk.limit(_with_w_std(model, w))(x)
            return jnp.sum(k.nngp) + jnp.sum(k.ntk)

        value, grads = jax.value_and_grad(loss, argnums=(0, 1))(jnp.asarray(1.4, dtype), x)
        assert value.dtype == dtype
        assert jnp.isfinite(value)
        assert all(jnp.all(jnp.isfinite(g)) for g in grads)


# float32 depth is also covered by test_activations' 30-layer float32 vs float64 comparison.
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("depth, gradient", [(50, False), (50, True)])
def test_deep_networks_stay_finite(getkey, dtype, depth, gradient):
    model = _mlp(getkey(), depth=depth, W_std=2**0.5, b_std=0.05)
    model = jax.tree_util.tree_map(
        lambda a: a.astype(dtype) if eqx.is_inexact_array(a) else a, model
    )
    x = jr.normal(getkey(), (4, 4), dtype)
    x = x.at[1].set(x[0])

    def loss(x):
        k = eqntk.limit(model)(x)
        return jnp.sum(k.nngp) + jnp.sum(k.ntk)

    if gradient:
        value, grad = jax.value_and_grad(loss)(x)
        assert jnp.isfinite(value) and jnp.all(jnp.isfinite(grad))
    else:
        assert jnp.isfinite(loss(x))


def test_float32_inputs_give_float32_kernels(getkey):
    kernel_fn = eqntk.limit(_mlp(getkey()))  # float64 hyperparameters (x64 is on in tests)
    x = jr.normal(getkey(), (3, 4), jnp.float32)
    k = kernel_fn(x)
    assert k.nngp.dtype == jnp.float32 and k.ntk.dtype == jnp.float32
    k64 = kernel_fn(x.astype(jnp.float64))
    assert jnp.allclose(k.ntk.astype(jnp.float64), k64.ntk, rtol=1e-5)


# Bad input.


def test_wrong_rank_is_an_error(getkey):
    kernel_fn = eqntk.limit(_mlp(getkey()))
    with pytest.raises(ValueError, match=r"`x1` must be a batch of channel-first examples.*\(4,\)"):
        kernel_fn(jnp.ones(4))


def test_feature_sizes_that_differ_are_an_error(getkey):
    kernel_fn = eqntk.limit(_mlp(getkey()))
    with pytest.raises(
        ValueError, match=r"`x2` must have the same channel size as `x1` \(4\), got 5"
    ):
        kernel_fn(jnp.ones((2, 4)), jnp.ones((3, 5)))


def test_input_channels_must_match_the_first_layer(getkey):
    kernel_fn = eqntk.limit(_mlp(getkey(), d_in=4))
    with pytest.raises(ValueError, match=r"`Dense` was built for 4 input channels.*`x1` has 3"):
        kernel_fn(jnp.ones((2, 3)))


@pytest.mark.parametrize("get", ["ntkk", ("nngp", "foo"), (), ("ntk", "ntk")])
def test_get_must_name_kernels(getkey, get):
    kernel_fn = eqntk.limit(_mlp(getkey()))
    with pytest.raises(ValueError, match="`get` must"):
        kernel_fn(jnp.ones((2, 4)), get=get)


def test_a_layer_without_a_rule_is_interpreted_or_an_error(getkey):
    # A module without a rule is traced and interpreted on kernels (the identity here) ...
    class Plain(eqx.Module):
        def __call__(self, x, *, key=None):
            return x

    dense = nn.Dense(4, 8, key=getkey())
    x = jnp.ones((2, 4))
    k = eqntk.limit(nn.Sequential([dense, Plain()]))(x, get="nngp")
    assert jnp.array_equal(k, eqntk.limit(dense)(x, get="nngp"))

    # ... and code that has no limit is an error naming the module and how to register a rule.
    class Mystery(eqx.Module):
        def __call__(self, x, *, key=None):
            return jnp.sort(x)

    model = nn.Sequential([dense, Mystery()])
    with pytest.raises(NotImplementedError, match=r"(?s)`sort`.*register\(Mystery\)"):
        eqntk.limit(model)(x)


def test_negative_w_std_is_an_error(getkey):
    with pytest.raises(ValueError, match="`W_std` must be non-negative, got -1.0"):
        nn.Dense(4, 8, W_std=-1.0, key=getkey())
    with pytest.raises(ValueError, match="`b_std` must be non-negative"):
        nn.Dense(4, 8, b_std=-0.1, key=getkey())


def test_bad_parameterization_and_sizes_are_errors(getkey):
    with pytest.raises(ValueError, match="`parameterization` must be 'ntk' or 'standard'"):
        nn.Dense(4, 8, parameterization="mup", key=getkey())
    with pytest.raises(ValueError, match="`s` only applies to the standard"):
        nn.Dense(4, 8, s=(1, 2), key=getkey())
    with pytest.raises(ValueError, match="`out_features` must be a positive integer"):
        nn.Dense(4, 0, key=getkey())


def test_nonlinearity_needs_gaussian_input(getkey):
    model = nn.Sequential([nn.Relu(), nn.Dense(4, 1, key=getkey())])
    with pytest.raises(ValueError, match="`Relu` needs Gaussian inputs.*affine layer"):
        eqntk.limit(model)(jnp.ones((2, 4)))


def test_user_rule_registration(getkey):
    class Scale(eqx.Module):
        factor: float = eqx.field(static=True)

        def __call__(self, x, *, key=None):
            return self.factor * x

    @register(Scale)
    class ScaleRule(AbstractRule):
        def requirements(self, layer, wanted):
            return wanted

        def __call__(self, layer, k, wanted):
            return k.map_covariances(lambda a: layer.factor**2 * a)

    model = nn.Sequential([nn.Dense(4, 8, b_std=0.3, key=getkey()), Scale(3.0)])
    x = jr.normal(getkey(), (3, 4))
    scaled = eqntk.limit(model)(x)
    plain = eqntk.limit(model[:1])(x)
    assert jnp.allclose(scaled.nngp, 9 * plain.nngp) and jnp.allclose(scaled.ntk, 9 * plain.ntk)
    assert eqntk.limits.requirements(model, Requirements(True)).diagonal_spatial


def test_equinox_sequential_has_a_rule(getkey):
    k1, k2 = jr.split(getkey())
    layers = [nn.Dense(4, 8, b_std=0.1, key=k1), nn.Relu(), nn.Dense(8, 1, key=k2)]
    x = jr.normal(getkey(), (3, 4))
    ours = eqntk.limit(nn.Sequential(layers))(x)
    theirs = eqntk.limit(eqx.nn.Sequential(layers))(x)
    assert jnp.array_equal(ours.ntk, theirs.ntk)
