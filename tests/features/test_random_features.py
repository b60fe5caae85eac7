import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import eqntk
from eqntk import nn
from eqntk.features import random_features
from eqntk.features._hermite import derivative_coefficients, hermite_coefficients


def _model(activation, depth, getkey):
    layers = [nn.Dense(3, 8, W_std=1.4, b_std=0.2, key=getkey()), activation]
    for _ in range(depth - 1):
        layers += [nn.Dense(8, 8, W_std=1.3, b_std=0.1, key=getkey()), activation]
    return nn.Sequential([*layers, nn.Dense(8, 1, W_std=1.1, b_std=0.1, key=getkey())])


def _errors(model, x, m, method, n_seeds, **kw):
    """Relative Frobenius errors of the feature kernels, one row per seed: (nngp, ntk)."""
    exact = eqntk.limit(model)(x, get=("nngp", "ntk"))

    @eqx.filter_jit
    def errors(keys):
        def one(key):
            phi = random_features(model, m, key=key, method=method, **kw)(x)
            return jnp.stack(
                [
                    jnp.linalg.norm(phi.nngp @ phi.nngp.T - exact.nngp)
                    / jnp.linalg.norm(exact.nngp),
                    jnp.linalg.norm(phi.ntk @ phi.ntk.T - exact.ntk) / jnp.linalg.norm(exact.ntk),
                ]
            )

        return jax.vmap(one)(keys)

    return np.asarray(errors(jr.split(jr.key(m), n_seeds)))


def _check_rate(activation, method, depth, m_small, getkey):
    # Kernel entries are averages over m features, so their error is O(m^-1/2): 16 times the
    # features divide the root-mean-square error over 8 seeds by about 4. The band [2.5, 10]
    # allows the O(1/m) bias of a deep composition (it makes the ratio larger at small m: 8.0
    # was seen for a two-layer NTK from m = 128) and the spread of an 8-seed estimate of an
    # RMS (about 25% each).
    model = _model(activation, depth, getkey)
    x = jr.normal(getkey(), (5, 3))
    small = _errors(model, x, m_small, method, 8)
    large = _errors(model, x, 16 * m_small, method, 8)
    rms_small, rms_large = np.sqrt(np.mean(small**2, 0)), np.sqrt(np.mean(large**2, 0))
    ratio = rms_small / rms_large
    assert np.all(ratio > 2.5) and np.all(ratio < 10), (rms_small, rms_large)
    return rms_large


def test_error_falls_like_inverse_sqrt(getkey):
    rms = _check_rate(nn.Relu(), "sampled", 1, 64, getkey)
    # At m = 1024, one hidden layer: within about 5% (the bound is 3x the RMS seen).
    assert np.all(rms < 0.15), rms


@pytest.mark.parametrize("activation", [nn.Erf(), nn.Relu(), nn.Gelu()])
def test_hermite_expansion_is_the_dual_kernel(activation, getkey):
    # Mehler's formula with exact tensor powers (no sketch): sum_j c_j(s) c_j(s') rho^j must
    # be the NNGP of [Dense, activation], and sum_j c'_j c'_j' rho^j its derivative kernel
    # (the NTK over the input NTK). Degree 60 leaves a tail below 1e-4 for the ReLU's
    # j^(-5/2) coefficients at |rho| < 0.9 (Erf's decay faster); quadrature adds 1e-4.
    model = nn.Sequential([nn.Dense(3, 8, W_std=1.4, b_std=0.3, key=getkey()), activation])
    x = jr.normal(getkey(), (4, 3))
    exact = eqntk.limit(model)(x, get=("nngp", "ntk"))
    pre = eqntk.limit(model.layers[0])(x, get="nngp")
    s = jnp.sqrt(jnp.diagonal(pre))
    rho = pre / (s[:, None] * s[None, :])
    off = ~np.eye(4, dtype=bool)
    assert np.all(np.abs(np.asarray(rho)[off]) < 0.9)
    c = hermite_coefficients(lambda t: activation(t), s, 61)
    powers = rho[..., None] ** jnp.arange(62.0)[None, None, :]
    nngp = jnp.sum(c[:, None, :] * c[None, :, :] * powers, -1)
    dc = derivative_coefficients(c, s)
    ntk = jnp.sum(dc[:, None, :] * dc[None, :, :] * powers[..., :61], -1) * pre
    scale = jnp.max(jnp.abs(exact.nngp))
    assert jnp.allclose(nngp[off], exact.nngp[off], atol=1e-3 * scale)
    assert jnp.allclose(ntk[off], exact.ntk[off], atol=1e-3 * jnp.max(jnp.abs(exact.ntk)))


@pytest.mark.slow
@pytest.mark.parametrize(
    "activation, method",
    [(nn.Relu(), "sampled"), (nn.Erf(), "sampled"), (nn.Erf(), "hermite"), (nn.Relu(), "hermite")],
)
def test_error_falls_like_inverse_sqrt_deep(activation, method, getkey):
    rms = _check_rate(activation, method, 2, 128, getkey)
    # At m = 2048 the sampled kernels are within about 5% (bound: 2x); the Hermite sketches
    # of high tensor powers have a larger variance (3^j for degree j): about 12% (bound 2x).
    assert np.all(rms < (0.12 if method == "sampled" else 0.25)), rms


def test_errors(getkey):
    dense = nn.Dense(3, 4, key=getkey())
    with pytest.raises(ValueError, match="must start with an `eqntk.nn.Dense`"):
        random_features(nn.Sequential([nn.Relu()]), 16, key=getkey())
    with pytest.raises(ValueError, match="`Relu` must follow a `Dense`"):
        random_features(nn.Sequential([dense, nn.Relu(), nn.Relu()]), 16, key=getkey())
    with pytest.raises(NotImplementedError, match="not available for `LayerNorm`"):
        random_features(nn.Sequential([dense, nn.LayerNorm()]), 16, key=getkey())
    with pytest.raises(NotImplementedError, match="`Sign` has no NTK"):
        random_features(nn.Sequential([dense, nn.Sign()]), 16, key=getkey())
    with pytest.raises(NotImplementedError, match="NTK parameterization"):
        standard = nn.Dense(3, 4, parameterization="standard", key=getkey())
        random_features(nn.Sequential([standard, nn.Relu()]), 16, key=getkey())
    with pytest.raises(ValueError, match="`n_features` must be an integer"):
        random_features(dense, 1, key=getkey())
    # The limit of a network is accepted in its place; inputs are checked.
    feature_map = random_features(eqntk.limit(dense), 16, key=getkey(), get="nngp")
    with pytest.raises(ValueError, match=r"shape \(N, 3\)"):
        feature_map(jnp.ones((2, 4)))
    with pytest.raises(ValueError, match="made with `get='nngp'`"):
        feature_map(jnp.ones((2, 3)), get="ntk")
