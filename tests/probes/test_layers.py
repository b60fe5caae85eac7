"""Probes of bad layers, hyperparameters and rules, batched side inputs, and the edge cases of
the empirical kernels: each gives a clear error or a correct answer."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import eqntk
from eqntk import nn
from eqntk.limits import AbstractRule, register
from eqntk.nn._hyperparameters import hyperparameter


def _dense_kernel_fn(key, *layers, width=4):
    return eqntk.limit(nn.Sequential([nn.Dense(3, width, b_std=0.1, key=key), *layers]))


# Dropout --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "p, match",
    [
        (1.0, r"p=1\.0\)` in training mode drops every unit.*inference=True"),
        (1.5, r"drop probability `p` in \[0, 1\], got 1\.5"),
        (-0.5, r"drop probability `p` in \[0, 1\], got -0\.5"),
    ],
)
def test_equinox_dropout_bad_probability(getkey, p, match):
    kernel_fn = _dense_kernel_fn(getkey(), eqx.nn.Dropout(p=p))
    with pytest.raises(ValueError, match=match):
        kernel_fn(jnp.ones((2, 3)), get="nngp")


def test_equinox_dropout_good_probabilities(getkey):
    x = jr.normal(getkey(), (3, 3))
    key = getkey()
    # p=1 in inference mode is the identity: nothing is dropped.
    identity = _dense_kernel_fn(key)(x, get="nngp")
    off = _dense_kernel_fn(key, eqx.nn.Dropout(p=1.0, inference=True))(x, get="nngp")
    np.testing.assert_array_equal(off, identity)
    # p is the drop probability: the rule is eqntk's with keep_rate = 1 - p.
    eqx_k = _dense_kernel_fn(key, eqx.nn.Dropout(p=0.25))(x, get="nngp")
    own_k = _dense_kernel_fn(key, nn.Dropout(keep_rate=0.75))(x, get="nngp")
    np.testing.assert_allclose(eqx_k, own_k, rtol=1e-14)
    assert np.all(np.isfinite(eqx_k)) and np.all(np.diag(eqx_k) > np.diag(identity))


@pytest.mark.parametrize("keep_rate", [0.0, -0.5, 1.5])
def test_dropout_keep_rate_outside_unit_interval(keep_rate):
    with pytest.raises(ValueError, match=r"`keep_rate` must be in \(0, 1\]"):
        nn.Dropout(keep_rate=keep_rate)


def test_dropout_traced_keep_rate_checked_by_the_rule(getkey):
    key, x = getkey(), jr.normal(getkey(), (2, 3))

    def nngp(keep_rate):
        return _dense_kernel_fn(key, nn.Dropout(keep_rate))(x, get="nngp")

    good = jax.vmap(nngp)(jnp.array([0.5, 1.0]))
    assert np.all(np.isfinite(good))
    # Under `vmap` the layer holds a tracer: the rule checks it with `eqx.error_if`.
    with pytest.raises(Exception, match=r"`keep_rate` \(the probability of keeping a unit\)"):
        jax.block_until_ready(jax.vmap(nngp)(jnp.array([0.5, 0.0])))


# Hyperparameters ------------------------------------------------------------------------------


def _layers_with(value):
    """One constructor per hyperparameter of every layer that takes one."""
    key = jr.key(0)
    return {
        "Dense.W_std": lambda: nn.Dense(2, 3, W_std=value, key=key),
        "Dense.b_std": lambda: nn.Dense(2, 3, b_std=value, key=key),
        "Conv.W_std": lambda: nn.Conv(2, 3, (3,), W_std=value, key=key),
        "Conv.b_std": lambda: nn.Conv(2, 3, (3,), b_std=value, key=key),
        "GlobalSelfAttention.W_key_std": lambda: nn.GlobalSelfAttention(
            2, 3, 2, 2, 1, W_key_std=value, key=key
        ),
        "ABRelu.a": lambda: nn.ABRelu(a=value, b=1.0),
        "LeakyRelu.alpha": lambda: nn.LeakyRelu(alpha=value),
        "Erf.b": lambda: nn.Erf(b=value),
        "Sin.c": lambda: nn.Sin(c=value),
        "Rbf.gamma": lambda: nn.Rbf(gamma=value),
        "Exp.a": lambda: nn.Exp(a=value),
        "ExpNormalized.gamma": lambda: nn.ExpNormalized(gamma=value),
        "Polynomial.coef": lambda: nn.Polynomial(np.asarray([value])),
        "DotGeneral.scale": lambda: nn.DotGeneral(scale=value),
        "DotGeneral.matrix": lambda: nn.DotGeneral(np.asarray([[value]]), axes=0),
        "Dropout.keep_rate": lambda: nn.Dropout(keep_rate=value),
    }


_NAMES = list(_layers_with(1.0))


@pytest.mark.parametrize("name", _NAMES)
@pytest.mark.parametrize(
    "value, error, match",
    [
        (1 + 1j, TypeError, r"must be .*real.*complex value .*imaginary part would be lost"),
        ("a", TypeError, r"must be .*real.*got .*'a'"),
        (True, TypeError, r"must be .*real.*dtype bool"),
        (float("nan"), ValueError, r"must be finite"),
    ],
)
def test_hyperparameters_must_be_real(name, value, error, match):
    argument = name.split(".")[1]
    # The test suite also checks annotations (jaxtyping + beartype): where an annotation
    # already excludes the value, that check names the argument first.
    annotation = rf"typechecking parameter '{argument}'"
    if error is TypeError:
        match = rf"`{argument}` {match}|{annotation}"
    with pytest.raises(error, match=match):
        _layers_with(value)[name]()


@pytest.mark.parametrize(
    "value, error, match",
    [
        (1 + 1j, TypeError, r"complex value \(1\+1j\) \(its imaginary part would be lost\)"),
        (np.array(2j), TypeError, r"complex value"),
        ("a", TypeError, r"got 'a' \(dtype <U1\)"),
        (None, TypeError, r"got None \(dtype object\)"),
        (np.array(True), TypeError, r"dtype bool"),
        (float("inf"), ValueError, r"must be finite"),
        (np.ones(2), ValueError, r"must be a scalar, got shape \(2,\)"),
        (-1.0, ValueError, r"must be non-negative, got -1.0"),
    ],
)
def test_hyperparameter_checks(value, error, match):
    with pytest.raises(error, match=rf"`W_std` .*{match}"):
        hyperparameter("W_std", value, nonnegative=True)
    assert hyperparameter("W_std", np.int32(2)).dtype == jnp.result_type(float)


@pytest.mark.parametrize("name", _NAMES)
def test_real_hyperparameters_are_floating_arrays(name):
    layer = _layers_with(1)[name]()  # an integer is a real number: stored as a float
    field = getattr(layer, name.split(".")[1])
    assert jnp.issubdtype(field.dtype, jnp.floating)


@pytest.mark.parametrize("eps", [0.0, -1e-3, float("nan")])
def test_layernorm_eps_must_be_positive(eps):
    with pytest.raises(ValueError, match=r"`eps` must be a positive real number"):
        nn.LayerNorm(eps=eps)


def test_layernorm_of_all_zero_input_is_zero_not_nan(getkey):
    # With eps > 0 an input whose entries are all equal normalises to 0, in the finite layer
    # and in its kernel (0 / sqrt(eps)).
    assert np.array_equal(nn.LayerNorm()(jnp.zeros(4)), np.zeros(4))
    x = jnp.zeros((2, 3))
    k = eqntk.limit(nn.Sequential([nn.Dense(3, 4, key=getkey()), nn.LayerNorm()]))(x)
    for a in (k.nngp, k.ntk, k.cov1):
        np.testing.assert_array_equal(a, np.zeros_like(a))


# Rules ----------------------------------------------------------------------------------------


class _Layer(eqx.Module):
    def __call__(self, x, *, key=None):
        return x


class _ShortRowsLayer(_Layer):
    pass


class _UnmaskingLayer(_Layer):
    pass


class _NoNtkLayer(_Layer):
    pass


class _AddsNtkLayer(_Layer):
    pass


class _ArrayLayer(_Layer):
    pass


@register(_ShortRowsLayer)
class ShortRowsRule(AbstractRule):
    def requirements(self, layer, wanted):
        return wanted

    def __call__(self, layer, k, wanted):
        ntk = None if k.ntk is None else k.ntk[:1]
        return k.replace(nngp=k.nngp[:1], ntk=ntk, cov1=k.cov1[:1], mask1=None, mask2=None)


@register(_UnmaskingLayer)
class UnmaskingRule(AbstractRule):
    def requirements(self, layer, wanted):
        return wanted

    def __call__(self, layer, k, wanted):
        return k.replace(mask1=None, mask2=None)


@register(_NoNtkLayer)
class NoNtkRule(AbstractRule):
    def requirements(self, layer, wanted):
        return wanted

    def __call__(self, layer, k, wanted):
        return k.replace(ntk=None)


@register(_AddsNtkLayer)
class AddsNtkRule(AbstractRule):
    def requirements(self, layer, wanted):
        return wanted

    def __call__(self, layer, k, wanted):
        return k.replace(ntk=jnp.zeros_like(k.nngp))


@register(_ArrayLayer)
class ArrayRule(AbstractRule):
    def requirements(self, layer, wanted):
        return wanted

    def __call__(self, layer, k, wanted):
        return k.nngp


def test_rule_output_batch_shape_checked(getkey):
    kernel_fn = _dense_kernel_fn(getkey(), _ShortRowsLayer())
    with pytest.raises(ValueError, match=r"`ShortRowsRule` .*\(N1, N2\) = \(3, 3\).*\(1, 3\)"):
        kernel_fn(jnp.ones((3, 3)))


def test_rule_output_masks_checked(getkey):
    conv = nn.Conv(2, 3, (3,), padding="SAME", key=getkey())
    kernel_fn = eqntk.limit(nn.Sequential([conv, _UnmaskingLayer()]))
    x, mask = jr.normal(getkey(), (2, 2, 5)), jnp.zeros((2, 5), bool).at[:, -1].set(True)
    with pytest.raises(ValueError, match=r"`UnmaskingRule` .*`mask1` must be kept"):
        kernel_fn(x, mask1=mask)
    # The same rule is fine on an unmasked input.
    assert kernel_fn(x).nngp.shape == (2, 2, 5, 5)


def test_rule_output_ntk_checked(getkey):
    x = jnp.ones((2, 3))
    with pytest.raises(ValueError, match=r"`NoNtkRule` .*`ntk` must be computed exactly when"):
        _dense_kernel_fn(getkey(), _NoNtkLayer())(x, get="ntk")
    with pytest.raises(ValueError, match=r"`AddsNtkRule` .*input: no NTK; output: an NTK"):
        _dense_kernel_fn(getkey(), _AddsNtkLayer())(x, get="nngp")


def test_rule_output_type_checked(getkey):
    with pytest.raises(TypeError, match=r"`ArrayRule` .*must return a `Kernel`.*got an array"):
        _dense_kernel_fn(getkey(), _ArrayLayer())(jnp.ones((2, 3)))


def test_layer_after_fan_out_without_fan_in(getkey):
    first, last = nn.Dense(3, 3, key=getkey()), nn.Dense(3, 1, key=getkey())
    model = nn.Sequential([first, nn.FanOut(2), last])
    match = r"`Dense` received 2 streams .*`nn.FanInSum`.*`nn.Parallel`"
    with pytest.raises(ValueError, match=match):
        eqntk.limit(model)(jnp.ones((2, 3)))
    # Joined first, the same layers work.
    joined = nn.Sequential([first, nn.FanOut(2), nn.FanInSum(), last])
    assert eqntk.limit(joined)(jnp.ones((2, 3)), get="nngp").shape == (2, 2)


@pytest.mark.parametrize("fn", [jnp.tanh, lambda z: jnp.sin(z), jax.nn.softplus])
def test_plain_function_as_layer_points_to_elementwise(getkey, fn):
    kernel_fn = _dense_kernel_fn(getkey(), fn)
    with pytest.raises(TypeError, match=r"plain function .*`eqntk.nn.Elementwise\(fn\)`"):
        kernel_fn(jnp.ones((2, 3)))
    # `equinox.nn.Lambda` of an elementwise function has the kernel of `nn.Elementwise(fn)`.
    via_lambda = _dense_kernel_fn(getkey(), eqx.nn.Lambda(fn))(jnp.ones((2, 3)), get="nngp")
    via_elementwise = _dense_kernel_fn(getkey(), nn.Elementwise(fn))(jnp.ones((2, 3)), get="nngp")
    assert jnp.allclose(via_lambda, via_elementwise, rtol=1e-12)
    assert _dense_kernel_fn(getkey(), nn.Elementwise(fn))(jnp.ones((2, 3)), get="nngp").shape


# Batched side inputs --------------------------------------------------------------------------


def _masked_cnn(key, pool):
    k1, k2 = jr.split(key)
    layers = [nn.Conv(2, 4, (3,), padding="SAME", b_std=0.1, key=k1), nn.Relu()]
    if pool:
        layers += [nn.GlobalAvgPool(), nn.Dense(4, 1, key=k2)]
    return eqntk.limit(nn.Sequential(layers))


def _assert_same(batched, exact):
    # Tiles compute the same entries as the whole; in float64 they differ by rounding only.
    assert jax.tree.structure(batched) == jax.tree.structure(exact)
    for a, b in zip(jax.tree.leaves(batched), jax.tree.leaves(exact)):
        np.testing.assert_allclose(np.asarray(a, float), np.asarray(b, float), atol=1e-13)


@pytest.mark.parametrize("store_on_host", [False, True])
@pytest.mark.parametrize("with_x2", [False, True])
@pytest.mark.parametrize("pool", [False, True])
def test_batch_tiles_masks_with_the_examples(getkey, store_on_host, with_x2, pool):
    kernel_fn = _masked_cnn(getkey(), pool)
    x1, x2 = jr.normal(getkey(), (5, 2, 6)), jr.normal(getkey(), (3, 2, 6))
    mask1 = jr.bernoulli(getkey(), 0.3, (5, 6))
    mask2 = jr.bernoulli(getkey(), 0.3, (3, 6))
    batched = eqntk.batch(kernel_fn, 2, store_on_host=store_on_host)
    if with_x2:
        kwargs = dict(mask1=mask1, mask2=mask2)
        _assert_same(batched(x1, x2, **kwargs), kernel_fn(x1, x2, **kwargs))
        _assert_same(batched(x1, x2, "ntk", mask2=mask2), kernel_fn(x1, x2, "ntk", mask2=mask2))
    else:
        _assert_same(batched(x1, mask1=mask1), kernel_fn(x1, mask1=mask1))
        got = batched(x1, None, ("nngp", "ntk"), mask1=mask1)
        _assert_same(tuple(got), tuple(kernel_fn(x1, None, ("nngp", "ntk"), mask1=mask1)))


def test_batch_tiles_graph_patterns(getkey):
    k1, k2 = jr.split(getkey())
    model = nn.Sequential(
        [nn.Dense(3, 4, key=k1), nn.Relu(), nn.Aggregate(), nn.Flatten(), nn.Dense(20, 1, key=k2)]
    )
    kernel_fn = eqntk.limit(model)
    x1, x2 = jr.normal(getkey(), (5, 3, 5)), jr.normal(getkey(), (3, 3, 5))
    a1 = jr.bernoulli(getkey(), 0.4, (5, 5, 5)).astype(jnp.float64)
    a2 = jr.bernoulli(getkey(), 0.4, (3, 5, 5)).astype(jnp.float64)
    batched = eqntk.batch(kernel_fn, 2)
    _assert_same(batched(x1, get="ntk", pattern1=a1), kernel_fn(x1, get="ntk", pattern1=a1))
    _assert_same(
        batched(x1, x2, "ntk", pattern1=a1, pattern2=a2),
        kernel_fn(x1, x2, "ntk", pattern1=a1, pattern2=a2),
    )


def test_batch_bad_side_inputs(getkey):
    kernel_fn = _masked_cnn(getkey(), pool=True)
    x1, x2 = jnp.ones((4, 2, 6)), jnp.ones((3, 2, 6))
    batched = eqntk.batch(kernel_fn, 2)
    with pytest.raises(ValueError, match=r"`mask1` .*leading axis must be 4, got shape \(3, 6\)"):
        batched(x1, x2, mask1=jnp.zeros((3, 6), bool))
    with pytest.raises(ValueError, match=r"`mask2` .*leading axis must be 3, got shape \(4, 6\)"):
        batched(x1, x2, mask2=jnp.zeros((4, 6), bool))
    with pytest.raises(ValueError, match=r"`mask2` must be None when `x2` is None"):
        batched(x1, mask2=jnp.zeros((4, 6), bool))


# Empirical kernels ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "implementation", ["jacobian_contraction", "ntk_vector_products", "structured_derivatives"]
)
def test_empirical_kernel_of_empty_batch_is_empty(getkey, implementation):
    model = nn.Dense(3, 2, key=getkey())
    empty, x = jnp.zeros((0, 3)), jnp.ones((4, 3))
    got = eqntk.empirical_kernel(model, empty, None, ("nngp", "ntk"), implementation=implementation)
    assert got.nngp.shape == got.ntk.shape == (0, 0)
    got = eqntk.empirical_kernel(model, empty, x, implementation=implementation, trace_axes=())
    assert got.shape == (0, 4, 2, 2)
    got = eqntk.empirical_kernel(model, x, empty, "nngp", implementation=implementation)
    assert got.shape == (4, 0)


def test_empirical_kernel_of_one_dimensional_input(getkey):
    # A 1-D batch is a batch of scalar examples: the model's own error, with a note saying so.
    # (Under the test suite's annotation checks, `Dense`'s annotation of `x` fires first.)
    match = r"`Dense` expects inputs with 3 channels.*shape \(\)|typechecking parameter 'x'"
    with pytest.raises(Exception, match=match):
        eqntk.empirical_kernel(nn.Dense(3, 2, key=getkey()), jnp.ones(3))
    linear = eqx.nn.Linear(3, 2, key=getkey())
    with pytest.raises(Exception, match=r"called on ONE example: here of shape \(\).*x1\[None\]"):
        eqntk.empirical_kernel(linear, jnp.ones(3))
    # A model of scalars takes it.
    scalar = eqx.nn.Linear("scalar", 2, key=getkey())
    assert eqntk.empirical_kernel(scalar, jnp.ones(3)).shape == (3, 3)


@pytest.mark.parametrize(
    "implementation", ["jacobian_contraction", "ntk_vector_products", "structured_derivatives"]
)
def test_empirical_kernel_of_scalar_output_model(getkey, implementation):
    key = getkey()
    scalar = eqx.nn.MLP(3, "scalar", 16, 2, key=key)
    one = eqx.nn.MLP(3, 1, 16, 2, key=key)  # the same parameters, one output channel
    x1, x2 = jr.normal(getkey(), (4, 3)), jr.normal(getkey(), (5, 3))
    got = eqntk.empirical_kernel(scalar, x1, x2, ("nngp", "ntk"), implementation=implementation)
    # Tracing the size-1 channel axis of `one` is its squeeze: the two must agree to rounding.
    want = eqntk.empirical_kernel(one, x1, x2, ("nngp", "ntk"), implementation=implementation)
    assert got.nngp.shape == got.ntk.shape == (4, 5)
    np.testing.assert_allclose(got.nngp, want.nngp, rtol=1e-12)
    np.testing.assert_allclose(got.ntk, want.ntk, rtol=1e-12)
    # And the explicit definitions: f f^T and J J^T.
    f1, f2 = jax.vmap(scalar)(x1), jax.vmap(scalar)(x2)
    np.testing.assert_allclose(got.nngp, f1[:, None] * f2[None, :], rtol=1e-12)
    params, static = eqx.partition(scalar, eqx.is_inexact_array)
    flat = lambda p, x: eqx.combine(p, static)(x)
    j1, j2 = (jax.vmap(jax.grad(flat), (None, 0))(params, x) for x in (x1, x2))
    ntk = sum(
        jnp.tensordot(a, b, (tuple(range(1, a.ndim)),) * 2)
        for a, b in zip(jax.tree.leaves(j1), jax.tree.leaves(j2))
    )
    np.testing.assert_allclose(got.ntk, ntk, rtol=1e-10)


def test_scalar_output_still_rejects_real_axes(getkey):
    scalar = eqx.nn.MLP(3, "scalar", 4, 1, key=getkey())
    x = jnp.ones((2, 3))
    with pytest.raises(ValueError, match="`trace_axes` must be axes of one example's output"):
        eqntk.empirical_kernel(scalar, x, trace_axes=(1,))
    with pytest.raises(ValueError, match="`diagonal_axes` must be axes of one example's output"):
        eqntk.empirical_kernel(scalar, x, trace_axes=(), diagonal_axes=(0,))


def test_monte_carlo_kernel_of_scalar_output_model(getkey):
    key, x = getkey(), jr.normal(getkey(), (4, 3))
    got = eqntk.monte_carlo_kernel(lambda k: eqx.nn.MLP(3, "scalar", 16, 2, key=k), key, x, None, 2)
    want = eqntk.monte_carlo_kernel(lambda k: eqx.nn.MLP(3, 1, 16, 2, key=k), key, x, None, 2)
    # The same keys build the same networks: the estimates agree to rounding.
    assert got.nngp.shape == got.ntk.shape == (4, 4)
    np.testing.assert_allclose(got.nngp, want.nngp, rtol=1e-12)
    np.testing.assert_allclose(got.ntk, want.ntk, rtol=1e-12)
