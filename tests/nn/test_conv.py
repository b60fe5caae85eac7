"""Convolutions (`Conv`, `ConvTranspose`, `ConvLocal`): finite layers against `lax` and direct
loops, input errors and a WideResNet trained under `vmap` and `grad`; kernels against wide
finite CNNs, the diagonal spatial layout, symmetry and positive semi-definiteness, `jit`/`vmap`/
`grad` with respect to hyperparameters, and errors."""

import itertools
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from jax import lax

import eqntk
from eqntk import nn
from eqntk.limits import AbstractRule, Requirements, register, requirements
from tests.helpers import mc_kernels


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


def test_finite_layers_raise_clear_errors_on_bad_inputs(getkey):
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


def mc_tolerance(
    k: jax.Array, scale: jax.Array, n_samples: int, n_draws: int, width: int
) -> jax.Array:
    """Entrywise tolerance for a Monte Carlo estimate of the kernel `k`.

    `scale` bounds the variances `K11`, `K22` of the output entries. Sampling: each draw of
    `f(x1)_i f(x2)_j` has standard deviation `sqrt(K11_ii K22_jj + K12_ij^2) <= sqrt(2) scale`,
    so the mean of `n_draws` draws (samples times output channels) has standard deviation below
    `sqrt(2 / n_draws) scale`. The output channels of one network share its hidden layers,
    whose empirical kernel deviates from the limit by O(1/sqrt(width)) (about
    `sqrt(2 / width)` relative) and only averages over the `n_samples` networks. We allow 5
    standard deviations of each, plus an O(1/n) finite-width bias of `4/width`.
    """
    sampling = math.sqrt(2 / n_draws) + math.sqrt(2 / (width * n_samples))
    return 5 * sampling * scale + 4 / width * jnp.max(jnp.abs(k))


def assert_matches_monte_carlo(make, x1, x2, n_samples, width, d_out, key, with_ntk=False):
    nngp_mc, ntk_mc = mc_kernels(make, key, x1, x2, n_samples=n_samples, with_ntk=with_ntk)
    k = eqntk.limit(make(jr.key(0)))(x1, x2)
    n_draws = n_samples * d_out
    assert nngp_mc.shape == k.nngp.shape
    # The largest variance of one output entry (a covariance is largest on its diagonal).
    scale = jnp.sqrt(jnp.max(jnp.abs(k.cov1)) * jnp.max(jnp.abs(k.cov2_or_cov1)))
    err = jnp.max(jnp.abs(nngp_mc - k.nngp))
    assert err < mc_tolerance(k.nngp, scale, n_samples, n_draws, width), (err, scale)
    if with_ntk:
        # The empirical NTK averages over the hidden units, so its fluctuation per draw is
        # O(1/sqrt(width)) of its scale rather than O(1): this bound is loose but sound.
        ntk_scale = jnp.max(jnp.abs(k.ntk))
        tolerance = mc_tolerance(k.ntk, ntk_scale, n_samples, n_draws, width)
        assert jnp.max(jnp.abs(ntk_mc - k.ntk)) < tolerance


def _cnn_1d(key, filter_shape, strides, padding, dilation, width, d_out, head=None):
    k1, k2, k3 = jr.split(key, 3)
    layers = [
        nn.Conv(2, width, filter_shape, strides, padding, dilation, 1.4, 0.2, key=k1),
        nn.Relu(),
        nn.Conv(width, d_out, (2,), None, padding, None, 1.2, 0.1, key=k2),
    ]
    if head == "flatten":
        layers = layers[:-1] + [
            nn.Conv(width, width, (2,), None, padding, None, 1.2, 0.1, key=k2),
            nn.Erf(),
            nn.Flatten(),
        ]
    return nn.Sequential(layers)


def _diagonal_of_grid(first: list, second: list) -> list:
    """All pairs of `first` x `second`; off the diagonal marked slow (every value of each axis
    stays in the default run)."""
    return [
        pytest.param(*a, *b, marks=() if i == j else pytest.mark.slow)
        for i, a in enumerate(first)
        for j, b in enumerate(second)
    ]


@pytest.mark.parametrize(
    "padding, strides, dilation",
    _diagonal_of_grid(
        [("SAME",), ("VALID",), ("CIRCULAR",)], [((1,), (1,)), ((2,), (1,)), ((1,), (2,))]
    ),
)
def test_conv_1d_matches_wide_networks(getkey, padding, strides, dilation):
    # Output with a spatial axis: the full spatial covariance (N1, N2, L, L') is compared.
    width, d_out, n_samples = 256, 32, 8
    x1 = jr.normal(getkey(), (2, 2, 7))
    x2 = jr.normal(getkey(), (1, 2, 7))

    def make(key):
        return _cnn_1d(key, (3,), strides, padding, dilation, width, d_out)

    assert_matches_monte_carlo(make, x1, x2, n_samples, width, d_out, getkey())


def test_conv_1d_ntk_matches_wide_networks(getkey):
    width, d_out, n_samples = 96, 4, 8
    x1 = jr.normal(getkey(), (2, 2, 5))

    def make(key):
        return _cnn_1d(key, (3,), (1,), "SAME", (1,), width, d_out)

    assert_matches_monte_carlo(make, x1, None, n_samples, width, d_out, getkey(), with_ntk=True)


def _cnn_2d(key, padding, strides, width, d_out, head):
    k1, k2, k3 = jr.split(key, 3)
    body = [
        nn.Conv(3, width, (3, 2), strides, padding, None, 1.5, 0.1, key=k1),
        nn.Relu(),
        nn.Conv(width, width, (2, 2), None, padding, (1, 2), 1.3, 0.2, key=k2),
        nn.Relu(),
    ]
    pool = nn.Flatten() if head == "flatten" else nn.GlobalAvgPool()
    n_in = width * _flat_size(body, (3, 6, 5)) if head == "flatten" else width
    return nn.Sequential(body + [pool, nn.Dense(n_in, d_out, 1.2, 0.1, key=k3)])


def _flat_size(layers, shape):
    out = eqx.filter_eval_shape(nn.Sequential(layers), jax.ShapeDtypeStruct(shape, jnp.float64))
    return math.prod(out.shape[1:])


SLOW = pytest.mark.slow  # the other parametrizations cover the same code at a lower cost


@pytest.mark.parametrize(
    "head, padding, strides",
    [
        ("global_avg_pool", "SAME", (1, 1)),
        ("flatten", "CIRCULAR", (1, 2)),
        pytest.param("flatten", "SAME", (1, 1), marks=SLOW),
        pytest.param("flatten", "VALID", (2, 1), marks=SLOW),
        pytest.param("global_avg_pool", "VALID", (2, 1), marks=SLOW),
        pytest.param("global_avg_pool", "CIRCULAR", (1, 2), marks=SLOW),
    ],
)
def test_conv_2d_heads_match_wide_networks(getkey, head, padding, strides):
    width, d_out, n_samples = 128, 64, 8
    x1 = jr.normal(getkey(), (2, 3, 6, 5))
    x2 = jr.normal(getkey(), (2, 3, 6, 5))

    def make(key):
        return _cnn_2d(key, padding, strides, width, d_out, head)

    assert_matches_monte_carlo(make, x1, x2, n_samples, width, d_out, getkey())


@pytest.mark.slow
@pytest.mark.parametrize("head", ["flatten", "global_avg_pool"])
def test_conv_2d_heads_match_wide_networks_closely(getkey, head):
    width, d_out, n_samples = 512, 128, 64
    x1 = jr.normal(getkey(), (3, 3, 6, 5))

    def make(key):
        return _cnn_2d(key, "SAME", (1, 1), width, d_out, head)

    assert_matches_monte_carlo(make, x1, None, n_samples, width, d_out, getkey())


@pytest.mark.parametrize(
    "padding, filter_size, stride",
    _diagonal_of_grid([("SAME",), ("VALID",), ("CIRCULAR",)], [(3, 2), (2, 3), (4, 1)]),
)
def test_conv_transpose_matches_wide_networks(getkey, padding, filter_size, stride):
    width, d_out, n_samples = 256, 32, 8
    x1 = jr.normal(getkey(), (2, 2, 4))

    def make(key):
        k1, k2 = jr.split(key)
        return nn.Sequential(
            [
                nn.ConvTranspose(
                    2, width, (filter_size,), (stride,), padding, None, 1.3, 0.1, key=k1
                ),
                nn.Erf(),
                nn.ConvTranspose(width, d_out, (2,), (2,), padding, (2,), 1.2, 0.2, key=k2),
            ]
        )

    assert_matches_monte_carlo(make, x1, None, n_samples, width, d_out, getkey())


@pytest.mark.parametrize(
    "padding", ["CIRCULAR", pytest.param("SAME", marks=SLOW), pytest.param("VALID", marks=SLOW)]
)
def test_conv_local_matches_wide_networks(getkey, padding):
    width, d_out, n_samples = 256, 32, 8
    x1 = jr.normal(getkey(), (2, 2, 5, 4))

    def make(key):
        k1, k2 = jr.split(key)
        first = nn.ConvLocal(
            2, width, (3, 2), (1, 1), padding, None, 1.3, 0.2, spatial_shape=(5, 4), key=k1
        )
        shape = first(x1[0]).shape[1:]
        return nn.Sequential(
            [
                first,
                nn.Relu(),
                nn.ConvLocal(
                    width,
                    d_out,
                    (2, 2),
                    (2, 1),
                    padding,
                    None,
                    1.1,
                    0.3,
                    spatial_shape=shape,
                    key=k2,
                ),
            ]
        )

    assert_matches_monte_carlo(make, x1, None, n_samples, width, d_out, getkey())


class _Probe(eqx.Module):
    """An identity layer whose rule records the shape of the kernel passing through it."""

    def __call__(self, x, *, key=None):
        return x


SEEN_SHAPES: list[tuple[int, ...]] = []


@register(_Probe)
class _ProbeRule(AbstractRule):
    def requirements(self, layer, wanted):
        return wanted

    def __call__(self, layer, k, wanted):
        SEEN_SHAPES.append(k.nngp.shape)
        return k


def _probed_cnn(key, head):
    k1, k2, k3 = jr.split(key, 3)
    return nn.Sequential(
        [
            nn.Conv(3, 8, (3, 3), padding="SAME", W_std=1.4, b_std=0.1, key=k1),
            nn.Relu(),
            nn.Conv(8, 8, (3, 3), padding="SAME", W_std=1.4, b_std=0.1, key=k2),
            _Probe(),
            nn.Relu(),
            head,
            nn.Dense(8 * 6 * 6 if isinstance(head, nn.Flatten) else 8, 1, key=k3),
        ]
    )


def test_flatten_head_uses_the_diagonal_layout(getkey):
    x = jr.normal(getkey(), (2, 3, 6, 6))
    flat = _probed_cnn(getkey(), nn.Flatten())
    # The requirements pass asks every conv below `Flatten` for the spatial diagonal only.
    assert requirements(flat, Requirements()).diagonal_spatial
    SEEN_SHAPES.clear()
    k_diag = eqntk.limit(flat)(x)
    assert SEEN_SHAPES == [(2, 2, 6, 6)]
    # ... while pooling needs the full covariance.
    SEEN_SHAPES.clear()
    eqntk.limit(_probed_cnn(getkey(), nn.GlobalAvgPool()))(x)
    assert SEEN_SHAPES == [(2, 2, 6, 6, 6, 6)]
    # Continuing from a full-layout kernel of the body gives the same numbers.
    body, head = flat[:4], flat[4:]
    k_body = eqntk.limit(body)(x)
    assert k_body.nngp.shape == (2, 2, 6, 6, 6, 6)
    k_full = eqntk.limit(head)(k_body)
    assert np.allclose(k_full.nngp, k_diag.nngp, rtol=1e-12)
    assert np.allclose(k_full.ntk, k_diag.ntk, rtol=1e-12)


@pytest.mark.parametrize(
    "layer",
    [
        lambda key: nn.Conv(3, 8, (3, 2), (2, 1), "SAME", (1, 2), 1.3, 0.1, key=key),
        lambda key: nn.Conv(
            3, 8, (2, 3), None, "CIRCULAR", b_std=0.2, parameterization="standard", key=key
        ),
        lambda key: nn.ConvTranspose(3, 8, (3, 2), (2, 2), "SAME", None, 1.1, 0.3, key=key),
        lambda key: nn.ConvTranspose(3, 8, (2, 2), (2, 3), "CIRCULAR", None, 1.1, 0.3, key=key),
        lambda key: nn.ConvLocal(
            3, 8, (2, 2), padding="SAME", b_std=0.1, spatial_shape=(5, 4), key=key
        ),
    ],
)
def test_diagonal_layout_is_the_diagonal_of_the_full_layout(getkey, layer):
    model = nn.Sequential(
        [layer(getkey()), nn.Relu(), nn.Conv(8, 4, (2, 2), b_std=0.1, key=getkey())]
    )
    x1 = jr.normal(getkey(), (2, 3, 5, 4))
    x2 = jr.normal(getkey(), (3, 3, 5, 4))
    kernel_fn = eqx.filter_jit(eqntk.limit(model))  # one compilation, not op-by-op dispatch
    full = kernel_fn(x1, x2)
    diag = kernel_fn(x1, x2, diagonal_spatial=True)
    for name in ("nngp", "ntk", "cov1", "cov2"):
        a = getattr(full, name)
        lead = a.ndim - 4
        want = jnp.diagonal(jnp.diagonal(a, axis1=lead, axis2=lead + 1), axis1=lead, axis2=lead + 1)
        assert np.allclose(getattr(diag, name), want, rtol=1e-12, atol=1e-14), name


def _assert_symmetric_psd(a: jax.Array) -> None:
    n = a.shape[0]
    # Group each example's spatial axes together: a (N * S) x (N * S) matrix.
    n_sp = (a.ndim - 2) // 2
    perm = (
        (0,) + tuple(2 + 2 * i for i in range(n_sp)) + (1,) + tuple(3 + 2 * i for i in range(n_sp))
    )
    m = jnp.transpose(a, perm).reshape(n * math.prod(a.shape[2::2]), -1)
    assert np.allclose(m, m.T, rtol=1e-12, atol=1e-14)
    assert jnp.min(jnp.linalg.eigvalsh(m)) > -1e-10 * jnp.max(jnp.abs(m))


def test_kernels_are_symmetric_and_psd(getkey):
    model = nn.Sequential(
        [
            nn.Conv(2, 8, (3,), (2,), "CIRCULAR", None, 1.4, 0.1, key=getkey()),
            nn.Relu(),
            nn.ConvTranspose(8, 8, (3,), (2,), "SAME", None, 1.2, 0.2, key=getkey()),
            nn.Relu(),
            nn.ConvLocal(8, 8, (2,), spatial_shape=(8,), b_std=0.3, key=getkey()),
        ]
    )
    x = jr.normal(getkey(), (3, 2, 8))
    k = eqntk.limit(model)(x)
    _assert_symmetric_psd(k.nngp)
    _assert_symmetric_psd(k.ntk)


def test_jit_vmap_and_grad_with_respect_to_W_std(getkey):
    x = jr.normal(getkey(), (2, 3, 5, 5))
    model = _cnn_2d(getkey(), "SAME", (1, 1), 8, 1, "global_avg_pool")
    kernel_fn = eqntk.limit(model)
    assert np.allclose(eqx.filter_jit(kernel_fn)(x, get="ntk"), kernel_fn(x, get="ntk"))

    def nngp_sum(w):
        m = eqx.tree_at(lambda m: m.layers[2].W_std, model, w)
        return eqntk.limit(m)(x, get="nngp").sum()

    nngp_sum = jax.jit(nngp_sum)  # eager evaluation of a CNN kernel is dispatch-bound
    w0 = jnp.asarray(1.3)
    grad = jax.grad(nngp_sum)(w0)
    eps = 1e-5
    assert np.isclose(grad, (nngp_sum(w0 + eps) - nngp_sum(w0 - eps)) / (2 * eps), rtol=1e-6)
    batch = jax.vmap(nngp_sum)(jnp.array([1.0, 1.3, 2.0]))
    assert np.isclose(batch[1], nngp_sum(w0), rtol=1e-12)


def test_bad_inputs_raise_clear_errors(getkey):
    x = jr.normal(getkey(), (2, 3, 4, 4))
    with pytest.raises(ValueError, match="`Conv` was built for 2 input channels.*`x1` has 3"):
        eqntk.limit(nn.Conv(2, 4, (3, 3), key=getkey()))(x)
    with pytest.raises(
        ValueError, match="2 spatial dimension.*`x1` has per-example shape \\(3, 4\\)"
    ):
        eqntk.limit(nn.Conv(3, 4, (3, 3), key=getkey()))(x[:, :, 0])
    with pytest.raises(ValueError, match="`filter_shape` \\(5, 5\\).*larger than its input"):
        eqntk.limit(nn.Conv(3, 4, (5, 5), key=getkey()))(x)
    with pytest.raises(ValueError, match="needs Gaussian inputs"):
        eqntk.limit(nn.Sequential([nn.GlobalAvgPool(), nn.Relu()]))(x)
