"""Finite convolution and pooling layers against `lax` and direct loops; input errors; training."""

import itertools
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from jax import lax

from eqntk import nn


def _raw_weight(layer, parameterization="ntk"):
    """The weights as the forward pass applies them (NTK scaling folded in)."""
    if parameterization == "standard":
        return layer.weight
    return layer.weight * layer.W_std / math.sqrt(layer.fan_in)


@pytest.mark.parametrize(
    "spatial, filter_shape, strides, dilation",
    [
        ((7,), (3,), (1,), (1,)),
        ((8,), (2,), (3,), (2,)),
        ((6, 5), (3, 2), (2, 1), (1, 2)),
        ((4, 5, 3), (2, 3, 1), (1, 2, 1), (1, 1, 2)),
    ],
)
@pytest.mark.parametrize("padding", ["SAME", "VALID"])
def test_conv_matches_lax(getkey, spatial, filter_shape, strides, dilation, padding):
    conv = nn.Conv(3, 4, filter_shape, strides, padding, dilation, 1.3, 0.2, key=getkey())
    x = jr.normal(getkey(), (3,) + spatial)
    expected = lax.conv_general_dilated(
        x[None], _raw_weight(conv), strides, padding, rhs_dilation=dilation
    )[0] + 0.2 * conv.bias.reshape((-1,) + (1,) * len(spatial))
    assert np.allclose(conv(x), expected, rtol=1e-12, atol=1e-12)


def _circular_conv_1d(x, w, stride, dilation):
    """Direct loop: SAME-sized output, indices wrapped modulo the length."""
    c_in, length = x.shape
    extent = (w.shape[-1] - 1) * dilation + 1
    total = max((math.ceil(length / stride) - 1) * stride + extent - length, 0)
    out_len = math.ceil(length / stride)
    y = np.zeros((w.shape[0], out_len))
    for o in range(out_len):
        for k in range(w.shape[-1]):
            i = (stride * o + dilation * k - total // 2) % length
            y[:, o] += w[:, :, k] @ x[:, i]
    return y


@pytest.mark.parametrize("length, f, stride, dilation", [(7, 3, 1, 1), (5, 4, 2, 1), (6, 2, 1, 3)])
def test_circular_conv_wraps_around(getkey, length, f, stride, dilation):
    conv = nn.Conv(2, 3, (f,), (stride,), "CIRCULAR", (dilation,), key=getkey())
    x = jr.normal(getkey(), (2, length))
    expected = _circular_conv_1d(np.asarray(x), np.asarray(_raw_weight(conv)), stride, dilation)
    assert np.allclose(conv(x), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "spatial, filter_shape, strides, dilation",
    [((5,), (3,), (2,), (1,)), ((4,), (2,), (3,), (1,)), ((3, 4), (3, 2), (2, 1), (2, 1))],
)
@pytest.mark.parametrize("padding", ["SAME", "VALID"])
def test_conv_transpose_matches_lax(getkey, spatial, filter_shape, strides, dilation, padding):
    layer = nn.ConvTranspose(2, 3, filter_shape, strides, padding, dilation, key=getkey())
    x = jr.normal(getkey(), (2,) + spatial)
    expected = lax.conv_transpose(
        x[None],
        _raw_weight(layer),
        strides,
        padding,
        rhs_dilation=dilation,
        dimension_numbers=lax.conv_dimension_numbers(
            (1, 2) + spatial,
            layer.weight.shape,
            (
                "NC" + "HWD"[: len(spatial)],
                "OI" + "HWD"[: len(spatial)],
                "NC" + "HWD"[: len(spatial)],
            ),
        ),
    )[0]
    assert np.allclose(layer(x), expected, rtol=1e-12, atol=1e-12)
    n, f, s = spatial[0], (filter_shape[0] - 1) * dilation[0] + 1, strides[0]
    assert layer(x).shape[1] == (n * s if padding == "SAME" else (n - 1) * s + max(f, s))


@pytest.mark.parametrize("length, f, stride", [(4, 3, 2), (3, 5, 1), (4, 2, 3), (2, 7, 2)])
def test_circular_conv_transpose_folds_valid_output(getkey, length, f, stride):
    layer = nn.ConvTranspose(2, 3, (f,), (stride,), "CIRCULAR", key=getkey())
    valid = nn.ConvTranspose(2, 3, (f,), (stride,), "VALID", key=getkey())
    valid = eqx.tree_at(lambda m: m.weight, valid, layer.weight)
    x = jr.normal(getkey(), (2, length))
    full = np.asarray(valid(x))
    out_len = length * stride
    offset = (full.shape[1] - out_len) // 2
    expected = np.zeros((3, out_len))
    for i in range(full.shape[1]):
        expected[:, (i - offset) % out_len] += full[:, i]
    assert np.allclose(layer(x), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("padding", ["SAME", "VALID", "CIRCULAR"])
def test_conv_local_is_a_conv_with_one_filter_per_position(getkey, padding):
    spatial, filter_shape, strides = (5, 4), (3, 2), (2, 1)
    layer = nn.ConvLocal(
        2,
        3,
        filter_shape,
        strides,
        padding,
        None,
        1.2,
        0.3,
        spatial_shape=spatial,
        key=getkey(),
    )
    x = jr.normal(getkey(), (2,) + spatial)
    y = layer(x)
    # Position by position, the layer is a `Conv` whose filter is that position's filter.
    conv = nn.Conv(2, 3, filter_shape, strides, padding, None, 1.2, 0.3, key=getkey())
    for o in itertools.product(*(range(s) for s in y.shape[1:])):
        w = layer.weight[(slice(None), slice(None)) + o].reshape((3, 2) + filter_shape)
        conv = eqx.tree_at(lambda m: (m.weight, m.bias), conv, (w, layer.bias[(slice(None),) + o]))
        assert np.allclose(y[(slice(None),) + o], conv(x)[(slice(None),) + o], rtol=1e-12)


def test_standard_parameterization_scales_the_stored_weights(getkey):
    key = getkey()
    ntk = nn.Conv(3, 4, (2, 2), W_std=1.5, b_std=0.5, key=key)
    std = nn.Conv(3, 4, (2, 2), W_std=1.5, b_std=0.5, parameterization="standard", key=key)
    x = jr.normal(getkey(), (3, 5, 5))
    assert np.allclose(ntk(x), std(x), rtol=1e-12)
    wide = nn.Conv(3, 4, (2, 2), parameterization="standard", s=(2, 3), key=key)
    assert wide.weight.shape == (12, 6, 2, 2)
    assert wide(jnp.ones((6, 5, 5))).shape == (12, 4, 4)


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


def test_bad_inputs_raise_clear_errors(getkey):
    with pytest.raises(ValueError, match="`filter_shape`.*larger than its input"):
        nn.Conv(2, 3, (5, 5), key=getkey())(jnp.ones((2, 4, 6)))
    with pytest.raises(ValueError, match="expects inputs with 2 channels.*shape \\(3, 6, 6\\)"):
        nn.Conv(2, 3, (3, 3), key=getkey())(jnp.ones((3, 6, 6)))
    with pytest.raises(ValueError, match="built for inputs with 2 spatial dimension.*\\(2, 6\\)"):
        nn.Conv(2, 3, (3, 3), key=getkey())(jnp.ones((2, 6)))
    with pytest.raises(ValueError, match="`strides` must be.*positive integers, got \\(1, -1\\)"):
        nn.Conv(2, 3, (3, 3), strides=(1, -1), key=getkey())
    with pytest.raises(ValueError, match="`strides` must be.*positive integers, got \\(0,\\)"):
        nn.AvgPool((2,), strides=(0,))
    with pytest.raises(ValueError, match="`strides` must have one entry per spatial dimension"):
        nn.ConvTranspose(2, 3, (3, 3), strides=(2,), key=getkey())
    # (Under the test suite's runtime type checks, the `Literal` annotation rejects it first.)
    with pytest.raises((ValueError, TypeError), match="padding"):
        nn.Conv(2, 3, (3,), padding="same", key=getkey())
    with pytest.raises(ValueError, match="`window_shape`.*larger than its input"):
        nn.AvgPool((4,))(jnp.ones((2, 3)))
    with pytest.raises(ValueError, match="built for inputs of spatial shape \\(5, 5\\)"):
        nn.ConvLocal(2, 3, (3, 3), spatial_shape=(5, 5), key=getkey())(jnp.ones((2, 6, 6)))
    with pytest.raises(ValueError, match="`in_channels` must be a positive integer"):
        nn.Conv(0, 3, (3,), key=getkey())


def _wide_resnet(key, width=8, n_classes=3):
    """A small WideResNet: a stem, two residual groups (the second strided), pooling, readout."""
    keys = iter(jr.split(key, 16))

    def block(c_in, c_out, stride):
        main = nn.Sequential(
            [
                nn.Relu(),
                nn.Conv(
                    c_in,
                    c_out,
                    (3, 3),
                    (stride, stride),
                    "SAME",
                    W_std=1.4,
                    b_std=0.1,
                    key=next(keys),
                ),
                nn.Relu(),
                nn.Conv(c_out, c_out, (3, 3), padding="SAME", W_std=1.4, b_std=0.1, key=next(keys)),
            ]
        )
        if stride == 1 and c_in == c_out:
            return nn.residual(main)
        shortcut = nn.Conv(c_in, c_out, (1, 1), (stride, stride), "SAME", key=next(keys))
        return nn.residual(main, shortcut)

    return nn.Sequential(
        [
            nn.Conv(3, width, (3, 3), padding="SAME", W_std=1.4, b_std=0.1, key=next(keys)),
            block(width, width, 1),
            block(width, 2 * width, 2),
            nn.AvgPool((2, 2), (2, 2)),
            nn.Relu(),
            nn.GlobalAvgPool(),
            nn.Dense(2 * width, n_classes, key=next(keys)),
        ]
    )


def test_wide_resnet_trains_under_vmap_and_grad(getkey):
    model = _wide_resnet(getkey())
    x = jr.normal(getkey(), (4, 3, 8, 8))
    y = jr.normal(getkey(), (4, 3))

    @eqx.filter_jit
    def step(model):
        def loss(m):
            return jnp.mean((jax.vmap(m)(x) - y) ** 2)

        value, grads = eqx.filter_value_and_grad(loss)(model)
        # Hyperparameters are frozen in the forward pass: their gradient is exactly zero.
        assert grads.layers[0].W_std is not None
        model = jax.tree_util.tree_map(lambda p, g: p - 0.05 * g, model, grads)
        return model, value, grads

    model, first, grads = step(model)
    assert grads.layers[0].W_std == 0 and grads.layers[0].b_std == 0
    assert jnp.any(grads.layers[0].weight != 0)
    for _ in range(5):
        model, value, _ = step(model)
    assert value < first
