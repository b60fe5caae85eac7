"""Finite convolution and pooling layers holding a mask: zeros at masked inputs, unmasked means."""

import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from eqntk import nn


def _layers(key):
    k1, k2, k3 = jr.split(key, 3)
    return [
        nn.Conv(3, 4, (3,), (2,), "SAME", b_std=0.1, key=k1),
        nn.ConvTranspose(3, 4, (3,), (2,), "CIRCULAR", b_std=0.1, key=k2),
        nn.ConvLocal(3, 4, (2,), (3,), "VALID", b_std=0.1, spatial_shape=(7,), key=k3),
        nn.AvgPool((3,), (2,), "SAME"),
        nn.SumPool((2,), None, "VALID"),
        nn.GlobalSumPool(),
    ]


@pytest.mark.parametrize("index", range(6))
def test_masked_layer_zeroes_masked_inputs(getkey, index):
    """A layer holding a mask computes the plain layer on the input with zeros where masked
    (window means still divide by the window size, as in neural-tangents)."""
    layer = _layers(getkey())[index]
    x = jr.normal(getkey(), (3, 7))
    mask = jnp.array([False, True, False, False, False, True, True])
    masked = nn.with_inputs(layer, mask=mask)
    np.testing.assert_allclose(masked(x), layer(jnp.where(mask, 0.0, x)), rtol=1e-12)
    assert masked(x).shape == layer(x).shape


def test_output_mask_shapes(getkey):
    x = jnp.zeros((3, 7))
    mask = jnp.arange(7) >= 4
    for layer in _layers(getkey())[:5]:
        out = layer.output_mask(mask)
        assert out.shape == layer(x).shape[1:]
        assert out.dtype == jnp.bool_
        batched = layer.output_mask(jnp.stack([mask, ~mask]))
        np.testing.assert_array_equal(batched[0], out)
    assert nn.GlobalSumPool().output_mask(mask) is None


def test_global_avg_pool_mean_of_unmasked(getkey):
    x = jr.normal(getkey(), (2, 3, 4))
    mask = jnp.zeros((3, 4), bool).at[1:, :].set(True).at[0, 3].set(True)
    y = nn.with_inputs(nn.GlobalAvgPool(), mask=mask)(x)
    np.testing.assert_allclose(y, x[:, 0, :3].mean(1), rtol=1e-12)
