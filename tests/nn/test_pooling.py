"""Pooling (`AvgPool`, `SumPool`, `GlobalAvgPool`, `GlobalSumPool`): finite layers against
`lax.reduce_window` and plain means and sums; kernels against wide finite networks, exact
identities, the layout pooling needs, and errors."""

import math

import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from jax import lax

import eqntk
from eqntk import nn
from eqntk.limits import Requirements, apply, requirements
from tests.nn.test_conv import assert_matches_monte_carlo


@pytest.mark.parametrize("padding", ["SAME", "VALID", "CIRCULAR"])
@pytest.mark.parametrize("normalize_edges", [False, True])
def test_avg_pool_matches_reduce_window(padding, normalize_edges, getkey):
    x = jr.normal(getkey(), (2, 7, 6))
    window, strides = (3, 2), (2, 1)
    pool = nn.AvgPool(window, strides, padding, normalize_edges)
    if padding == "CIRCULAR":
        pads = [(0, 0)] + [
            (t // 2, t - t // 2)
            for t in (
                max((math.ceil(n / s) - 1) * s + w - n, 0)
                for n, w, s in zip(x.shape[1:], window, strides)
            )
        ]
        x_in, lax_padding = jnp.pad(x, pads, mode="wrap"), "VALID"
    else:
        x_in, lax_padding = x, padding
    total = lax.reduce_window(x_in, 0.0, lax.add, (1,) + window, (1,) + strides, lax_padding)
    counts = lax.reduce_window(
        jnp.ones_like(x_in), 0.0, lax.add, (1,) + window, (1,) + strides, lax_padding
    )
    expected = total / (counts if normalize_edges else math.prod(window))
    assert np.allclose(pool(x), expected, rtol=1e-12)
    sum_pool = nn.SumPool(window, strides, padding)
    assert np.allclose(sum_pool(x), total, rtol=1e-12)


def test_global_pools():
    x = jnp.arange(24.0).reshape(2, 3, 4)
    assert np.allclose(nn.GlobalAvgPool()(x), x.mean((1, 2)))
    assert np.allclose(nn.GlobalSumPool()(x), x.sum((1, 2)))


POOLS = {
    "avg_same": lambda: nn.AvgPool((3, 2), (1, 2), "SAME"),
    "avg_same_normalized": lambda: nn.AvgPool((3, 2), (2, 1), "SAME", normalize_edges=True),
    "avg_valid": lambda: nn.AvgPool((2, 2), (2, 2)),
    "avg_circular": lambda: nn.AvgPool((3, 3), (2, 1), "CIRCULAR"),
    "sum_same": lambda: nn.SumPool((2, 3), None, "SAME"),
    "sum_circular": lambda: nn.SumPool((2, 2), (1, 2), "CIRCULAR"),
}


def _net(key, pool, head, width, d_out):
    k1, k2 = jr.split(key)
    layers = [nn.Conv(2, width, (2, 2), None, "SAME", None, 1.4, 0.2, key=k1), nn.Relu(), pool]
    if head == "global_avg_pool":
        layers += [nn.GlobalAvgPool(), nn.Dense(width, d_out, 1.2, 0.1, key=k2)]
    elif head == "global_sum_pool":
        layers += [nn.GlobalSumPool(), nn.Dense(width, d_out, 1.2, 0.1, key=k2)]
    else:
        layers += [nn.Conv(width, d_out, (2, 2), None, "VALID", None, 1.2, 0.1, key=k2)]
    return nn.Sequential(layers)


@pytest.mark.parametrize("pool", sorted(POOLS))
def test_pooling_matches_wide_networks(getkey, pool):
    width, d_out, n_samples = 256, 32, 8
    x1 = jr.normal(getkey(), (2, 2, 5, 6))

    def make(key):
        return _net(key, POOLS[pool](), "conv", width, d_out)

    assert_matches_monte_carlo(make, x1, None, n_samples, width, d_out, getkey())


@pytest.mark.parametrize("head", ["global_avg_pool", "global_sum_pool"])
def test_global_pooling_matches_wide_networks(getkey, head):
    width, d_out, n_samples = 256, 64, 8
    x1 = jr.normal(getkey(), (2, 2, 5, 4))
    x2 = jr.normal(getkey(), (3, 2, 5, 4))

    def make(key):
        return _net(key, nn.Identity(), head, width, d_out)

    assert_matches_monte_carlo(make, x1, x2, n_samples, width, d_out, getkey(), with_ntk=False)


@pytest.mark.slow
@pytest.mark.parametrize("pool", ["avg_same_normalized", "sum_circular"])
def test_pooling_matches_wide_networks_closely(getkey, pool):
    width, d_out, n_samples = 1024, 128, 32
    x1 = jr.normal(getkey(), (3, 2, 6, 6))

    def make(key):
        return _net(key, POOLS[pool](), "global_avg_pool", width, d_out)

    assert_matches_monte_carlo(make, x1, None, n_samples, width, d_out, getkey(), with_ntk=True)


def test_exact_identities(getkey):
    x = jr.normal(getkey(), (3, 2, 4, 6))
    body = nn.Sequential(
        [nn.Conv(2, 8, (3, 3), padding="SAME", b_std=0.1, key=getkey()), nn.Relu()]
    )
    k = eqntk.limit(body)(x)
    # A global sum is a global mean times the number of positions (squared for covariances).
    k_sum = eqntk.limit(nn.GlobalSumPool())(k)
    k_avg = eqntk.limit(nn.GlobalAvgPool())(k)
    assert np.allclose(k_sum.nngp, 24**2 * k_avg.nngp, rtol=1e-12)
    # Average pooling over the whole image, then a global mean, is the global mean.
    k_pooled = eqntk.limit(nn.Sequential([nn.AvgPool((4, 6)), nn.GlobalAvgPool()]))(k)
    assert np.allclose(k_pooled.nngp, k_avg.nngp, rtol=1e-12)
    assert np.allclose(k_pooled.ntk, k_avg.ntk, rtol=1e-12)
    # CIRCULAR pooling with stride 1 averages every position equally often: the global mean
    # does not change.
    k_circ = eqntk.limit(nn.Sequential([nn.AvgPool((3, 2), None, "CIRCULAR"), nn.GlobalAvgPool()]))(
        k
    )
    assert np.allclose(k_circ.nngp, k_avg.nngp, rtol=1e-12)
    # A window of one entry is the identity.
    k_id = eqntk.limit(nn.AvgPool((1, 1)))(k)
    assert np.allclose(k_id.nngp, k.nngp, rtol=1e-12) and k_id.nngp.shape == k.nngp.shape


def test_pooling_requires_the_full_layout(getkey):
    for layer in (nn.AvgPool((2,)), nn.SumPool((2,)), nn.GlobalAvgPool(), nn.GlobalSumPool()):
        assert requirements(layer, Requirements(diagonal_spatial=True)) == Requirements(False)
    x = jr.normal(getkey(), (2, 3, 6))
    k_diag = eqntk.limit(nn.Conv(3, 4, (2,), key=getkey()))(x, diagonal_spatial=True)
    with pytest.raises(ValueError, match="needs the full spatial covariance"):
        eqntk.limit(nn.AvgPool((2,)))(k_diag)
    # The rule itself refuses too, when applied by hand.
    with pytest.raises(ValueError, match="`AvgPool` mixes positions.*diagonal layout"):
        apply(nn.AvgPool((2,)), k_diag, Requirements())


def test_bad_inputs_raise_clear_errors(getkey):
    x = jr.normal(getkey(), (2, 3, 4, 4))
    with pytest.raises(ValueError, match="`window_shape` \\(5, 1\\).*larger than its input"):
        eqntk.limit(nn.AvgPool((5, 1)))(x)
    with pytest.raises(ValueError, match="`SumPool` was built for inputs with 1 spatial"):
        eqntk.limit(nn.SumPool((2,)))(x)
    with pytest.raises(ValueError, match="`strides` must be a non-empty sequence of positive"):
        nn.AvgPool((2, 2), (-1, 1))
    assert jnp.all(jnp.isfinite(eqntk.limit(nn.AvgPool((4, 4)))(x).nngp))
