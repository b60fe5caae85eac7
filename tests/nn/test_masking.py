"""Masked layers and variable-length inputs: masked positions never matter. Finite layers
holding a mask (zeros at masked inputs, means over unmasked positions, output masks); masks
through attention, in the finite network and the limit; masks through convolutions and pooling
(masks follow strides, averages count only unmasked positions) against neural-tangents and wide
finite CNNs; bad masks, and `Kernel.replace` never dropping masks silently."""

import equinox as eqx
import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import eqntk
from eqntk import nn
from tests.helpers import assert_kernel_ignores_masked_values, mc_kernels, relative_error
from tests.nn.test_conv import mc_tolerance


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


def _masks(lengths, length):
    """Masks of examples of the given `lengths`, padded to `length` positions."""
    return jnp.arange(length)[None, :] >= jnp.asarray(lengths)[:, None]


class _Masked(eqx.Module):
    """A network called on `(x, mask)` pairs: padded values zeroed, the mask bound to the layers
    by `nn.with_inputs`."""

    body: nn.Sequential

    def __call__(self, inputs, *, key=None):
        x, mask = inputs
        x = jnp.where(mask, 0.0, x)
        return nn.with_inputs(self.body, mask=mask)(x)


ATTENTION_LENGTH = 5


def _attention_body(key, width=64):
    k1, k2, k3 = jr.split(key, 3)
    return nn.Sequential(
        [
            nn.Dense(2, width, W_std=1.2, b_std=0.2, key=k1),
            nn.Relu(),
            nn.GlobalSelfAttention(width, width, width, width, heads=4, b_std=0.1, key=k2),
            nn.Relu(),
            nn.Dense(width, width, b_std=0.1, key=k3),
        ]
    )


@hypothesis.settings(max_examples=5, deadline=None)
@hypothesis.given(
    seed=st.integers(0, 2**16),
    lengths=st.lists(st.integers(1, ATTENTION_LENGTH), min_size=3, max_size=3),
)
def test_attention_kernel_ignores_masked_values(seed, lengths):
    key = jr.key(seed)
    x = jr.normal(key, (3, 2, ATTENTION_LENGTH))
    mask = _masks(lengths, ATTENTION_LENGTH)
    head = nn.Sequential(
        [
            _attention_body(jr.key(0)),
            nn.Relu(),
            nn.Flatten(),
            nn.Dense(64 * ATTENTION_LENGTH, 1, key=jr.key(1)),
        ]
    )
    assert_kernel_ignores_masked_values(eqntk.limit(head), x, mask, jr.fold_in(key, 1))


@hypothesis.settings(max_examples=5, deadline=None)
@hypothesis.given(seed=st.integers(0, 2**16), length=st.integers(1, ATTENTION_LENGTH))
def test_attention_finite_network_ignores_masked_values(seed, length):
    key = jr.key(seed)
    x = jr.normal(key, (2, ATTENTION_LENGTH))
    mask = jnp.arange(ATTENTION_LENGTH) >= length
    noise = jnp.where(mask, 100 * jr.normal(jr.fold_in(key, 1), x.shape), 0.0)
    model = nn.with_inputs(_attention_body(jr.key(0)), mask=mask)
    keep = ~mask
    np.testing.assert_allclose(model(x)[:, keep], model(x + noise)[:, keep], rtol=1e-10)


def test_masked_entries_are_zero(getkey):
    x = jr.normal(getkey(), (3, 2, ATTENTION_LENGTH))
    mask = _masks([2, 5, 3], ATTENTION_LENGTH)
    k = eqntk.limit(_attention_body(getkey()))(x, mask1=mask)
    assert (k.nngp[0, :, 2:, :] == 0).all() and (k.nngp[:, 0, :, 2:] == 0).all()
    assert (k.cov1[2, 3:, :] == 0).all()


@pytest.mark.slow  # masks through attention; test_cnn_monte_carlo is a default one
def test_attention_monte_carlo(getkey):
    x1, x2 = (
        jr.normal(getkey(), (2, 2, ATTENTION_LENGTH)),
        jr.normal(getkey(), (2, 2, ATTENTION_LENGTH)),
    )
    m1, m2 = _masks([3, 5], ATTENTION_LENGTH), _masks([4, 2], ATTENTION_LENGTH)
    exact = eqntk.limit(_attention_body(getkey()))(x1, x2, mask1=m1, mask2=m2)
    nngp, ntk = mc_kernels(lambda k: _Masked(_attention_body(k)), getkey(), (x1, m1), (x2, m2), 32)
    # Compare where both positions are real: the finite network's outputs at padded positions
    # are meaningless. 32 networks of width 64: ~4 standard errors at 0.15.
    keep = (~m1)[:, None, :, None] & (~m2)[None, :, None, :]
    assert relative_error(jnp.where(keep, nngp, 0), exact.nngp) < 0.15
    assert relative_error(jnp.where(keep, ntk, 0), exact.ntk) < 0.15


def test_attention_bad_masks(getkey):
    x = jr.normal(getkey(), (3, 2, ATTENTION_LENGTH))
    kernel_fn = eqntk.limit(_attention_body(getkey()))
    with pytest.raises(ValueError, match=r"`mask1` must have shape \(N, \*spatial\) = \(3, 5\)"):
        kernel_fn(x, mask1=jnp.zeros((3, 4), bool))
    with pytest.raises(TypeError, match="`mask1` must be a boolean array"):
        kernel_fn(x, mask1=jnp.zeros((3, 5)))
    with pytest.raises(ValueError, match="`mask2` must be None when `x2` is None"):
        kernel_fn(x, mask2=jnp.zeros((3, 5), bool))
    with pytest.raises(ValueError, match="`mask` must have the spatial shape"):
        nn.with_inputs(_attention_body(getkey()), mask=jnp.zeros(4, bool))(x[0])
    jax.block_until_ready(kernel_fn(x, mask1=jnp.zeros((3, 5), bool), get="nngp"))


def test_replace_never_drops_masks_silently():
    # A change that removes every position must say what becomes of the masks.
    n, length = 2, 3
    mask = jnp.arange(length)[None, :] >= jnp.array([[2], [3]])
    k = eqntk.Kernel(
        nngp=jnp.ones((n, n, length)),
        ntk=None,
        cov1=jnp.ones((n, length)),
        cov2=None,
        shape1=(4, length),
        shape2=(4, length),
        x1_is_x2=True,
        diagonal_spatial=True,
        mask1=mask,
    )
    flat = dict(nngp=jnp.ones((n, n)), cov1=jnp.ones(n), shape1=(12,), shape2=(12,))
    with pytest.raises(ValueError, match=r"has no positions left, but kept `mask1`"):
        k.replace(**flat)
    assert k.replace(**flat, mask1=None).mask1 is None
    assert k.replace(is_gaussian=True).mask1 is mask  # other changes keep the masks


CNN_LENGTH = 20


def _strided_cnn(key, width=8, d_out=1):
    """Conv SAME stride 2 (20 -> 10), Conv VALID stride 2 (-> 4), AvgPool stride 2 (-> 2)."""
    k1, k2, k3 = jr.split(key, 3)
    return nn.Sequential(
        [
            nn.Conv(2, width, (3,), (2,), "SAME", W_std=1.3, b_std=0.2, key=k1),
            nn.Relu(),
            nn.Conv(width, width, (3,), (2,), "VALID", W_std=1.1, b_std=0.1, key=k2),
            nn.Relu(),
            nn.AvgPool((2,), (2,), "SAME"),
            nn.GlobalAvgPool(),
            nn.Dense(width, d_out, W_std=1.2, b_std=0.05, key=k3),
        ]
    )


def _transpose_cnn(key, width=8):
    """Conv CIRCULAR stride 2 (20 -> 10), ConvTranspose SAME stride 2 (-> 20), SumPool VALID
    stride 2 (-> 9)."""
    k1, k2, k3 = jr.split(key, 3)
    return nn.Sequential(
        [
            nn.Conv(2, width, (3,), (2,), "CIRCULAR", W_std=1.3, b_std=0.2, key=k1),
            nn.Relu(),
            nn.ConvTranspose(width, width, (3,), (2,), "SAME", W_std=1.1, b_std=0.1, key=k2),
            nn.Relu(),
            nn.SumPool((3,), (2,), "VALID"),
            nn.GlobalAvgPool(),
            nn.Dense(width, 1, W_std=1.2, b_std=0.05, key=k3),
        ]
    )


def _reference_inputs():
    rng = np.random.default_rng(0)
    x1 = rng.normal(size=(3, 2, CNN_LENGTH))
    x2 = rng.normal(size=(2, 2, CNN_LENGTH))
    m1 = np.zeros((3, CNN_LENGTH), bool)
    m1[0, 14:], m1[1, 5:], m1[2, 3:7] = True, True, True  # two lengths and a hole
    m2 = np.zeros((2, CNN_LENGTH), bool)
    m2[1, 9:] = True
    return tuple(jnp.asarray(a) for a in (x1, x2, m1, m2))


# Produced by neural-tangents 0.6.5 (jax 0.4.23, float64) with the script in the docstring of
# `test_matches_neural_tangents`: (nngp, ntk) of `_strided_cnn` and `_transpose_cnn`.
REFERENCE = {
    "strided": (
        [
            [0.21745526883099495, 0.15210219186017201],
            [0.13498644355715006, 0.12634448077551458],
            [0.2852470439057362, 0.21530054562543904],
        ],
        [
            [0.3322798545762705, 0.16998931470364476],
            [0.16823998858353384, 0.15794406984903953],
            [0.4277228358935592, 0.2581482697992036],
        ],
    ),
    "transpose": (
        [
            [1.1723949499117858, 0.9354623123146272],
            [1.23307271975649, 1.0403469556982912],
            [1.1313133171056025, 0.8779815462836804],
        ],
        [
            [1.7272998530688848, 1.292975865656774],
            [1.6475694528103215, 1.3490316612181275],
            [1.6338248950485297, 1.1012700269685363],
        ],
    ),
}


@pytest.mark.parametrize("name, make", [("strided", _strided_cnn), ("transpose", _transpose_cnn)])
def test_matches_neural_tangents(name, make):
    """The reference values came from this script (neural-tangents' masks are set through
    `mask_constant`, at every channel of a masked position; its layers are channel-last):

    ```python
    import os; os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import jax; jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp, numpy as np
    from neural_tangents import stax
    x1, x2, m1, m2 = _reference_inputs()            # the same numpy arrays
    C = 1e9
    def nt_input(x, m):
        return jnp.asarray(np.moveaxis(np.where(m[:, None, :], C, x), 1, -1))
    strided = stax.serial(
        stax.Conv(8, (3,), strides=(2,), padding="SAME", W_std=1.3, b_std=0.2), stax.Relu(),
        stax.Conv(8, (3,), strides=(2,), padding="VALID", W_std=1.1, b_std=0.1), stax.Relu(),
        stax.AvgPool((2,), strides=(2,), padding="SAME"),
        stax.GlobalAvgPool(), stax.Dense(1, W_std=1.2, b_std=0.05))
    transpose = stax.serial(
        stax.Conv(8, (3,), strides=(2,), padding="CIRCULAR", W_std=1.3, b_std=0.2), stax.Relu(),
        stax.ConvTranspose(8, (3,), strides=(2,), padding="SAME", W_std=1.1, b_std=0.1),
        stax.Relu(), stax.SumPool((3,), strides=(2,), padding="VALID"),
        stax.GlobalAvgPool(), stax.Dense(1, W_std=1.2, b_std=0.05))
    for net in (strided, transpose):
        k = net[2](nt_input(x1, m1), nt_input(x2, m2), ("nngp", "ntk"), mask_constant=C)
        print(repr(np.asarray(k.nngp)), repr(np.asarray(k.ntk)))
    ```
    """
    x1, x2, m1, m2 = _reference_inputs()
    k = eqntk.limit(make(jr.key(0)))(x1, x2, ("nngp", "ntk"), mask1=m1, mask2=m2)
    nngp, ntk = REFERENCE[name]
    np.testing.assert_allclose(k.nngp, nngp, rtol=1e-9)
    np.testing.assert_allclose(k.ntk, ntk, rtol=1e-9)


@hypothesis.settings(max_examples=5, deadline=None)
@hypothesis.given(
    seed=st.integers(0, 2**16), lengths=st.lists(st.integers(1, CNN_LENGTH), min_size=3, max_size=3)
)
def test_cnn_kernel_ignores_masked_values(seed, lengths):
    key = jr.key(seed)
    x = jr.normal(key, (3, 2, CNN_LENGTH))
    mask = _masks(lengths, CNN_LENGTH)
    kernel_fn = eqntk.limit(_strided_cnn(jr.key(0)))
    assert_kernel_ignores_masked_values(kernel_fn, x, mask, jr.fold_in(key, 1))


@hypothesis.settings(max_examples=5, deadline=None)
@hypothesis.given(seed=st.integers(0, 2**16), length=st.integers(1, CNN_LENGTH))
def test_cnn_finite_network_ignores_masked_values(seed, length):
    key = jr.key(seed)
    x = jr.normal(key, (2, CNN_LENGTH))
    mask = jnp.arange(CNN_LENGTH) >= length
    noise = jnp.where(mask, 100 * jr.normal(jr.fold_in(key, 1), x.shape), 0.0)
    model = nn.with_inputs(_strided_cnn(jr.key(0), width=16, d_out=4), mask=mask)
    np.testing.assert_allclose(model(x), model(x + noise), rtol=1e-10)


def test_masks_follow_strides(getkey):
    """Masks after SAME and VALID strided layers are the input masks at the windows' centres,
    and every kernel entry at a masked position is zero."""
    x = jr.normal(getkey(), (3, 2, CNN_LENGTH))
    lengths = jnp.array([20, 7, 2])
    mask = _masks(lengths, CNN_LENGTH)
    body = _strided_cnn(getkey())[:5]  # up to the AvgPool
    for depth, size, centre in [(1, 10, lambda o: 2 * o + 1), (3, 4, lambda o: 4 * o + 3)]:
        k = eqntk.limit(body[:depth])(x, mask1=mask)
        # SAME, filter 3, stride 2, padding (0, 1): centre 2 o + 1; then VALID: 2 (2 o + 1) + 1.
        expected = centre(jnp.arange(size))[None, :] >= lengths[:, None]
        np.testing.assert_array_equal(k.mask1, expected)
        keep = ~expected
        pairs = keep[:, None, :, None] & keep[None, :, None, :]
        assert (k.nngp[~pairs] == 0).all() and (k.ntk[~pairs] == 0).all()
        assert (k.cov1[~(keep[:, :, None] & keep[:, None, :])] == 0).all()
        assert (k.nngp[pairs] != 0).all()
    k = eqntk.limit(body)(x, mask1=mask)  # AvgPool SAME stride 2 on 4: centres 0, 2
    np.testing.assert_array_equal(k.mask1, jnp.array([3, 11])[None, :] >= lengths[:, None])
    assert eqntk.limit(_strided_cnn(getkey()))(x, mask1=mask).mask1 is None


def test_conv_transpose_mask(getkey):
    """A transposed convolution masks the outputs that any masked input reaches."""
    up = nn.ConvTranspose(2, 4, (3,), (2,), "VALID", key=getkey())
    x = jr.normal(getkey(), (2, 2, 4))
    mask = _masks([4, 2], 4)
    k = eqntk.limit(up)(x, mask1=mask)
    # VALID: output 2 i + t (t < 3) reads input i; input 1 reaches outputs 2..4, input 2 4..6.
    assert k.mask1.shape == (2, 9)
    np.testing.assert_array_equal(k.mask1[1], jnp.arange(9) >= 4)
    assert not k.mask1[0].any()


def test_conv_local_masks(getkey):
    """`ConvLocal` maps masks as `Conv` does (from the diagonal layout it works in)."""
    local = nn.ConvLocal(
        2, 8, (3,), (2,), "SAME", b_std=0.1, spatial_shape=(CNN_LENGTH,), key=getkey()
    )
    model = nn.Sequential([local, nn.Relu(), nn.AvgPool((2,)), nn.GlobalAvgPool()])
    x = jr.normal(getkey(), (2, 2, CNN_LENGTH))
    mask = _masks([CNN_LENGTH, 6], CNN_LENGTH)
    noise = jnp.where(mask[:, None], 100 * jr.normal(getkey(), x.shape), 0.0)
    kernel_fn = eqntk.limit(model)
    np.testing.assert_allclose(kernel_fn(x, mask1=mask).ntk, kernel_fn(x + noise, mask1=mask).ntk)
    k = eqntk.limit(local)(x, mask1=mask)
    np.testing.assert_array_equal(
        k.mask1, eqntk.limit(_strided_cnn(getkey())[:1])(x, mask1=mask).mask1
    )


def test_diagonal_layout_is_the_diagonal_of_the_full_layout(getkey):
    body = _strided_cnn(getkey())[:4]
    x1, x2 = jr.normal(getkey(), (3, 2, CNN_LENGTH)), jr.normal(getkey(), (2, 2, CNN_LENGTH))
    m1, m2 = _masks([20, 9, 4], CNN_LENGTH), _masks([13, 1], CNN_LENGTH)
    kernel_fn = eqntk.limit(body)
    full = kernel_fn(x1, x2, mask1=m1, mask2=m2)
    diag = kernel_fn(x1, x2, mask1=m1, mask2=m2, diagonal_spatial=True)
    np.testing.assert_allclose(diag.nngp, jnp.diagonal(full.nngp, axis1=2, axis2=3), rtol=1e-12)
    np.testing.assert_allclose(diag.ntk, jnp.diagonal(full.ntk, axis1=2, axis2=3), rtol=1e-12)
    np.testing.assert_array_equal(diag.mask1, full.mask1)


def test_global_avg_pool_averages_unmasked_positions(getkey):
    """GlobalAvgPool divides by the unmasked counts: a mask after it equals cropping."""
    x = jr.normal(getkey(), (2, 3, 6))
    mask = _masks([6, 4], 6)
    k = eqntk.limit(nn.GlobalAvgPool())(x, mask1=mask)
    assert k.nngp[1, 1] == pytest.approx(float(jnp.mean(x[1, :, :4].mean(1) ** 2)), rel=1e-12)
    y = nn.with_inputs(nn.GlobalAvgPool(), mask=mask[1])(x[1])
    np.testing.assert_allclose(y, x[1, :, :4].mean(1), rtol=1e-12)
    everything = nn.with_inputs(nn.GlobalAvgPool(), mask=jnp.ones(6, bool))(x[1])
    assert (everything == 0).all()


def test_with_inputs_maps_masks_through_sequential(getkey):
    model = nn.with_inputs(
        nn.Parallel([_strided_cnn(getkey()), nn.Identity()]), mask=jnp.arange(CNN_LENGTH) >= 7
    )
    cnn = model.layers[0]
    expected = {0: 20, 2: 10, 4: 4, 5: 2}  # the input length of each masked layer
    for i, size in expected.items():
        assert cnn.layers[i].mask.shape == (size,)
    np.testing.assert_array_equal(cnn.layers[2].mask, 2 * jnp.arange(10) + 1 >= 7)
    np.testing.assert_array_equal(cnn.layers[4].mask, 4 * jnp.arange(4) + 3 >= 7)
    flat = nn.with_inputs(nn.Sequential([nn.Flatten(), nn.GlobalAvgPool()]), mask=jnp.ones(3, bool))
    assert flat.layers[1].mask is None


def test_cnn_monte_carlo(getkey):
    """Wide finite CNNs with masks bound by `with_inputs` agree with the limit."""
    _assert_monte_carlo(getkey, width=32, d_out=32, n_samples=16)


@pytest.mark.slow
def test_cnn_monte_carlo_closely(getkey):
    # The NNGP only: the Jacobians of networks this wide would not fit in memory. At this size
    # the tolerance is tight enough to tell the masked mean from the mean over all positions.
    _assert_monte_carlo(getkey, width=512, d_out=128, n_samples=64, with_ntk=False)


def _assert_monte_carlo(getkey, width, d_out, n_samples, with_ntk=True):
    x1, x2 = jr.normal(getkey(), (3, 2, CNN_LENGTH)), jr.normal(getkey(), (2, 2, CNN_LENGTH))
    m1, m2 = _masks([20, 8, 3], CNN_LENGTH), _masks([12, 5], CNN_LENGTH)

    def make(key):
        return _Masked(_strided_cnn(key, width, d_out))

    nngp, ntk = mc_kernels(make, getkey(), (x1, m1), (x2, m2), n_samples, with_ntk)
    k = eqntk.limit(_strided_cnn(getkey()))(x1, x2, mask1=m1, mask2=m2)
    n_draws = n_samples * d_out
    scale = jnp.sqrt(jnp.max(k.cov1) * jnp.max(k.cov2))
    tolerance = mc_tolerance(k.nngp, scale, n_samples, n_draws, width)
    assert jnp.max(jnp.abs(nngp - k.nngp)) < tolerance
    if ntk is None:
        # Power: a GlobalAvgPool that divided by all positions (a sum pool scaled by 1/2, the
        # number of positions it sees) must fall outside the tolerance.
        layers = _strided_cnn(jr.key(0)).layers
        dense = eqx.tree_at(lambda d: d.W_std, layers[-1], layers[-1].W_std / 2)
        all_positions = nn.Sequential(list(layers[:5]) + [nn.GlobalSumPool(), dense])
        wrong = eqntk.limit(all_positions)(x1, x2, get="nngp", mask1=m1, mask2=m2)
        assert jnp.max(jnp.abs(nngp - wrong)) > tolerance
        return
    # The empirical NTK averages over the hidden units: its fluctuation per draw is
    # O(1/sqrt(width)) of its scale, so the same bound with the NTK's scale is loose but sound.
    ntk_scale = jnp.max(jnp.abs(k.ntk))
    tolerance = mc_tolerance(k.ntk, ntk_scale, n_samples, n_draws, width)
    assert jnp.max(jnp.abs(ntk - k.ntk)) < tolerance


def test_cnn_bad_masks(getkey):
    x = jr.normal(getkey(), (3, 2, CNN_LENGTH))
    model = _strided_cnn(getkey())
    kernel_fn = eqntk.limit(model)
    with pytest.raises(
        ValueError,
        match=r"`mask1` must have shape \(N, \*spatial\) = \(3, 20\).*"
        r"per-channel masks are not supported",
    ):
        kernel_fn(x, mask1=jnp.zeros((3, 2, CNN_LENGTH), bool))
    with pytest.raises(ValueError, match=r"`mask1` must have shape \(N, \*spatial\) = \(3, 20\)"):
        kernel_fn(x, mask1=jnp.zeros((3, 19), bool))
    with pytest.raises(
        ValueError,
        match=r"The `mask` of this `Conv` layer must have the spatial "
        r"shape \(20,\) of its input .* got \(2, 20\)",
    ):
        nn.with_inputs(model, mask=jnp.zeros((2, CNN_LENGTH), bool))(x[0])
    with pytest.raises(ValueError, match=r"`Conv` layer must have the spatial shape \(20,\)"):
        nn.with_inputs(model, mask=jnp.zeros(19, bool))(x[0])
    with pytest.raises(ValueError, match="holds one example's mask .* `mask1=` / `mask2=`"):
        eqntk.limit(nn.with_inputs(model, mask=jnp.zeros(CNN_LENGTH, bool)))(x, mask1=x[:, 0] > 0)
    jax.block_until_ready(kernel_fn(x, mask1=jnp.zeros((3, CNN_LENGTH), bool), get="nngp"))
