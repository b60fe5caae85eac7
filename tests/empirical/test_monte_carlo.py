"""`monte_carlo_kernel`: convergence to `eqntk.limit`, and networks without a closed form."""

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import eqntk
from eqntk import nn

from ..helpers import relative_error


def _fcn(width, out, activation):
    def make(key):
        k1, k2, k3 = jr.split(key, 3)
        return nn.Sequential(
            [
                nn.Dense(3, width, W_std=1.5, b_std=0.1, key=k1),
                activation(),
                nn.Dense(width, width, W_std=1.5, b_std=0.1, key=k2),
                activation(),
                nn.Dense(width, out, W_std=1.5, b_std=0.1, key=k3),
            ]
        )

    return make


def _errors(make, x1, x2, n_samples, key):
    exact = eqntk.limit(make(jr.key(0)))(x1, x2, get=("nngp", "ntk"))
    estimate = eqntk.monte_carlo_kernel(make, key, x1, x2, n_samples, batch_size=8)
    return relative_error(estimate.nngp, exact.nngp), relative_error(estimate.ntk, exact.ntk)


@pytest.mark.parametrize("activation", [nn.Relu, nn.Erf])
def test_converges_to_limit(activation, getkey):
    # Each NNGP entry averages S * C products of jointly Gaussian outputs (C = 8 channels), whose
    # relative standard deviation is at most sqrt(2 / (S C)): 0.177 for S = 8, 0.044 for S = 128.
    # The NTK fluctuates less (a sum over 128 hidden units per layer; its finite-width bias is
    # O(1 / 128)). The bounds are 3 such standard deviations; the error must also shrink by about
    # sqrt(128 / 8) = 4: the 4x tighter bound at S = 128 encodes that, and one seeded draw is
    # only asked to improve (the ratio of two random errors is itself noisy).
    make = _fcn(128, 8, activation)
    x1, x2 = jr.normal(getkey(), (3, 3)), jr.normal(getkey(), (2, 3))
    key = getkey()
    small = _errors(make, x1, x2, 8, key)
    large = _errors(make, x1, x2, 128, key)
    assert small[0] < 3 * 0.177 and large[0] < 3 * 0.044, (small, large)
    assert small[1] < 3 * 0.177 and large[1] < 3 * 0.044, (small, large)
    assert large[0] < small[0] and large[1] < small[1], (small, large)


@pytest.mark.slow
def test_converges_to_limit_large(getkey):
    # S = 2048 networks of width 1024: sqrt(2 / (S C)) = 0.011 with C = 8; 3 sigma bound.
    make = _fcn(1024, 8, nn.Erf)
    x1, x2 = jr.normal(getkey(), (4, 3)), jr.normal(getkey(), (3, 3))
    errors = _errors(make, x1, x2, 2048, getkey())
    assert errors[0] < 3 * 0.011 and errors[1] < 3 * 0.011, errors


def test_spatial_layout_matches_limit(getkey):
    # Dense on sequences: the kernel has the (N1, N2, L, L') layout of `eqntk.limit`.
    make = _fcn(128, 4, nn.Erf)
    x = jr.normal(getkey(), (2, 3, 5))
    estimate = eqntk.monte_carlo_kernel(make, getkey(), x, None, 16, 8, get="nngp")
    exact = eqntk.limit(make(jr.key(0)))(x, get="nngp")
    assert estimate.shape == exact.shape == (2, 2, 5, 5)
    # S C = 64 products per entry: relative standard deviation <= sqrt(2 / 64) = 0.18; 3 sigma.
    assert relative_error(estimate, exact) < 3 * 0.18


def test_any_network(getkey):
    def make(key):
        k1, k2 = jr.split(key)
        return eqx.nn.Sequential(
            [
                eqx.nn.Conv2d(2, 8, 3, padding=1, key=k1),
                eqx.nn.Lambda(jnp.tanh),
                eqx.nn.MaxPool2d(2, 2),
                eqx.nn.Lambda(jnp.ravel),
                eqx.nn.Linear(8 * 2 * 2, 3, key=k2),
            ]
        )

    x = jr.normal(getkey(), (3, 2, 4, 4))
    nngp, ntk = eqntk.monte_carlo_kernel(make, getkey(), x, n_samples=4, batch_size=2)
    for k in (nngp, ntk):
        assert k.shape == (3, 3) and bool(jnp.isfinite(k).all())
        np.testing.assert_allclose(k, k.T, atol=1e-12)
        assert float(jnp.linalg.eigvalsh(k).min()) > -1e-10
    # The average of the per-network kernels, one network at a time.
    keys = jr.split(jr.key(3), 2)
    by_hand = sum(eqntk.empirical_kernel(make(k), x) for k in keys) / 2
    np.testing.assert_allclose(
        eqntk.monte_carlo_kernel(make, jr.key(3), x, n_samples=2, get="ntk"), by_hand, rtol=1e-10
    )


def test_bad_inputs(getkey):
    x = jnp.ones((2, 3))
    with pytest.raises(ValueError, match="`batch_size` must be a positive integer that divides"):
        eqntk.monte_carlo_kernel(_fcn(4, 1, nn.Relu), getkey(), x, n_samples=5, batch_size=2)
    with pytest.raises(ValueError, match="`n_samples` must be a positive integer"):
        eqntk.monte_carlo_kernel(_fcn(4, 1, nn.Relu), getkey(), x, n_samples=0)


def test_several_sample_counts_share_their_samples():
    def make_model(key):
        k1, k2 = jr.split(key)
        return nn.Sequential([nn.Dense(2, 8, key=k1), nn.Relu(), nn.Dense(8, 1, key=k2)])

    x = jr.normal(jr.key(0), (3, 2))
    two, four = eqntk.monte_carlo_kernel(make_model, jr.key(1), x, n_samples=(2, 4), get="ntk")
    single = eqntk.monte_carlo_kernel(make_model, jr.key(1), x, n_samples=4, get="ntk")
    # The largest count is the plain estimate; the smaller one averages its first networks.
    assert jnp.allclose(four, single, rtol=1e-12)
    assert two.shape == (3, 3) and not jnp.allclose(two, four)
