"""Branching layers (`FanOut`, `Parallel`, `FanInSum`, `FanInProd`, `FanInConcat`): finite
forward passes of the streams, kernels against wide finite networks, the product and
concatenation rules, and their trace-time errors."""

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import eqntk
from eqntk import nn
from tests.helpers import mc_kernels, relative_error


def test_streams_forward(getkey):
    x = jr.normal(getkey(), (3, 4))
    a, b = nn.FanOut(2)(x)
    assert a is x and b is x
    dense = nn.Dense(3, 3, key=getkey())
    out = nn.residual(dense)(x)
    np.testing.assert_allclose(out, dense(x) + x, rtol=1e-12)
    np.testing.assert_allclose(nn.FanInProd()((x, 2 * x)), 2 * x**2, rtol=1e-12)
    assert nn.FanInConcat()((x, x[:2])).shape == (5, 4)
    assert nn.FanInConcat(0)((x, x[:, :1])).shape == (3, 5)


def test_stream_shape_errors(getkey):
    x = jnp.ones((3, 4))
    with pytest.raises(ValueError, match="`FanInSum` needs streams of the same shape"):
        nn.FanInSum()((x, x[:2]))
    with pytest.raises(ValueError, match="except along the concatenated axis"):
        nn.FanInConcat()((x, x[:, :2]))
    with pytest.raises(TypeError, match="`FanInSum` takes a non-empty tuple of streams"):
        nn.FanInSum()(())
    with pytest.raises(ValueError, match="`Parallel` has 1 branches but received 2 streams"):
        nn.Parallel([nn.Identity()])((x, x))


def mc_tolerance(n_samples: int, width: int, readout: int) -> float:
    """Relative (Frobenius) tolerance of a Monte Carlo kernel estimate.

    Averaging `n_samples` networks with `readout` output channels each: the readout's products
    `f(x1) f(x2)` have relative standard deviation about `sqrt(2)`, so their mean over
    `n_samples * readout` draws about `sqrt(2 / (n_samples * readout))`; the hidden layers'
    empirical kernels fluctuate by O(1/sqrt(width)) per network, averaged over `n_samples`
    networks; and finite width biases the kernel by O(1/width). We allow 5 standard deviations
    and 4/width.
    """
    return 5 * math.sqrt(2 / (n_samples * readout)) + 5 / math.sqrt(n_samples * width) + 4 / width


def assert_matches_monte_carlo(
    make: Callable[[jax.Array, int, int], object],
    x1: jax.Array,
    x2: jax.Array | None,
    key: jax.Array,
    width: int,
    n_samples: int = 16,
    readout: int = 64,
):
    """Compare `limit(make(key, width, readout))` with Monte Carlo estimates.

    The NNGP is estimated with a wide readout (many draws per network); the NTK, whose
    Jacobians are costly, with a single output channel.
    """
    exact = eqntk.limit(make(jr.key(0), width, 1))(x1, x2)
    nngp, _ = mc_kernels(lambda k: make(k, width, readout), key, x1, x2, n_samples, False)
    _, ntk = mc_kernels(lambda k: make(k, width, 1), jr.fold_in(key, 1), x1, x2, n_samples)
    assert relative_error(nngp, exact.nngp) < mc_tolerance(n_samples, width, readout)
    assert relative_error(ntk, exact.ntk) < mc_tolerance(n_samples, width, 1)
    return exact


def _residual_mlp(key, width, readout, d_in=5):
    k = jr.split(key, 4)
    block = nn.Sequential([nn.Relu(), nn.Dense(width, width, 1.2, 0.1, key=k[1])])
    return nn.Sequential(
        [
            nn.Dense(d_in, width, 1.0, 0.1, key=k[0]),
            nn.residual(block),
            nn.residual(nn.Sequential([nn.Erf(), nn.Dense(width, width, 0.8, key=k[2])])),
            nn.Relu(),
            nn.Dense(width, readout, 1.0, 0.1, key=k[3]),
        ]
    )


def _prod_net(key, width, readout, d_in=5):
    k = jr.split(key, 4)
    branch = nn.Sequential(
        [nn.Dense(d_in, width, 1.2, 0.1, key=k[1]), nn.Relu(), nn.Dense(width, width, key=k[2])]
    )
    return nn.Sequential(
        [
            nn.FanOut(2),
            nn.Parallel([nn.Dense(d_in, width, 1.0, 0.3, key=k[0]), branch]),
            nn.FanInProd(),
            nn.Dense(width, readout, 1.0, 0.1, key=k[3]),
        ]
    )


def _concat_net(key, width, readout, d_in=5):
    # Branches of different widths (width and width // 2): the channel-width weights matter.
    k = jr.split(key, 4)
    return nn.Sequential(
        [
            nn.FanOut(2),
            nn.Parallel(
                [
                    nn.Sequential([nn.Dense(d_in, width, 1.3, key=k[0]), nn.Relu()]),
                    nn.Sequential([nn.Dense(d_in, width // 2, 1.0, 0.2, key=k[1]), nn.Erf()]),
                ]
            ),
            nn.FanInConcat("channel"),
            nn.Dense(width + width // 2, readout, 1.0, 0.1, key=k[3]),
        ]
    )


def _spatial_concat_net(key, width, readout, d_in=3):
    # On sequences (C, L): `Dense` acts at every position; concatenating along the length.
    k = jr.split(key, 4)
    return nn.Sequential(
        [
            nn.Dense(d_in, width, 1.0, 0.1, key=k[0]),
            nn.FanOut(2),
            nn.Parallel(
                [
                    nn.Dense(width, width, 1.1, 0.1, key=k[1]),
                    nn.Sequential([nn.Relu(), nn.Dense(width, width, 1.2, key=k[2])]),
                ]
            ),
            nn.FanInConcat(0),
            nn.Relu(),
            nn.Dense(width, readout, 1.0, 0.1, key=k[3]),
        ]
    )


@pytest.mark.parametrize(
    "make", [_residual_mlp, _prod_net, _concat_net], ids=["residual", "prod", "concat"]
)
def test_branching_networks_match_wide_networks(getkey, make):
    x1 = jr.normal(getkey(), (3, 5))
    x2 = jr.normal(getkey(), (2, 5))
    assert_matches_monte_carlo(make, x1, x2, getkey(), width=256)


def test_spatial_concat_matches_wide_networks(getkey):
    x1 = jr.normal(getkey(), (2, 3, 4))
    exact = assert_matches_monte_carlo(_spatial_concat_net, x1, None, getkey(), width=128)
    assert exact.nngp.shape == (2, 2, 8, 8)
    # Positions from different (independent) branches are uncorrelated before the `Relu`.
    before = eqntk.limit(_spatial_concat_net(jr.key(0), 8, 1)[:4])(x1)
    np.testing.assert_array_equal(before.nngp[:, :, :4, 4:], 0.0)


@pytest.mark.slow
@pytest.mark.parametrize(
    "make", [_residual_mlp, _prod_net, _concat_net], ids=["residual", "prod", "concat"]
)
def test_branching_networks_match_wide_networks_large(getkey, make):
    x1 = jr.normal(getkey(), (4, 5))
    assert_matches_monte_carlo(make, x1, None, getkey(), width=1024, n_samples=64, readout=256)


def test_fan_in_prod_is_the_product_rule(getkey):
    x = jr.normal(getkey(), (3, 5))
    net = _prod_net(getkey(), 8, 1)
    streams = eqntk.limit(net[:2])(x)
    k = eqntk.limit(net[:3])(x)
    (a, b) = streams
    np.testing.assert_allclose(k.nngp, a.nngp * b.nngp, rtol=1e-12)
    np.testing.assert_allclose(k.ntk, a.ntk * b.nngp + a.nngp * b.ntk, rtol=1e-12)


def test_channel_concat_weights_by_width(getkey):
    x = jr.normal(getkey(), (3, 5))
    net = _concat_net(getkey(), 8, 1)
    a, b = eqntk.limit(net[:2])(x)
    k = eqntk.limit(net[:3])(x)
    np.testing.assert_allclose(k.nngp, (8 * a.nngp + 4 * b.nngp) / 12, rtol=1e-12)
    assert k.shape1 == (12,) and not k.is_gaussian


def test_kernels_symmetric_psd_and_jittable(getkey):
    x = jr.normal(getkey(), (4, 5))
    for make in (_residual_mlp, _prod_net, _concat_net):
        kernel_fn = eqntk.limit(make(getkey(), 8, 1))
        k = jax.jit(lambda x: kernel_fn(x))(x)
        for a in (k.nngp, k.ntk):
            np.testing.assert_allclose(a, a.T, rtol=1e-12)
            assert jnp.linalg.eigvalsh(a).min() > -1e-10 * jnp.abs(a).max()


def test_stream_errors(getkey):
    x = jr.normal(getkey(), (2, 5))
    dense = nn.Dense(5, 4, key=getkey())
    different_shapes = nn.Sequential(
        [nn.FanOut(2), nn.Parallel([dense, nn.Dense(5, 6, key=getkey())]), nn.FanInSum()]
    )
    with pytest.raises(ValueError, match=r"`FanInSum` needs streams of the same shape.*\(4,\)"):
        eqntk.limit(different_shapes)(x)
    with pytest.raises(ValueError, match="`FanInSum` needs streams of the same shape"):
        different_shapes(x[0])
    missing_axis = nn.Sequential([nn.FanOut(2), nn.FanInConcat(1)])
    with pytest.raises(ValueError, match=r"spatial axis 1, but its inputs have 0 spatial axes"):
        eqntk.limit(missing_axis)(x)
    with pytest.raises(ValueError, match=r"spatial axis 1, but its inputs have 0 spatial axes"):
        missing_axis(x[0])
    wrong_count = nn.Sequential([nn.FanOut(2), nn.Parallel([dense, dense, dense]), nn.FanInSum()])
    with pytest.raises(ValueError, match=r"`FanOut\(2\)` makes 2 streams.*take 3 streams"):
        eqntk.limit(wrong_count)(x)
    with pytest.raises(ValueError, match="`Parallel` has 3 branches but received 2 streams"):
        wrong_count(x[0])
    non_gaussian = nn.Sequential(
        [nn.FanOut(2), nn.Parallel([dense, nn.Sequential([dense, nn.Relu()])]), nn.FanInSum()]
    )
    with pytest.raises(ValueError, match=r"stream\(s\) \[1\] are not"):
        eqntk.limit(non_gaussian)(x)
    # An identity shortcut of the raw input is not Gaussian either.
    with pytest.raises(ValueError, match=r"stream\(s\) \[1\] are not"):
        eqntk.limit(nn.residual(nn.Dense(5, 5, key=getkey())))(x)
    with pytest.raises(ValueError, match="Gaussian"):
        eqntk.limit(nn.Sequential([dense, nn.Relu(), nn.FanOut(2), nn.FanInConcat(0)]))(
            x[:, :, None]
        )
    with pytest.raises(ValueError, match="`FanOut` needs a positive integer"):
        nn.FanOut(0)
    with pytest.raises(ValueError, match="`FanInConcat` takes `axis='channel'`"):
        nn.FanInConcat(-1)
