"""Finite forward passes of the nonlinearities, their hyperparameters, and bad input."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eqntk import nn


X = jnp.linspace(-3.0, 3.0, 13)


@pytest.mark.parametrize(
    "layer, expected",
    [
        (nn.SigmoidLike(), 0.5 * jax.scipy.special.erf(X / 2.4020563531719796) + 0.5),
        (nn.Gelu(), X * jax.scipy.stats.norm.cdf(X)),
        (nn.Gelu(approximate=True), jax.nn.gelu(X, approximate=True)),
        (nn.Sin(1.1, 1.6, 0.4), 1.1 * jnp.sin(1.6 * X + 0.4)),
        (nn.Cos(0.9, 1.2, -0.3), 0.9 * jnp.cos(1.2 * X - 0.3)),
        (nn.Rbf(0.8), math.sqrt(2) * jnp.sin(math.sqrt(1.6) * X + math.pi / 4)),
        (nn.Gabor(), jnp.exp(-(X**2)) * jnp.sin(X)),
        (nn.Exp(0.7, 0.5), 0.7 * jnp.exp(0.5 * X)),
        (nn.Gaussian(1.2, -0.6), 1.2 * jnp.exp(-0.6 * X**2)),
        (nn.Sign(), jnp.sign(X)),
        (nn.Monomial(3), X**3),
        (nn.RectifiedMonomial(0), (X >= 0).astype(X.dtype)),
        (nn.RectifiedMonomial(2), jnp.maximum(X, 0) ** 2),
        (nn.Polynomial([0.1, 0.9, 0.3, -0.05]), 0.1 + 0.9 * X + 0.3 * X**2 - 0.05 * X**3),
        (nn.Hermite(4), (X**4 - 6 * X**2 + 3) / math.sqrt(24)),
        (nn.Elementwise(jax.nn.softplus), jax.nn.softplus(X)),
        (nn.Relu(do_stabilize=True), jnp.maximum(X, 0)),
    ],
)
def test_forward_pass(layer, expected):
    np.testing.assert_allclose(layer(X), expected, rtol=1e-12, atol=1e-15)
    assert eqx.filter_jit(layer)(X.reshape(1, 13)).shape == (1, 13)


def test_hermite_matches_numpy():
    for degree in range(7):
        expected = np.polynomial.hermite_e.hermeval(np.asarray(X), [0] * degree + [1])
        np.testing.assert_allclose(
            nn.Hermite(degree)(X), expected / math.sqrt(math.factorial(degree)), rtol=1e-12
        )


def test_hyperparameters_are_frozen_in_the_finite_pass():
    layer = nn.Sin(1.1, 1.6, 0.4)
    grads = eqx.filter_grad(lambda m: jnp.sum(m(X)))(layer)
    assert grads.a == 0 and grads.b == 0 and grads.c == 0


def test_kernel_only_layers_raise_when_called():
    def nngp_fn(cov12, var1, var2):
        return cov12

    for layer in (nn.ExpNormalized(), nn.Elementwise(nngp_fn=nngp_fn)):
        with pytest.raises(NotImplementedError, match="no finite forward pass"):
            layer(X)
        # Shape inference still works (the error comes when the computation runs).
        assert eqx.filter_eval_shape(layer, X).shape == X.shape


def test_bad_input():
    with pytest.raises(ValueError, match="`fn` must return a scalar"):
        nn.Elementwise(lambda x: jnp.stack([x, x]))
    with pytest.raises(ValueError, match="`fn` must be a JAX-traceable function"):
        nn.Elementwise(lambda x: float(x))
    # A type error (from the runtime type checker when it is on, else from the layer).
    with pytest.raises(TypeError, match="fn"):
        nn.Elementwise(3.0)
    with pytest.raises(ValueError, match="`deg` .* must be a positive integer, got 0"):
        nn.Elementwise(jnp.tanh, deg=0)
    with pytest.raises(ValueError, match="needs `fn` .* or `nngp_fn`"):
        nn.Elementwise()
    with pytest.raises(ValueError, match="`d_nngp_fn` is only used together with `nngp_fn`"):
        nn.Elementwise(jnp.tanh, d_nngp_fn=lambda c, v1, v2: c)
    with pytest.raises(ValueError, match="`nngp_fn` must return a scalar"):
        nn.Elementwise(nngp_fn=lambda c, v1, v2: jnp.ones(2))
    for layer in (nn.Monomial, nn.RectifiedMonomial, nn.Hermite):
        with pytest.raises(ValueError, match="`degree` must be a non-negative integer, got -1"):
            layer(-1)
        with pytest.raises((TypeError, ValueError), match="degree"):
            layer(1.5)
    with pytest.raises(ValueError, match="`coef` must be a non-empty 1-D sequence"):
        nn.Polynomial([])
    with pytest.raises(ValueError, match="`gamma` must be non-negative"):
        nn.Rbf(-1.0)
