"""`eqntk.compat.Kernel`'s methods on hand-made kernels (no network, no compilation);
tests/compat/test_api.py compares them with neural-tangents' on a network's kernel."""

import jax.numpy as jnp
import numpy as np
import pytest

from eqntk.compat import Kernel
from eqntk.compat._kernel import to_eqntk


def _kernel(n1=3, n2=2, h=2, w=3, x1_is_x2=False, diagonal_spatial=False):
    """A random kernel of NHWC activations (its entries need not form a covariance)."""
    rng = np.random.RandomState(0)
    per = (h, w) if diagonal_spatial else (h, h, w, w)
    n2 = n1 if x1_is_x2 else n2
    return Kernel(
        nngp=jnp.asarray(rng.normal(size=(n1, n2) + per)),
        ntk=jnp.asarray(rng.normal(size=(n1, n2) + per)),
        cov1=jnp.asarray(rng.normal(size=(n1,) + per)),
        cov2=None if x1_is_x2 else jnp.asarray(rng.normal(size=(n2,) + per)),
        x1_is_x2=x1_is_x2,
        is_gaussian=True,
        diagonal_spatial=diagonal_spatial,
        shape1=(n1, h, w, 5),
        shape2=(n2, h, w, 5),
        batch_axis=0,
        channel_axis=3,
    )


def test_slice_fills_cov2_when_the_batches_part():
    k = _kernel(x1_is_x2=True)
    part = k.slice(slice(0, 2), slice(1, 3))
    assert not part.x1_is_x2 and part.shape1[0] == 2 and part.shape2[0] == 2
    assert jnp.array_equal(part.nngp, k.nngp[:2, 1:3])
    assert part.cov2 is not None and jnp.array_equal(part.cov2, k.cov1[1:3])
    same = k.slice(slice(1, 3), slice(1, 3))
    assert same.x1_is_x2 and same.cov2 is None


def test_reverse_and_transpose_permute_the_spatial_axes():
    k = _kernel()
    r = k.reverse()
    assert r.is_reversed and r.nngp.shape == (3, 2, 3, 3, 2, 2)
    assert jnp.array_equal(r.nngp, jnp.transpose(k.nngp, (0, 1, 4, 5, 2, 3)))
    assert jnp.array_equal(r.reverse().cov1, k.cov1) and not r.reverse().is_reversed
    t = k.transpose((1, 0))
    assert jnp.array_equal(t.ntk, r.ntk) and t.shape1 == (3, 3, 2, 5) and not t.is_reversed
    # Layers read a reversed kernel in the order of its activations.
    assert jnp.array_equal(to_eqntk(r).nngp, k.nngp)
    with pytest.raises(ValueError, match="permutation"):
        k.transpose((0, 0))


def test_mask_zeroes_the_entries_of_masked_positions():
    k = _kernel()
    m1 = np.zeros((3, 2, 3, 1), bool)
    m1[0, 1, 2] = True
    m2 = np.zeros((2, 1, 3, 1), bool)  # broadcast over the rows
    m2[1, 0, 0] = True
    masked = k.mask(jnp.asarray(m1), jnp.asarray(m2))
    p1, p2 = m1[..., 0], np.broadcast_to(m2[..., 0], (2, 2, 3))
    hit = p1[:, None, :, None, :, None] | p2[None, :, None, :, None, :]  # (n1, n2, h, h', w, w')
    want = np.where(hit, 0.0, k.nngp)
    assert np.array_equal(masked.nngp, want) and masked.mask1 is not None
    cov_hit = p1[:, :, None, :, None] | p1[:, None, :, None, :]
    assert np.array_equal(masked.cov1, np.where(cov_hit, 0.0, k.cov1))
    with pytest.raises(NotImplementedError, match="one channel"):
        k.mask(jnp.zeros((3, 2, 3, 5), bool), None)


def test_dot_general_maps_both_sides():
    k = _kernel()
    rng = np.random.RandomState(1)
    a1, a2 = jnp.asarray(rng.normal(size=(3, 2))), jnp.asarray(rng.normal(size=(2, 2)))
    # Per-example weights over the rows (the batch axis paired): (N, H, W, C) -> (N, W, C).
    d = k.dot_general(a1, a2, False, (((1,), (1,)), ((0,), (0,))))
    want = jnp.einsum("abhiwv,ah,bi->abwv", k.nngp, a1, a2)
    # The same sums in another order: agreement to rounding.
    assert jnp.allclose(d.nngp, want, rtol=1e-12) and d.shape1 == (3, 3, 5)
    assert jnp.allclose(d.cov1, jnp.einsum("ahiwv,ah,ai->awv", k.cov1, a1, a1), rtol=1e-12)
    assert (d.batch_axis, d.channel_axis) == (0, 2)
    with pytest.raises(ValueError, match="channel axis"):
        k.dot_general(jnp.ones(5), jnp.ones(5), False, (((3,), (0,)), ((), ())))
    with pytest.raises(ValueError, match="full spatial covariance"):
        _kernel(diagonal_spatial=True).dot_general(
            jnp.ones(2), jnp.ones(2), False, (((1,), (0,)), ((), ()))
        )


def test_arithmetic_is_neural_tangents():
    k = _kernel()
    assert jnp.allclose((k * 2.0).ntk, 4 * k.ntk) and jnp.allclose((3.0 * k).cov1, 9 * k.cov1)
    assert jnp.allclose((k / 2.0).nngp, k.nngp / 4)
    shifted = k + 0.5
    assert jnp.allclose(shifted.nngp, k.nngp + 0.25) and shifted.ntk is k.ntk
    assert (-k) is k and (k - 0.5).cov2 is not None


def test_getitem_indexes_the_activations():
    k = _kernel()
    part = k[:, 1:, 0]
    assert jnp.array_equal(part.nngp, k.nngp[:, :, 1:, 1:, 0, 0])
    assert part.shape1 == (3, 1, 5) and part.channel_axis == 2
    with pytest.raises(NotImplementedError, match="channel axis"):
        k[..., :2]
    with pytest.raises(NotImplementedError, match="batch axis"):
        k[0]


def test_mask_of_one_batch_only():
    k = _kernel()
    m2 = np.zeros((2, 2, 3, 1), bool)
    m2[0, 0, 1] = True
    masked = k.mask(None, jnp.asarray(m2))
    hit = np.broadcast_to(m2[None, :, None, :, None, :, 0], k.nngp.shape)
    assert np.array_equal(masked.nngp, np.where(hit, 0.0, k.nngp))
    assert np.array_equal(masked.cov1, k.cov1) and masked.cov2 is not None
