"""`Dense` in fully-connected networks (with the ReLU family and `Erf`): kernels against wide
finite networks in both parameterizations and with width scales, symmetry and positive
semi-definiteness, and cross-kernel blocks against the joint kernel."""

import math

import jax
import jax.numpy as jnp
import jax.random as jr
import pytest

import eqntk
from eqntk import nn
from tests.helpers import mc_kernels


ACTIVATIONS = {
    "relu": nn.Relu,
    "leaky_relu": lambda: nn.LeakyRelu(0.2),
    "abrelu": lambda: nn.ABRelu(-0.4, 1.1),
    "abs": nn.Abs,
    "erf": lambda: nn.Erf(1.3, 0.7, 0.2),
}


def _fcn(key, d_in, width, d_out, activation, parameterization, b_std, n_hidden=1, s=1):
    keys = jr.split(key, n_hidden + 1)
    layers = []
    n_in, scale_in = d_in, 1
    for i in range(n_hidden):
        layers += [
            nn.Dense(
                n_in,
                width,
                1.4,
                b_std,
                parameterization,
                s=(scale_in, s) if parameterization == "standard" else (1, 1),
                key=keys[i],
            ),
            ACTIVATIONS[activation](),
        ]
        n_in, scale_in = width, s
    layers.append(
        nn.Dense(
            n_in,
            d_out,
            1.4,
            b_std,
            parameterization,
            s=(scale_in, 1) if parameterization == "standard" else (1, 1),
            key=keys[-1],
        )
    )
    return nn.Sequential(layers)


def _mc_tolerance(k: jax.Array, n_draws: int, width: int) -> jax.Array:
    """Entrywise tolerance for a Monte Carlo estimate of the kernel `k`.

    Sampling: each draw of `f(x1) f(x2)` has variance `K11 K22 + K12^2 <= 2 max|K|^2`, so the mean
    of `n_draws` draws has standard deviation below `sqrt(2 / n_draws) max|K|`; we allow 5 of
    those. Finite width: kernels of width-`n` networks deviate from the limit by O(1/sqrt(n))
    per draw (already inside the sampling term) plus an O(1/n) bias; we allow `4/n` of the scale.
    """
    scale = jnp.max(jnp.abs(k))
    return scale * (5 * math.sqrt(2 / n_draws) + 4 / width)


PARAMETERIZATIONS = [("ntk", 0.1), ("ntk", None), ("standard", 0.2)]


def _every_pair_with_a_default_diagonal():
    """Every activation with every parameterization; by default each activation runs once, the
    parameterizations in turn (all three are covered), and the other pairs with `-m slow`."""
    cases = []
    for i, activation in enumerate(sorted(ACTIVATIONS)):
        for j, (parameterization, b_std) in enumerate(PARAMETERIZATIONS):
            marks = () if j == i % len(PARAMETERIZATIONS) else pytest.mark.slow
            cases.append(pytest.param(activation, parameterization, b_std, marks=marks))
    return cases


@pytest.mark.parametrize(
    "activation, parameterization, b_std", _every_pair_with_a_default_diagonal()
)
def test_one_hidden_layer_matches_wide_networks(getkey, activation, parameterization, b_std):
    width, d_out, n_samples = 1024, 16, 16
    x1 = jr.normal(getkey(), (3, 5))
    x2 = jr.normal(getkey(), (2, 5))

    def make(key):
        return _fcn(key, 5, width, d_out, activation, parameterization, b_std)

    nngp_mc, ntk_mc = mc_kernels(make, getkey(), x1, x2, n_samples=n_samples, batch=8)
    k = eqntk.limit(make(getkey()))(x1, x2)
    n_draws = n_samples * d_out
    assert jnp.all(jnp.abs(nngp_mc - k.nngp) < _mc_tolerance(k.nngp, n_draws, width))
    # The empirical NTK is an average over the hidden units of the network, so its fluctuation
    # is O(1/sqrt(width)) per draw instead of O(1): the same bound is loose but sound.
    assert jnp.all(jnp.abs(ntk_mc - k.ntk) < _mc_tolerance(k.ntk, n_draws, width))


@pytest.mark.parametrize("activation", ["relu", "erf"])
def test_two_hidden_layers_match_wide_networks(getkey, activation):
    width, d_out, n_samples = 256, 4, 16
    x1 = jr.normal(getkey(), (3, 4))

    def make(key):
        return _fcn(key, 4, width, d_out, activation, "ntk", 0.1, n_hidden=2)

    nngp_mc, ntk_mc = mc_kernels(make, getkey(), x1, None, n_samples=n_samples, batch=4)
    k = eqntk.limit(make(getkey()))(x1)
    n_draws = n_samples * d_out
    assert jnp.all(jnp.abs(nngp_mc - k.nngp) < _mc_tolerance(k.nngp, n_draws, width))
    assert jnp.all(jnp.abs(ntk_mc - k.ntk) < _mc_tolerance(k.ntk, n_draws, width))


def test_standard_parameterization_width_scales_match_wide_networks(getkey):
    # Nominal width 256 scaled by s = 4: the finite network is 1024 wide, the kernel is that of
    # nominal widths (the NTK weights the first layer's gradient by 256, not 1024).
    width, s, d_out, n_samples = 256, 4, 16, 16
    x1 = jr.normal(getkey(), (3, 5))

    def make(key):
        return _fcn(key, 5, width, d_out, "relu", "standard", 0.2, s=s)

    assert make(getkey()).layers[0].weight.shape == (width * s, 5)
    nngp_mc, ntk_mc = mc_kernels(make, getkey(), x1, None, n_samples=n_samples, batch=8)
    k = eqntk.limit(make(getkey()))(x1)
    n_draws = n_samples * d_out
    assert jnp.all(jnp.abs(nngp_mc - k.nngp) < _mc_tolerance(k.nngp, n_draws, width * s))
    assert jnp.all(jnp.abs(ntk_mc - k.ntk) < _mc_tolerance(k.ntk, n_draws, width * s))
    # ...and the width scale does change the NTK: with s = 1 it would differ.
    k1 = eqntk.limit(_fcn(getkey(), 5, width, d_out, "relu", "standard", 0.2, s=1))(x1)
    assert jnp.allclose(k1.nngp, k.nngp)
    assert jnp.allclose(k1.ntk, k.ntk)


@pytest.mark.slow
@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_deep_networks_match_very_wide_networks(getkey, activation):
    width, d_out, n_samples = 2048, 64, 64
    x1 = jr.normal(getkey(), (4, 6))

    def make(key):
        return _fcn(key, 6, width, d_out, activation, "ntk", 0.1, n_hidden=2)

    nngp_mc, _ = mc_kernels(make, getkey(), x1, None, n_samples=n_samples, with_ntk=False)
    k = eqntk.limit(make(getkey()))(x1)
    assert jnp.all(jnp.abs(nngp_mc - k.nngp) < _mc_tolerance(k.nngp, n_samples * d_out, width))


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_outputs_are_symmetric_and_psd(getkey, activation):
    model = _fcn(getkey(), 5, 8, 1, activation, "ntk", 0.1, n_hidden=3)
    x = jr.normal(getkey(), (6, 5))
    k = eqntk.limit(model)(x)
    for a in (k.nngp, k.ntk):
        assert jnp.array_equal(a, a.T)
        assert jnp.linalg.eigvalsh(a).min() > -1e-10 * jnp.abs(a).max()
    assert jnp.allclose(jnp.diag(k.nngp), k.cov1, rtol=1e-12)


def test_cross_kernel_blocks_agree_with_joint_kernel(getkey):
    model = _fcn(getkey(), 5, 8, 1, "relu", "ntk", 0.1, n_hidden=2)
    x1, x2 = jr.normal(getkey(), (3, 5)), jr.normal(getkey(), (4, 5))
    joint = eqntk.limit(model)(jnp.concatenate([x1, x2]))
    cross = eqntk.limit(model)(x1, x2)
    assert jnp.allclose(cross.nngp, joint.nngp[:3, 3:], rtol=1e-12)
    assert jnp.allclose(cross.ntk, joint.ntk[:3, 3:], rtol=1e-12)
    assert jnp.allclose(cross.cov2, jnp.diag(joint.nngp)[3:], rtol=1e-12)
