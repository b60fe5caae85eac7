"""`GlobalSelfAttention`: sequences against wide finite networks, symmetry, errors."""

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import eqntk
from eqntk import nn
from tests.helpers import mc_kernels, relative_error


CONFIGS = {
    "softmax": dict(attention="softmax", b_std=0.1),
    "relu_sum_exp": dict(
        attention="relu",
        pos_emb="sum",
        pos_emb_decay=lambda d: jnp.exp(-0.5 * d),
        W_pos_emb_std=0.7,
    ),
    "abs_concat_values": dict(
        attention="abs", pos_emb="concat", pos_emb_channels=32, val_pos_emb=True, b_std=0.05
    ),
}


def _net(key, config, width=64, length=4):
    k1, k2, k3 = jr.split(key, 3)
    return nn.Sequential(
        [
            nn.Dense(2, width, W_std=1.2, b_std=0.1, key=k1),
            nn.GlobalSelfAttention(
                width,
                width,
                key_dim=width,
                value_dim=width,
                heads=4,
                W_key_std=1.1,
                W_out_std=0.9,
                spatial_shape=(length,),
                key=k2,
                **config,
            ),
            nn.Relu(),
            nn.Dense(width, width, key=k3),
        ]
    )


@pytest.mark.parametrize(
    "name",
    [
        "softmax",
        "relu_sum_exp",
        # Concatenated embeddings of 32 channels estimate R with ~1/sqrt(32) error inside a
        # nonlinear attention map: a finite-width bias that needs wider networks.
        pytest.param("abs_concat_values", marks=pytest.mark.slow),
    ],
)
def test_monte_carlo(name, getkey):
    x1, x2 = jr.normal(getkey(), (2, 2, 4)), jr.normal(getkey(), (3, 2, 4))
    exact = eqntk.limit(_net(getkey(), CONFIGS[name]))(x1, x2)
    nngp, ntk = mc_kernels(lambda k: _net(k, CONFIGS[name]), getkey(), x1, x2, n_samples=32)
    # All channels of one network share its attention weights, whose logits (averages over
    # key_dim = 64 features) deviate by ~sqrt(2 / 64) ~ 0.18; 32 networks x 4 heads give a
    # standard error ~0.18 / sqrt(128) ~ 0.02 on the weights, amplified by the (unnormalised)
    # attention maps and the hidden kernels' own ~0.03: 0.25 is ~3 standard errors.
    assert relative_error(nngp, exact.nngp) < 0.25
    assert relative_error(ntk, exact.ntk) < 0.25


@pytest.mark.slow
def test_monte_carlo_wide(getkey):
    x1, x2 = jr.normal(getkey(), (2, 2, 4)), jr.normal(getkey(), (3, 2, 4))
    config = CONFIGS["softmax"]
    exact = eqntk.limit(_net(getkey(), config, width=256))(x1, x2)
    nngp, ntk = mc_kernels(lambda k: _net(k, config, width=256), getkey(), x1, x2, 128)
    # Width 256, 128 networks: standard error ~ 1/sqrt(128 * 256) ~ 0.006; 0.03 is generous
    # for the O(1/width) bias of the finite logits.
    assert relative_error(nngp, exact.nngp) < 0.03
    assert relative_error(ntk, exact.ntk) < 0.03


def test_symmetric_and_psd(getkey):
    x = jr.normal(getkey(), (4, 2, 4))
    k = eqntk.limit(_net(getkey(), CONFIGS["relu_sum_exp"]))(x)
    np.testing.assert_allclose(k.nngp, jnp.swapaxes(jnp.swapaxes(k.nngp, 0, 1), 2, 3), atol=1e-12)
    flat = jnp.transpose(k.nngp, (0, 2, 1, 3)).reshape(16, 16)
    assert jnp.linalg.eigvalsh(flat).min() > -1e-10


def test_bad_inputs(getkey):
    key = getkey()
    with pytest.raises(ValueError, match="`key_dim` must be a positive integer"):
        nn.GlobalSelfAttention(4, 4, key_dim=0, value_dim=4, heads=1, key=key)
    with pytest.raises(ValueError, match="`attention` must be"):
        nn.GlobalSelfAttention(4, 4, 4, 4, 1, attention="tanh", key=key)
    with pytest.raises(ValueError, match="`spatial_shape` is needed"):
        nn.GlobalSelfAttention(4, 4, 4, 4, 1, pos_emb="sum", key=key)
    with pytest.raises(ValueError, match="`pos_emb_channels` must be None"):
        nn.GlobalSelfAttention(
            4, 4, 4, 4, 1, pos_emb="sum", pos_emb_channels=3, spatial_shape=(5,), key=key
        )
    layer = nn.GlobalSelfAttention(4, 4, 4, 4, 1, linear_scaling=False, key=key)
    x = jnp.ones((2, 4, 5))
    assert jax.vmap(layer)(x).shape == (2, 4, 5)  # the finite network works
    with pytest.raises(NotImplementedError, match="linear_scaling=False"):
        eqntk.limit(layer)(x)
    with pytest.raises(ValueError, match="built for 4 input channels"):
        eqntk.limit(nn.GlobalSelfAttention(4, 4, 4, 4, 1, key=key))(jnp.ones((2, 3, 5)))
