"""Spec builders for the closed-form nonlinearities and `ElementwiseNumerical`."""

import jax
import jax.numpy as jnp

from eqntk import nn

from ._core import builder


@builder("Gelu")
def _gelu(kw, shape, key):
    return nn.Gelu(kw.get("approximate", False))


@builder("Sigmoid_like")
def _sigmoid_like(kw, shape, key):
    return nn.SigmoidLike()


@builder("Sin")
def _sin(kw, shape, key):
    return nn.Sin(kw.get("a", 1.0), kw.get("b", 1.0), kw.get("c", 0.0))


@builder("Cos")
def _cos(kw, shape, key):
    return nn.Cos(kw.get("a", 1.0), kw.get("b", 1.0), kw.get("c", 0.0))


@builder("Exp")
def _exp(kw, shape, key):
    return nn.Exp(kw.get("a", 1.0), kw.get("b", 1.0))


@builder("ExpNormalized")
def _exp_normalized(kw, shape, key):
    return nn.ExpNormalized(kw.get("gamma", 1.0), kw.get("shift", -1.0), kw.get("do_clip", False))


@builder("Gaussian")
def _gaussian(kw, shape, key):
    return nn.Gaussian(kw.get("a", 1.0), kw.get("b", -1.0))


@builder("Rbf")
def _rbf(kw, shape, key):
    return nn.Rbf(kw.get("gamma", 1.0))


@builder("Sign")
def _sign(kw, shape, key):
    return nn.Sign()


@builder("Monomial")
def _monomial(kw, shape, key):
    return nn.Monomial(kw["degree"])


@builder("RectifiedMonomial")
def _rectified_monomial(kw, shape, key):
    return nn.RectifiedMonomial(kw["degree"])


@builder("Polynomial")
def _polynomial(kw, shape, key):
    return nn.Polynomial(kw["coef"])


@builder("Hermite")
def _hermite(kw, shape, key):
    return nn.Hermite(kw["degree"])


@builder("Gabor")
def _gabor(kw, shape, key):
    return nn.Gabor()


# The functions the spec names, as SPEC.md defines them.
NUMERICAL_FUNCTIONS = {
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
    "softplus": jax.nn.softplus,
    "swish": jax.nn.swish,
    "sin": jnp.sin,
    "cos": jnp.cos,
    "erf": jax.scipy.special.erf,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "softsign": jax.nn.soft_sign,
    "elu": jax.nn.elu,
}


@builder("ElementwiseNumerical")
def _elementwise_numerical(kw, shape, key):
    return nn.Elementwise(NUMERICAL_FUNCTIONS[kw["fn"]], deg=kw["deg"])
