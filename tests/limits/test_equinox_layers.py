"""Kernel rules of the stock `equinox.nn` layers (their own uniform initialisation)."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import pytest

import eqntk
from eqntk.limits._spatial import gram
from tests.helpers import _sample_kernels
from tests.limits.eqx_witness import LrScaled, check_against_monte_carlo


def _x(key, shape):
    return jr.normal(key, shape)


def test_linear_kernel_is_the_uniform_init_formula(getkey):
    x1, x2 = _x(getkey(), (3, 5)), _x(getkey(), (2, 5))
    for use_bias in (True, False):
        lin = eqx.nn.Linear(5, 7, use_bias=use_bias, key=getkey())
        k = eqntk.limit(lin)(x1, x2)
        b = 1 / 5 if use_bias else 0.0
        # Var(W) = Var(b) = (2 / sqrt(5))^2 / 12 = 1 / 15 for U(-1/sqrt(5), 1/sqrt(5)).
        expected = (x1 @ x2.T) / 15 + b / 3
        assert jnp.allclose(k.nngp, expected, rtol=1e-12)
        # The fan-in-normalised NTK of one layer is deterministic: (x . x' + 1) / fan_in.
        _, ntk = _sample_kernels(LrScaled(lin), x1, x2, True)
        assert jnp.allclose(k.ntk, ntk, rtol=1e-12)
        assert k.shape1 == (7,)


def test_linear_scalar_in_and_out(getkey):
    x = _x(getkey(), (4, 1))
    lin = eqx.nn.Linear("scalar", "scalar", key=getkey())
    k = eqntk.limit(lin)(x)
    assert jnp.allclose(k.nngp, (x @ x.T) / 3 + 1 / 3, rtol=1e-12)
    assert k.shape1 == (1,)


_CONVS = [
    lambda key: eqx.nn.Conv1d(2, 3, 3, key=key),
    lambda key: eqx.nn.Conv1d(2, 3, 3, stride=2, padding=((2, 1),), dilation=2, key=key),
    lambda key: eqx.nn.Conv1d(2, 3, 3, padding="SAME", padding_mode="CIRCULAR", key=key),
    lambda key: eqx.nn.Conv1d(2, 3, 4, padding=2, padding_mode="REFLECT", key=key),
    lambda key: eqx.nn.Conv1d(4, 6, 3, padding=1, groups=2, use_bias=False, key=key),
    lambda key: eqx.nn.ConvTranspose1d(2, 3, 3, stride=2, padding=1, output_padding=1, key=key),
    lambda key: eqx.nn.ConvTranspose1d(
        2, 3, 3, stride=2, padding="SAME", padding_mode="CIRCULAR", key=key
    ),
    lambda key: eqx.nn.Conv2d(2, 3, (2, 3), stride=(1, 2), padding=1, key=key),
    lambda key: eqx.nn.ConvTranspose2d(2, 3, 2, stride=2, key=key),
    lambda key: eqx.nn.Conv3d(2, 3, 2, key=key),
]


@pytest.mark.parametrize("make", _CONVS)
def test_conv_geometry_is_exact(getkey, make):
    """One layer's fan-in-normalised NTK is deterministic, `P(K) + b / f`: it checks the
    positions of every filter tap against Equinox's own forward pass, entry by entry."""
    conv = make(getkey())
    n = conv.num_spatial_dims
    spatial = (6,) if n == 1 else ((5, 6) if n == 2 else (3, 3, 3))
    x1 = _x(getkey(), (2, conv.in_channels) + spatial)
    x2 = _x(getkey(), (1, conv.in_channels) + spatial)
    k = eqntk.limit(conv)(x1, x2)
    _, ntk = _sample_kernels(LrScaled(conv), x1, x2, True)
    assert k.ntk.shape == ntk.shape
    assert jnp.allclose(k.ntk, ntk, rtol=1e-10, atol=1e-12)
    # For a first layer the NNGP is a third of the NTK (Var = 1 / (3 fan_in)).
    assert jnp.allclose(k.nngp, k.ntk / 3, rtol=1e-12)


@pytest.mark.parametrize(
    "pool",
    [
        eqx.nn.AvgPool1d(2, 2),
        eqx.nn.AvgPool2d((2, 3), stride=1, padding=1),
        eqx.nn.AdaptiveAvgPool2d(1),
        eqx.nn.AdaptiveAvgPool2d((2, 3)),
    ],
)
def test_average_pooling_is_exact(getkey, pool):
    """Pooling is linear and deterministic: the kernel of pooled inputs is their Gram matrix."""
    spatial = (6,) if isinstance(pool, eqx.nn.AvgPool1d) else (4, 5)
    x1, x2 = _x(getkey(), (2, 3) + spatial), _x(getkey(), (3, 3) + spatial)
    k = eqntk.limit(pool)(x1, x2)
    p1, p2 = jax.vmap(pool)(x1), jax.vmap(pool)(x2)
    assert jnp.allclose(k.nngp, gram(p1, p2, diagonal_spatial=False), rtol=1e-12)


def test_mlp_against_monte_carlo(getkey):
    x1, x2 = _x(getkey(), (2, 6)), _x(getkey(), (2, 6))
    # 16 networks of width 128: the tolerance follows from these counts (`mc_tolerance`).
    check_against_monte_carlo(
        lambda k: eqx.nn.MLP(6, 2, 128, 2, key=k), x1, x2, getkey(), n_samples=16, width=128
    )


def test_mlp_scan_tanh_and_final_activation_against_monte_carlo(getkey):
    x1 = _x(getkey(), (3, 6))

    def make(k):
        return eqx.nn.MLP(
            6, 2, 128, 2, activation=jnp.tanh, final_activation=jax.nn.relu, scan=True, key=k
        )

    check_against_monte_carlo(make, x1, None, getkey(), n_samples=16, width=128, with_ntk=False)


def test_normalisations_prelu_lambda_against_monte_carlo(getkey):
    x1 = _x(getkey(), (3, 6))

    def make(k):
        a, b, c = jr.split(k, 3)
        return eqx.nn.Sequential(
            [
                eqx.nn.Linear(6, 128, key=a),
                eqx.nn.LayerNorm(128),
                eqx.nn.Lambda(eqx.nn.PReLU(0.2)),
                eqx.nn.Linear(128, 128, key=b),
                eqx.nn.RMSNorm(128),
                eqx.nn.Lambda(jnp.sin),
                eqx.nn.Linear(128, 2, key=c),
            ]
        )

    check_against_monte_carlo(make, x1, None, getkey(), n_samples=16, width=128)


def test_mlp_equals_its_layers(getkey):
    """`MLP`'s rule is its layers' rules in sequence (the same kernel to rounding)."""
    x = _x(getkey(), (3, 4))
    mlp = eqx.nn.MLP(4, 2, 8, 2, key=getkey())
    seq = eqx.nn.Sequential(
        [mlp.layers[0], eqx.nn.Lambda(jax.nn.relu), mlp.layers[1]]
        + [eqx.nn.Lambda(jax.nn.relu), mlp.layers[2]]
    )
    a, b = eqntk.limit(mlp)(x), eqntk.limit(seq)(x)
    assert jnp.allclose(a.nngp, b.nngp, rtol=1e-13) and jnp.allclose(a.ntk, b.ntk, rtol=1e-13)


@pytest.mark.parametrize(
    "layer, match",
    [
        (eqx.nn.MaxPool2d(2), "MaxPool2d` has no closed-form"),
        (eqx.nn.AdaptiveMaxPool2d(1), "AdaptiveMaxPool2d` has no closed-form"),
        (
            eqx.nn.BatchNorm(3, "batch", mode="batch"),
            "BatchNorm` has no closed-form.*monte_carlo_kernel",
        ),
        (eqx.nn.Embedding(5, 3, key=jr.key(0)), "Embedding` has no closed-form"),
        (eqx.nn.GRUCell(3, 3, key=jr.key(0)), "GRUCell` has no closed-form"),
        (eqx.nn.LSTMCell(3, 3, key=jr.key(0)), "LSTMCell` has no closed-form"),
        (eqx.nn.MultiheadAttention(1, 3, key=jr.key(0)), "softmax"),
    ],
)
def test_layers_without_closed_form_are_clear_errors(getkey, layer, match):
    x = _x(getkey(), (2, 3, 4, 4))
    with pytest.raises(NotImplementedError, match=match):
        eqntk.limit(layer)(x)


def test_lambda_of_a_non_elementwise_function_is_an_error(getkey):
    model = eqx.nn.Sequential([eqx.nn.Linear(3, 4, key=getkey()), eqx.nn.Lambda(jnp.cumsum)])
    with pytest.raises(ValueError, match="must act elementwise"):
        eqntk.limit(model)(_x(getkey(), (2, 3)))


def test_layernorm_needs_its_initial_affine_values(getkey):
    ln = eqx.tree_at(lambda m: m.weight, eqx.nn.LayerNorm(4), 2 * jnp.ones(4))
    model = eqx.nn.Sequential([eqx.nn.Linear(3, 4, key=getkey()), ln])
    with pytest.raises(ValueError, match="`weight` must have its initial value"):
        eqntk.limit(model)(_x(getkey(), (2, 3)))


def test_linear_rejects_spatial_inputs(getkey):
    with pytest.raises(ValueError, match="takes vectors"):
        eqntk.limit(eqx.nn.Linear(3, 4, key=getkey()))(_x(getkey(), (2, 3, 5)))


def test_equinox_layers_under_jit_vmap_grad(getkey):
    model = eqx.nn.Sequential(
        [eqx.nn.Conv1d(2, 4, 3, key=getkey()), eqx.nn.Lambda(jnp.tanh), eqx.nn.AvgPool1d(2)]
    )
    kernel_fn = eqntk.limit(model)
    x = _x(getkey(), (3, 2, 6))
    direct = kernel_fn(x, get="ntk")
    assert jnp.allclose(eqx.filter_jit(kernel_fn)(x, get="ntk"), direct, rtol=1e-12)
    per_row = jax.vmap(lambda xi: kernel_fn(xi[None], x, get="ntk")[0])(x)
    # Rows against `x` take the x1 != x2 path: correlations of an example with itself come out
    # as 1 - O(1e-16) rather than exactly 1, which the quadrature's sqrt(1 - rho^2) turns into
    # O(1e-8) of the kernel's scale.
    assert jnp.max(jnp.abs(per_row - direct)) < 1e-6 * jnp.max(jnp.abs(direct))
    g = jax.grad(lambda z: kernel_fn(z, get="nngp").sum())(x)
    assert jnp.all(jnp.isfinite(g)) and math.prod(g.shape) == x.size
