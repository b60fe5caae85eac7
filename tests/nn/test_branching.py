"""Finite forward passes of the branching layers, `Repeat`, `LayerNorm` and `Dropout`."""

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from eqntk import nn


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
