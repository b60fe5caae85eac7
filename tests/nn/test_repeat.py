"""`Repeat` and the folding of repeated blocks in `Sequential`: the finite pass splits keys like
the unrolled `Sequential`, the kernels equal the unrolled ones, and the jaxpr does not grow with
depth."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import eqntk
from eqntk import nn
from eqntk.limits import AbstractRule, register


def test_repeat_forward_with_keys(getkey):
    def block(key):
        return nn.Sequential([nn.Dense(4, 4, key=key), nn.Dropout(0.5)])

    model = nn.repeat(block, 3, key=getkey())
    x = jnp.ones(4)
    key = getkey()
    unrolled = nn.Sequential([model.layer(i) for i in range(3)])
    # `Repeat` and `Sequential` split the key the same way.
    np.testing.assert_allclose(model(x, key=key), unrolled(x, key=key), rtol=1e-12)
    with pytest.raises(ValueError, match="`Dropout` needs a `key`"):
        model(x)


def _block(key):
    return nn.Sequential([nn.Dense(6, 6, W_std=1.3, b_std=0.1, key=key), nn.Erf(1.2, 0.8)])


def _residual_block(key):
    return nn.residual(nn.Sequential([nn.Relu(), nn.Dense(6, 6, 1.1, 0.1, key=key)]))


@pytest.mark.parametrize("make", [_block, _residual_block], ids=["dense_erf", "residual"])
def test_repeat_equals_unrolled_sequential(getkey, make):
    n = 5
    stem = nn.Dense(3, 6, b_std=0.1, key=getkey())
    repeated = nn.repeat(make, n, key=jr.key(1))
    unrolled = nn.Sequential([stem] + [repeated.layer(i) for i in range(n)])
    model = nn.Sequential([stem, repeated])
    x1, x2 = jr.normal(getkey(), (4, 3)), jr.normal(getkey(), (2, 3))
    np.testing.assert_allclose(jax.vmap(model)(x1), jax.vmap(unrolled)(x1), rtol=1e-12)
    for args in ((x1, x2), (x1, None)):
        k, k_unrolled = eqntk.limit(model)(*args), eqntk.limit(unrolled)(*args)
        for name in ("nngp", "ntk", "cov1"):
            np.testing.assert_allclose(getattr(k, name), getattr(k_unrolled, name), rtol=1e-12)


def test_repeat_layers_are_independent_and_keyed(getkey):
    repeated = nn.repeat(_block, 3, key=jr.key(0))
    same_key = [_block(k) for k in jr.split(jr.key(0), 3)]
    for i, layer in enumerate(same_key):
        np.testing.assert_array_equal(repeated.layer(i)[0].weight, layer[0].weight)
    assert not np.allclose(repeated.layer(0)[0].weight, repeated.layer(1)[0].weight)


def _jaxpr_size(fn, *args) -> int:
    jaxpr = jax.make_jaxpr(fn)(*args)
    return len(str(jaxpr))


def test_jaxpr_size_is_flat_in_depth(getkey):
    x = jr.normal(getkey(), (3, 6))
    finite, kernel = [], []
    for n in (2, 8, 32):
        model = nn.repeat(_block, n, key=jr.key(0))
        params, static = eqx.partition(model, eqx.is_array)
        finite.append(_jaxpr_size(lambda p, x: eqx.combine(p, static)(x), params, x[0]))
        kernel.append(
            _jaxpr_size(lambda p, x: eqntk.limit(eqx.combine(p, static))(x, get="ntk"), params, x)
        )
    # Only the printed lengths of the stacked axis change (`f64[2,6,6]` vs `f64[32,6,6]`, a few
    # characters each time the stacked parameters are named); unrolled, 32 blocks would be 16
    # times 2 blocks.
    assert max(finite) - min(finite) < 50
    assert max(kernel) - min(kernel) < 0.01 * min(kernel)


class _Toggle(eqx.Module):
    """A test layer whose rule flips the kernel's Gaussianity at every application."""

    def __call__(self, x, *, key=None):
        return x


@register(_Toggle)
class _ToggleRule(AbstractRule):
    def requirements(self, layer, wanted):
        return wanted

    def __call__(self, layer, k, wanted):
        return k.replace(is_gaussian=not k.is_gaussian)


def test_repeat_needs_a_fixed_metadata_body(getkey):
    x = jr.normal(getkey(), (2, 4))
    model = nn.repeat(lambda key: _Toggle(), 5, key=getkey())
    assert model(x[0]).shape == (4,)
    with pytest.raises(
        ValueError,
        match=r"`Repeat` runs its layers in a `jax.lax.scan`.*"
        r"is_gaussian=False.*is_gaussian=True",
    ):
        eqntk.limit(model)(x)
    with pytest.raises(ValueError, match="`Repeat` needs a positive integer `n`"):
        nn.repeat(_block, 0, key=getkey())


def test_repeat_under_grad_with_respect_to_hyperparameters(getkey):
    x = jr.normal(getkey(), (3, 6))
    model = nn.repeat(_block, 4, key=jr.key(0))

    def loss(model):
        return jnp.sum(eqntk.limit(model)(x, get="ntk"))

    grads = eqx.filter_grad(loss)(model)
    w_std_grad = grads.layers[0].W_std
    assert w_std_grad.shape == (4,) and jnp.all(jnp.isfinite(w_std_grad))
    assert jnp.all(w_std_grad != 0)


def _unfoldable(layers):
    """The same layers, each nested in a different number of `Sequential`s: no two blocks are
    built alike, so the rules run unrolled."""
    nested = []
    for i, layer in enumerate(layers):
        for _ in range(i):
            layer = nn.Sequential([layer])
        nested.append(layer)
    return nn.Sequential(nested)


def _deep_mlp(key, depth, activation):
    keys = jr.split(key, depth + 1)
    layers = [nn.Dense(3, 6, W_std=1.3, b_std=0.1, key=keys[0])]
    for k in keys[1:]:
        layers += [activation, nn.Dense(6, 6, W_std=1.4, b_std=0.05, key=k)]
    return layers


@pytest.mark.parametrize("activation", [nn.Relu(), nn.Erf(1.2, 0.8)], ids=["relu", "erf"])
def test_sequential_folds_repeated_blocks_into_the_unrolled_result(getkey, activation):
    layers = _deep_mlp(getkey(), 8, activation)
    folded, unrolled = eqntk.limit(nn.Sequential(layers)), eqntk.limit(_unfoldable(layers))
    x1, x2 = jr.normal(getkey(), (4, 3)), jr.normal(getkey(), (2, 3))
    for args in ((x1, x2), (x1, None)):
        k, k_unrolled = folded(*args), unrolled(*args)
        for name in ("nngp", "ntk", "cov1"):
            # The same operations; XLA may round the loop body's differently (a few ulps).
            np.testing.assert_allclose(getattr(k, name), getattr(k_unrolled, name), rtol=1e-12)
    grads = [jax.grad(lambda x, f=f: jnp.sum(f(x, None, "ntk")))(x1) for f in (folded, unrolled)]
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-10)


def _equations(jaxpr) -> int:
    """The equations of a jaxpr, those of its inner jaxprs (a scan's body) included."""
    count = 0
    for eqn in jaxpr.eqns:
        count += 1
        for param in eqn.params.values():
            inner = getattr(param, "jaxpr", param)
            if isinstance(inner, jax.extend.core.Jaxpr):
                count += _equations(inner)
    return count


def test_sequential_kernel_program_is_flat_in_depth(getkey):
    x = jr.normal(getkey(), (3, 3))

    def size(depth, build):
        params, static = eqx.partition(build(_deep_mlp(jr.key(0), depth, nn.Relu())), eqx.is_array)
        fn = lambda p, x: eqntk.limit(eqx.combine(p, static))(x, get="ntk")  # noqa: E731
        return _equations(jax.make_jaxpr(fn)(params, x).jaxpr)

    folded = (size(64, nn.Sequential) - size(16, nn.Sequential)) / 48
    unrolled = (size(16, _unfoldable) - size(4, _unfoldable)) / 12
    # Per extra block, folded: only stacking its parameters (a few equations per array).
    assert folded < 0.1 * unrolled, (folded, unrolled)


def test_sequential_unrolls_blocks_that_change_the_metadata(getkey):
    # Each `_Toggle` flips the kernel's Gaussianity, so no scan can carry it: the run stays
    # unrolled (a scan would raise), and seven flips end flipped.
    x = jr.normal(getkey(), (2, 4))
    dense = nn.Dense(4, 4, key=getkey())
    k = eqntk.limit(nn.Sequential([dense] + [_Toggle()] * 7))(x, get=None)
    assert k.is_gaussian is not eqntk.limit(dense)(x, get=None).is_gaussian
