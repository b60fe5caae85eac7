"""`Repeat`: the same kernels as the unrolled `Sequential`, and a jaxpr that does not grow with
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
    model = nn.repeat(lambda key: _Toggle(), 3, key=getkey())
    assert model(x[0]).shape == (4,)
    with pytest.raises(
        ValueError,
        match=r"`Repeat` runs its layers in a `jax.lax.scan`.*"
        r"is_gaussian=True.*is_gaussian=False",
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
