"""Variable-length inputs: masked positions never matter, in the finite network and the limit."""

import equinox as eqx
import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import eqntk
from eqntk import nn
from tests.helpers import assert_kernel_ignores_masked_values, mc_kernels, relative_error


LENGTH = 5


def _body(key, width=64):
    k1, k2, k3 = jr.split(key, 3)
    return nn.Sequential(
        [
            nn.Dense(2, width, W_std=1.2, b_std=0.2, key=k1),
            nn.Relu(),
            nn.GlobalSelfAttention(width, width, width, width, heads=4, b_std=0.1, key=k2),
            nn.Relu(),
            nn.Dense(width, width, b_std=0.1, key=k3),
        ]
    )


class Masked(eqx.Module):
    """A network called on `(x, mask)` pairs: padded values zeroed, attention told the mask."""

    body: nn.Sequential

    def __call__(self, inputs, *, key=None):
        x, mask = inputs
        x = jnp.where(mask, 0.0, x)
        return nn.with_inputs(self.body, mask=mask)(x)


def _masks(lengths):
    return jnp.arange(LENGTH)[None, :] >= jnp.asarray(lengths)[:, None]


@hypothesis.settings(max_examples=5, deadline=None)
@hypothesis.given(
    seed=st.integers(0, 2**16), lengths=st.lists(st.integers(1, LENGTH), min_size=3, max_size=3)
)
def test_kernel_ignores_masked_values(seed, lengths):
    key = jr.key(seed)
    x = jr.normal(key, (3, 2, LENGTH))
    mask = _masks(lengths)
    head = nn.Sequential(
        [_body(jr.key(0)), nn.Relu(), nn.Flatten(), nn.Dense(64 * LENGTH, 1, key=jr.key(1))]
    )
    assert_kernel_ignores_masked_values(eqntk.limit(head), x, mask, jr.fold_in(key, 1))


@hypothesis.settings(max_examples=5, deadline=None)
@hypothesis.given(seed=st.integers(0, 2**16), length=st.integers(1, LENGTH))
def test_finite_network_ignores_masked_values(seed, length):
    key = jr.key(seed)
    x = jr.normal(key, (2, LENGTH))
    mask = jnp.arange(LENGTH) >= length
    noise = jnp.where(mask, 100 * jr.normal(jr.fold_in(key, 1), x.shape), 0.0)
    model = nn.with_inputs(_body(jr.key(0)), mask=mask)
    keep = ~mask
    np.testing.assert_allclose(model(x)[:, keep], model(x + noise)[:, keep], rtol=1e-10)


def test_masked_entries_are_zero(getkey):
    x = jr.normal(getkey(), (3, 2, LENGTH))
    mask = _masks([2, 5, 3])
    k = eqntk.limit(_body(getkey()))(x, mask1=mask)
    assert (k.nngp[0, :, 2:, :] == 0).all() and (k.nngp[:, 0, :, 2:] == 0).all()
    assert (k.cov1[2, 3:, :] == 0).all()


@pytest.mark.slow  # masks through attention; tests/limits/test_masking_conv.py has a default one
def test_monte_carlo(getkey):
    x1, x2 = jr.normal(getkey(), (2, 2, LENGTH)), jr.normal(getkey(), (2, 2, LENGTH))
    m1, m2 = _masks([3, 5]), _masks([4, 2])
    exact = eqntk.limit(_body(getkey()))(x1, x2, mask1=m1, mask2=m2)
    nngp, ntk = mc_kernels(lambda k: Masked(_body(k)), getkey(), (x1, m1), (x2, m2), 32)
    # Compare where both positions are real: the finite network's outputs at padded positions
    # are meaningless. 32 networks of width 64: ~4 standard errors at 0.15.
    keep = (~m1)[:, None, :, None] & (~m2)[None, :, None, :]
    assert relative_error(jnp.where(keep, nngp, 0), exact.nngp) < 0.15
    assert relative_error(jnp.where(keep, ntk, 0), exact.ntk) < 0.15


def test_bad_masks(getkey):
    x = jr.normal(getkey(), (3, 2, LENGTH))
    kernel_fn = eqntk.limit(_body(getkey()))
    with pytest.raises(ValueError, match=r"`mask1` must have shape \(N, \*spatial\) = \(3, 5\)"):
        kernel_fn(x, mask1=jnp.zeros((3, 4), bool))
    with pytest.raises(TypeError, match="`mask1` must be a boolean array"):
        kernel_fn(x, mask1=jnp.zeros((3, 5)))
    with pytest.raises(ValueError, match="`mask2` must be None when `x2` is None"):
        kernel_fn(x, mask2=jnp.zeros((3, 5), bool))
    with pytest.raises(ValueError, match="`mask` must have the spatial shape"):
        nn.with_inputs(_body(getkey()), mask=jnp.zeros(4, bool))(x[0])
    jax.block_until_ready(kernel_fn(x, mask1=jnp.zeros((3, 5), bool), get="nngp"))


def test_replace_never_drops_masks_silently():
    # A change that removes every position must say what becomes of the masks.
    n, length = 2, 3
    mask = jnp.arange(length)[None, :] >= jnp.array([[2], [3]])
    k = eqntk.Kernel(
        nngp=jnp.ones((n, n, length)),
        ntk=None,
        cov1=jnp.ones((n, length)),
        cov2=None,
        shape1=(4, length),
        shape2=(4, length),
        x1_is_x2=True,
        diagonal_spatial=True,
        mask1=mask,
    )
    flat = dict(nngp=jnp.ones((n, n)), cov1=jnp.ones(n), shape1=(12,), shape2=(12,))
    with pytest.raises(ValueError, match=r"has no positions left, but kept `mask1`"):
        k.replace(**flat)
    assert k.replace(**flat, mask1=None).mask1 is None
    assert k.replace(is_gaussian=True).mask1 is mask  # other changes keep the masks
