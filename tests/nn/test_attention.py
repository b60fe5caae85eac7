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
        # Softmax attention is also checked by the golden cases by default.
        pytest.param("softmax", marks=pytest.mark.slow),
        # Also covered by the golden case attention_relu_posemb_sum_expdecay; the identity
        # attention's Monte Carlo test stays in the default run.
        pytest.param("relu_sum_exp", marks=pytest.mark.slow),
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
    # The NNGP only: explicit Jacobians of 128 networks this wide would need hundreds of GB
    # (the NTK is checked against narrower networks by `test_monte_carlo`).
    nngp, _ = mc_kernels(
        lambda k: _net(k, config, width=256), getkey(), x1, x2, 128, with_ntk=False
    )
    # Width 256, 128 networks: standard error ~ 1/sqrt(128 * 256) ~ 0.006; 0.03 is generous
    # for the O(1/width) bias of the finite logits.
    assert relative_error(nngp, exact.nngp) < 0.03


# Square-root scaling (`linear_scaling=False`) with identity attention: the closed form of
# neural-tangents 0.6.5. The references below were printed (12 significant digits, row-major)
# by this script, run with neural-tangents 0.6.5 on jax 0.4.23 (TF_CPP_MIN_LOG_LEVEL=3):
#
#   import jax, jax.numpy as jnp, numpy as np
#   from neural_tangents import stax
#   jax.config.update("jax_enable_x64", True)
#   def inputs(n, c, spatial, phase):  # channel-first, as eqntk
#       size = n * c * int(np.prod(spatial))
#       return np.sin(0.7 * np.arange(size) + phase).reshape((n, c) + tuple(spatial))
#   CASES = {
#       "plain": dict(spatial=(3,), n2=2, attn=dict(b_std=0.3)),
#       "sum_decay": dict(spatial=(2, 2), n2=None, attn=dict(
#           pos_emb_type="SUM", pos_emb_decay_fn=lambda d: jnp.exp(-0.5 * d),
#           pos_emb_p_norm=1.5, W_pos_emb_std=0.7)),
#       "concat_values": dict(spatial=(3,), n2=2, attn=dict(
#           pos_emb_type="CONCAT", n_chan_pos_emb=4, val_pos_emb=True, W_pos_emb_std=1.3,
#           b_std=0.2)),
#   }
#   for name, case in CASES.items():
#       x1 = inputs(2, 2, case["spatial"], 0.1)
#       x2 = None if case["n2"] is None else inputs(case["n2"], 2, case["spatial"], 1.3)
#       _, _, kernel_fn = stax.serial(
#           stax.Dense(8, W_std=1.2, b_std=0.1),
#           stax.GlobalSelfAttention(8, 16, 16, 2, linear_scaling=False,
#               attention_mechanism="IDENTITY", W_key_std=1.1, W_query_std=0.8,
#               W_value_std=1.2, W_out_std=0.9, **case["attn"]))
#       last = lambda x: None if x is None else jnp.moveaxis(jnp.asarray(x), 1, -1)
#       k = kernel_fn(last(x1), last(x2), get=("nngp", "ntk", "cov1", "cov2"))
#       for field in ("nngp", "ntk", "cov1", "cov2"):
#           a = getattr(k, field)
#           if a is not None:
#               print(name, field, a.shape, " ".join(f"{v:.12g}" for v in np.ravel(a)))
SQRT_CASES = {
    "plain": dict(spatial=(3,), n2=2, attn=dict(b_std=0.3)),
    "sum_decay": dict(
        spatial=(2, 2),
        n2=None,
        attn=dict(
            pos_emb="sum",
            pos_emb_decay=lambda d: jnp.exp(-0.5 * d),
            pos_emb_p_norm=1.5,
            W_pos_emb_std=0.7,
        ),
    ),
    "concat_values": dict(
        spatial=(3,),
        n2=2,
        attn=dict(
            pos_emb="concat", pos_emb_channels=4, val_pos_emb=True, W_pos_emb_std=1.3, b_std=0.2
        ),
    ),
}
NT_REFERENCE = {
    "plain": {
        "nngp": (
            (2, 2, 3, 3),
            """
            -0.0769097521397 -0.873047324117 -1.20495276375 1.20359528726 0.903464270283
            0.232044224046 1.97165499043 2.30868683542 1.61353152155 0.883727639438 0.893550143045
            0.532591879602 -0.194972640261 0.275996190544 0.666629527707 -1.13250441338
            -0.421893255599 0.536610719888 -3.01246207206 -3.06726537249 -1.61460665815
            -3.69497070938 -4.93152215344 -3.78382248884 -2.57479770383 -4.41152782573
            -4.10856829643 1.71477120357 0.500159017024 -0.893629011975 3.02397836576 1.6688069491
            -0.415173693084 2.96701801002 2.10864565565 0.314601059389
            """,
        ),
        "ntk": (
            (2, 2, 3, 3),
            """
            -1.07836826498 -6.65133126882 -8.97466934626 7.8851670108 5.78424989198 1.08430956832
            13.261584933 15.6208078479 10.7547206509 5.64609347607 5.71485100131 3.18814315721
            -1.90480848183 1.39197333381 4.12640669395 -8.46753089368 -3.49325278919 3.21627503922
            -21.6272345044 -22.0108576074 -11.8422466071 -26.4047949656 -35.0606550741
            -27.0267574219 -18.5635839268 -31.4206947801 -29.299978075 11.463398425 2.96111311917
            -6.79540308382 20.6278485603 11.1416486437 -3.44621585159 20.2291260701 14.2205195895
            1.66220741573
            """,
        ),
        "cov1": (
            (2, 3, 3),
            """
            0.845181575655 0.400909813931 -0.182306794627 0.400909813931 0.742866835939
            0.785051280436 -0.182306794627 0.785051280436 1.43279677459 3.17781200044 3.57161353243
            2.35122653935 3.57161353243 5.30795120464 4.6134736135 2.35122653935 4.6134736135
            4.77152908693
            """,
        ),
        "cov2": (
            (2, 3, 3),
            """
            3.83257010748 4.17249043588 2.6166135663 4.17249043588 5.69953311334 4.61258656091
            2.6166135663 4.61258656091 4.50577827324 2.57115415231 1.70992320024 0.0980057339321
            1.70992320024 1.51973590881 0.668310158064 0.0980057339321 0.668310158064 0.977814957348
            """,
        ),
    },
    "sum_decay": {
        "nngp": (
            (2, 2, 2, 2, 2, 2),
            """
            5.77076704318 2.9731544106 2.9731544106 10.6441991048 2.32647098209 0.875438530789
            10.4954239707 10.8421130979 2.32647098209 10.4954239707 0.875438530789 10.8421130979
            19.1598412206 15.9993990946 15.9993990946 17.1811678797 4.75263014837 2.81338210291
            -1.84105511089 3.88802449004 2.23167376122 0.819277870469 5.66335276781 8.87757693373
            -4.88814611714 1.00891555401 -5.41736213341 1.75775705537 10.5339276626 12.9795163408
            8.32507912701 13.6577036693 4.75263014837 -1.84105511089 2.81338210291 3.88802449004
            -4.88814611714 -5.41736213341 1.00891555401 1.75775705537 2.23167376122 5.66335276781
            0.819277870469 8.87757693373 10.5339276626 8.32507912701 12.9795163408 13.6577036693
            7.88956963002 2.60749888357 2.60749888357 3.65563581357 -1.64085750036 -4.93293958508
            1.19279424639 1.6276683571 -1.64085750036 1.19279424639 -4.93293958508 1.6276683571
            6.92416167102 7.60731181559 7.60731181559 12.2691794904
            """,
        ),
        "ntk": (
            (2, 2, 2, 2, 2, 2),
            """
            40.3953693023 20.8120808742 20.8120808742 74.5093937337 16.2852968746 6.12806971552
            73.4679677947 75.8947916852 16.2852968746 73.4679677947 6.12806971552 75.8947916852
            134.118888544 111.995793662 111.995793662 120.268175158 33.2684110386 19.6936747204
            -12.8873857762 27.2161714303 15.6217163285 5.73494509328 39.6434693747 62.1430385361
            -34.21702282 7.06240887805 -37.9215349339 12.3042993876 73.7374936379 90.8566143857
            58.2755538891 95.6039256853 33.2684110386 -12.8873857762 19.6936747204 27.2161714303
            -34.21702282 -37.9215349339 7.06240887805 12.3042993876 15.6217163285 39.6434693747
            5.73494509328 62.1430385361 73.7374936379 58.2755538891 90.8566143857 95.6039256853
            55.2269874101 18.252492185 18.252492185 25.589450695 -11.4860025025 -34.5305770956
            8.34955972471 11.3936784997 -11.4860025025 8.34955972471 -34.5305770956 11.3936784997
            48.4691316971 53.2511827091 53.2511827091 85.8842564331
            """,
        ),
        "cov1": (
            (2, 2, 2, 2, 2),
            """
            5.77076704318 2.9731544106 2.9731544106 10.6441991048 2.32647098209 0.875438530789
            10.4954239707 10.8421130979 2.32647098209 10.4954239707 0.875438530789 10.8421130979
            19.1598412206 15.9993990946 15.9993990946 17.1811678797 7.88956963002 2.60749888357
            2.60749888357 3.65563581357 -1.64085750036 -4.93293958508 1.19279424639 1.6276683571
            -1.64085750036 1.19279424639 -4.93293958508 1.6276683571 6.92416167102 7.60731181559
            7.60731181559 12.2691794904
            """,
        ),
    },
    "concat_values": {
        "nngp": (
            (2, 2, 3, 3),
            """
            1.35339190599 -0.639085524737 -0.873126131042 0.825243280422 2.04469522078
            0.140161408486 1.36683476144 1.60449021364 2.54539376367 2.02055421695 0.806310109204
            0.462080232984 -0.231765759696 1.44098770576 0.58990598928 -1.12584820329 -0.44816987962
            1.68952421611 0.204615377887 -0.50757373143 -0.255634898656 -0.616438496664
            -0.128212802714 -0.631848319624 -0.422163628976 -0.740713084858 0.014514482171
            2.80032042309 0.31672648346 -0.623635775919 2.01949936977 2.7693092153 -0.300831077268
            1.9810693017 1.40194180904 1.85565227205
            """,
        ),
        "ntk": (
            (2, 2, 3, 3),
            """
            9.23374334195 -4.71359867316 -6.35188291729 5.53670296295 14.0728665454 0.741129859402
            9.32784333008 10.9914314955 17.5777563457 13.9038795187 5.40417076443 2.99456163089
            -1.86236031787 9.84691394035 3.88934192496 -8.12093742303 -3.37718915734 11.5866695128
            1.19230764521 -3.79301612001 -2.02944429059 -4.55506947665 -1.137489619 -4.66293823737
            -3.19514540283 -5.42499159401 -0.138398624803 19.3622429616 1.97708538422 -4.60545043143
            13.8964955884 19.1451645071 -2.34581754088 13.6274851119 9.57359266327 12.7495659044
            """,
        ),
        "cov1": (
            (2, 3, 3),
            """
            2.48663190842 0.408669701591 -0.28289512977 0.408669701591 2.3653094449 0.864175811333
            -0.28289512977 0.864175811333 3.18341248702 4.78012618131 2.31054565887 1.51466628757
            2.31054565887 6.16930343427 2.98999812025 1.51466628757 2.98999812025 5.81947399475
            """,
        ),
        "cov2": (
            (2, 3, 3),
            """
            5.2366400083 2.65864319314 1.660652766 2.65864319314 6.43417128092 2.94093527446
            1.660652766 2.94093527446 5.66845779416 4.17559242681 1.53159800453 0.0473715449944
            1.53159800453 3.20746421326 0.572498255252 0.0473715449944 0.572498255252 2.70847252668
            """,
        ),
    },
}


def _sin_inputs(n, c, spatial, phase):
    size = n * c * int(np.prod(spatial))
    return jnp.asarray(np.sin(0.7 * np.arange(size) + phase).reshape((n, c) + tuple(spatial)))


def _sqrt_net(key, spatial, attn):
    k1, k2 = jr.split(key)
    return nn.Sequential(
        [
            nn.Dense(2, 8, W_std=1.2, b_std=0.1, key=k1),
            nn.GlobalSelfAttention(
                8,
                8,
                key_dim=16,
                value_dim=16,
                heads=2,
                linear_scaling=False,
                attention="identity",
                W_key_std=1.1,
                W_query_std=0.8,
                W_value_std=1.2,
                W_out_std=0.9,
                spatial_shape=spatial,
                key=k2,
                **attn,
            ),
        ]
    )


@pytest.mark.parametrize("name", list(SQRT_CASES))
def test_sqrt_identity_matches_neural_tangents(name, getkey):
    case = SQRT_CASES[name]
    x1 = _sin_inputs(2, 2, case["spatial"], 0.1)
    x2 = None if case["n2"] is None else _sin_inputs(case["n2"], 2, case["spatial"], 1.3)
    kernel_fn = eqntk.limit(_sqrt_net(getkey(), case["spatial"], case["attn"]))
    k = kernel_fn(x1, x2)
    assert k.is_gaussian
    for field, (shape, text) in NT_REFERENCE[name].items():
        expected = np.array(text.split(), dtype=np.float64).reshape(shape)
        np.testing.assert_allclose(getattr(k, field), expected, rtol=1e-6, atol=1e-10)
    # Without the NTK the NNGP is the same (the NTK is computed only when asked for).
    np.testing.assert_allclose(kernel_fn(x1, x2, "nngp"), k.nngp, rtol=1e-12)


def _correlated_inputs(key, channels):
    """Two batches sharing a common component, so that the cross kernel is far from zero."""
    ku, k1, k2 = jr.split(key, 3)
    common = jr.normal(ku, (1, channels, 4))
    return (
        common + 0.7 * jr.normal(k1, (2, channels, 4)),
        common + 0.7 * jr.normal(k2, (3, channels, 4)),
    )


def _sqrt_layer(key, channels, out, heads, dim, **kwargs):
    return nn.GlobalSelfAttention(
        channels,
        out,
        key_dim=dim,
        value_dim=dim,
        heads=heads,
        linear_scaling=False,
        attention="identity",
        W_key_std=1.1,
        W_out_std=0.9,
        b_std=0.2,
        key=key,
        **kwargs,
    )


# The same kernels are checked against neural-tangents by test_sqrt_identity_matches_neural_
# tangents, and attention keeps a default Monte Carlo run (test_monte_carlo).
@pytest.mark.slow
def test_sqrt_identity_monte_carlo(getkey):
    # On fixed inputs the finite network's mean NNGP and NTK equal the limit exactly (queries,
    # keys and values are independent, so E[G G v v] factorises at any width); the error is
    # pure sampling noise. The logits are products of Gaussians and the outputs products of
    # three or four, so one head's estimate is heavy-tailed: measured per-network relative RMS
    # deviations are 0.31 for the NNGP (128 heads, 256 outputs) and 0.24 for the NTK (32
    # heads, 16 outputs). Over 64 and 32 networks the standard errors are ~0.04: 0.15 is
    # ~3.5 of them.
    x1, x2 = _correlated_inputs(getkey(), 16)
    exact = eqntk.limit(_sqrt_layer(getkey(), 16, 16, 32, 8))(x1, x2)
    nngp, _ = mc_kernels(
        lambda k: _sqrt_layer(k, 16, 256, 128, 32), getkey(), x1, x2, 64, with_ntk=False
    )
    assert relative_error(nngp, exact.nngp) < 0.15
    _, ntk = mc_kernels(lambda k: _sqrt_layer(k, 16, 16, 32, 8), getkey(), x1, x2, 32, batch=4)
    assert relative_error(ntk, exact.ntk) < 0.15


@pytest.mark.slow
def test_sqrt_identity_monte_carlo_gaussian(getkey):
    # A ReLU after the layer: its kernel assumes Gaussian attention outputs, which holds as the
    # number of heads grows (the central limit theorem over heads). 128 heads, embeddings,
    # and a hidden layer of width 256 in front (an O(1/256) bias of the cubic kernel map).
    width = 256

    def net(key):
        k1, k2, k3 = jr.split(key, 3)
        return nn.Sequential(
            [
                nn.Dense(16, width, W_std=1.2, b_std=0.1, key=k1),
                _sqrt_layer(
                    k2,
                    width,
                    width,
                    128,
                    32,
                    pos_emb="sum",
                    pos_emb_decay=lambda d: jnp.exp(-0.5 * d),
                    W_pos_emb_std=0.7,
                    spatial_shape=(4,),
                ),
                nn.Relu(),
                nn.Dense(width, width, key=k3),
            ]
        )

    x1, x2 = _correlated_inputs(getkey(), 16)
    exact = eqntk.limit(net(getkey()))(x1, x2, "nngp")
    nngp, _ = mc_kernels(net, getkey(), x1, x2, 128, with_ntk=False)
    # Two seeds gave errors 0.020 and 0.026 (the embeddings, one draw of 256 channels per
    # network, dominate the spread): a standard error ~0.025 over 128 networks; 0.08 is ~3.
    assert relative_error(nngp, exact) < 0.08


def test_sqrt_identity_mask_drops_positions(getkey):
    # Masked keys contribute nothing: on the unmasked positions the kernel is that of the
    # sequences without them.
    x1, x2 = _correlated_inputs(getkey(), 3)
    layer = _sqrt_layer(getkey(), 3, 4, 1, 1)
    mask1 = jnp.array([[False, False, False, True], [False, False, True, True]])
    mask2 = jnp.zeros((3, 4), bool).at[:, 3].set(True)
    masked = eqntk.limit(layer)(x1, x2, mask1=mask1, mask2=mask2)
    short = eqntk.limit(layer)(x1[:1, :, :3], x2[:, :, :3])
    np.testing.assert_allclose(masked.nngp[:1, :, :3, :3], short.nngp, rtol=1e-12)
    np.testing.assert_allclose(masked.ntk[:1, :, :3, :3], short.ntk, rtol=1e-12)
    assert jnp.all(masked.nngp[:, :, 3, :] == 0)


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
    with pytest.raises(NotImplementedError, match="linear_scaling=False.*attention='softmax'"):
        eqntk.limit(layer)(x)
    with pytest.raises(ValueError, match="built for 4 input channels"):
        eqntk.limit(nn.GlobalSelfAttention(4, 4, 4, 4, 1, key=key))(jnp.ones((2, 3, 5)))
