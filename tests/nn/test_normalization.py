"""`LayerNorm` and `Dropout`: finite forward passes, kernels against wide finite networks, the
diagonal layout, and their errors."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import eqntk
from eqntk import nn
from tests.helpers import relative_error
from tests.nn.test_branching import assert_matches_monte_carlo, mc_tolerance


def test_layernorm_and_dropout_forward(getkey):
    x = jr.normal(getkey(), (8, 5, 3))
    y = nn.LayerNorm(("channel", "spatial"))(x)
    np.testing.assert_allclose(y.mean(), 0.0, atol=1e-12)
    np.testing.assert_allclose((y**2).mean(), 1.0, rtol=1e-9)
    z = nn.LayerNorm(("channel", 1))(x)
    np.testing.assert_allclose(z.mean(axis=(0, 2)), 0.0, atol=1e-12)
    kept = jax.vmap(lambda k: nn.Dropout(0.25)(jnp.ones(1000), key=k))(jr.split(getkey(), 4))
    assert set(np.unique(kept).tolist()) <= {0.0, 4.0}
    assert abs(float(kept.mean()) - 1.0) < 0.15  # E = 1; std of the mean = sqrt(3 / 4000)
    np.testing.assert_array_equal(nn.Dropout(0.25, inference=True)(x), x)


def _layernorm_mlp(key, width, readout, d_in=5):
    k = jr.split(key, 3)
    return nn.Sequential(
        [
            nn.Dense(d_in, width, 1.5, 0.3, key=k[0]),
            nn.LayerNorm(),
            nn.Relu(),
            nn.Dense(width, width, 1.2, 0.1, key=k[1]),
            nn.LayerNorm(("channel",), eps=0.1),
            nn.Erf(),
            nn.Dense(width, readout, 1.0, 0.1, key=k[2]),
        ]
    )


def _layernorm_sequence(key, width, readout, d_in=3):
    # Normalising over channels and positions of a sequence (C, L).
    k = jr.split(key, 2)
    return nn.Sequential(
        [
            nn.Dense(d_in, width, 1.4, 0.2, key=k[0]),
            nn.LayerNorm(("channel", "spatial")),
            nn.Relu(),
            nn.Dense(width, readout, 1.0, 0.1, key=k[1]),
        ]
    )


def test_layernorm_matches_wide_networks(getkey):
    x1 = 3 * jr.normal(getkey(), (3, 5))
    x2 = jr.normal(getkey(), (2, 5))
    assert_matches_monte_carlo(_layernorm_mlp, x1, x2, getkey(), width=256)


@pytest.mark.slow  # the golden LayerNorm-over-positions cases check it by default
def test_layernorm_over_positions_matches_wide_networks(getkey):
    # Positions of different scales, so that normalising over them differs from per position.
    x1 = jr.normal(getkey(), (2, 3, 4)) * jnp.array([[[0.5, 1.0, 2.0, 3.0]]])
    exact = assert_matches_monte_carlo(_layernorm_sequence, x1, None, getkey(), width=128)
    per_position = eqntk.limit(
        nn.Sequential([_layernorm_sequence(jr.key(0), 8, 1)[0], nn.LayerNorm(), nn.Relu()])
    )(x1)
    assert not np.allclose(
        per_position.nngp, eqntk.limit(_layernorm_sequence(jr.key(0), 8, 1)[:3])(x1).nngp
    )
    assert exact.nngp.shape == (2, 2, 4, 4)


def test_layernorm_diagonal_layout_matches_full(getkey):
    x = jr.normal(getkey(), (2, 3, 4, 3))
    model = nn.Sequential([nn.Dense(3, 8, 1.3, 0.1, key=getkey()), nn.LayerNorm(("channel", 1))])
    full = eqntk.limit(model)(x)
    diagonal = eqntk.limit(model)(x, diagonal_spatial=True)
    np.testing.assert_allclose(diagonal.nngp, jnp.einsum("abiijj->abij", full.nngp), rtol=1e-12)
    # Normalised over the channels and the last axis: each row has unit mean variance.
    np.testing.assert_allclose(diagonal.cov1.mean(-1), 1.0, rtol=1e-6)


def _dropout_mlp(key, width, readout, keep_rate, d_in=5):
    k = jr.split(key, 2)
    return nn.Sequential(
        [
            nn.Dense(d_in, width, 1.4, 0.1, key=k[0]),
            nn.Relu(),
            nn.Dropout(keep_rate),
            nn.Dense(width, readout, 1.4, 0.1, key=jr.fold_in(k[1], 0)),
        ]
    )


def _dropout_mc_nngp(key, x1, x2, keep_rate, width, readout, n_samples):
    """Monte Carlo NNGP with an independent dropout mask for every example of each batch (for
    `x2=None`, one mask per example serves both factors, as in `K(x, x)`)."""

    def one(k):
        k_model, k1, k2 = jr.split(k, 3)
        model = _dropout_mlp(k_model, width, readout, keep_rate)

        def forward(x, keys):
            return jax.vmap(lambda xi, ki: model(xi, key=ki))(x, keys)

        f1 = forward(x1, jr.split(k1, len(x1)))
        f2 = f1 if x2 is None else forward(x2, jr.split(k2, len(x2)))
        return f1 @ f2.T / readout

    return jnp.mean(jax.lax.map(eqx.filter_jit(one), jr.split(key, n_samples)), axis=0)


@pytest.mark.parametrize("with_x2", [False, True])
def test_dropout_matches_wide_networks(getkey, with_x2):
    keep_rate, width, readout, n_samples = 0.6, 256, 64, 16
    x1 = jr.normal(getkey(), (3, 5))
    x2 = jr.normal(getkey(), (2, 5)) if with_x2 else None
    exact = eqntk.limit(_dropout_mlp(jr.key(0), width, 1, keep_rate))(x1, x2)
    estimate = _dropout_mc_nngp(getkey(), x1, x2, keep_rate, width, readout, n_samples)
    # Dropout adds variance to the readout's inputs; 1/keep_rate more sampling noise at most.
    tolerance = mc_tolerance(n_samples, width, readout) / math.sqrt(keep_rate)
    assert relative_error(estimate, exact.nngp) < tolerance
    without = eqntk.limit(_dropout_mlp(jr.key(0), width, 1, 1.0))(x1, x2)
    if with_x2:
        np.testing.assert_allclose(exact.nngp, without.nngp, rtol=1e-12)
    else:
        assert relative_error(estimate, without.nngp) > tolerance  # the test can tell


def test_dropout_kernel_scales_the_diagonal(getkey):
    x = jr.normal(getkey(), (3, 2, 4))  # sequences: the spatial diagonal matters too
    dense = nn.Dense(2, 8, 1.0, 0.1, key=getkey())
    before = eqntk.limit(dense)(x)
    after = eqntk.limit(nn.Sequential([dense, nn.Dropout(0.5)]))(x)
    same = jnp.eye(3)[:, :, None, None] * jnp.eye(4)[None, None]
    np.testing.assert_allclose(after.nngp, before.nngp * (1 + same), rtol=1e-12)
    np.testing.assert_allclose(after.ntk, before.ntk * (1 + same), rtol=1e-12)
    np.testing.assert_allclose(after.cov1, before.cov1 * (1 + jnp.eye(4)[None]), rtol=1e-12)
    assert not after.is_gaussian
    off = eqntk.limit(nn.Sequential([dense, nn.Dropout(0.5, inference=True)]))(x)
    np.testing.assert_array_equal(off.nngp, before.nngp)
    equinox_dropout = eqntk.limit(nn.Sequential([dense, eqx.nn.Dropout(0.5)]))(x)
    np.testing.assert_allclose(equinox_dropout.nngp, after.nngp, rtol=1e-12)


def test_normalization_errors(getkey):
    x = jr.normal(getkey(), (2, 5))
    with pytest.raises(ValueError, match="`LayerNorm` needs Gaussian inputs"):
        eqntk.limit(nn.LayerNorm())(x)
    with pytest.raises(ValueError, match="`axis` must include 'channel'"):
        nn.LayerNorm(("spatial",))
    with pytest.raises(ValueError, match="`LayerNorm` axes must be"):
        nn.LayerNorm(("channel", -1))
    with pytest.raises(ValueError, match="spatial axis 1, but its input has 1 spatial axes"):
        nn.LayerNorm(("channel", 1))(jnp.ones((3, 4)))
    with pytest.raises(ValueError, match=r"`keep_rate` must be in \(0, 1\], got 0.0"):
        nn.Dropout(0.0)
    with pytest.raises(ValueError, match="`Dropout` needs a `key` in training mode"):
        nn.Dropout(0.5)(jnp.ones(3))
