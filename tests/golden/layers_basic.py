"""Spec builders for the foundation layers: Dense, the ReLU family, Erf, Identity, Flatten."""

from typing import Any

from eqntk import nn

from ._core import builder


def _affine_kwargs(kw: dict[str, Any]) -> dict[str, Any]:
    return dict(
        W_std=kw.get("W_std", 1.0),
        b_std=kw.get("b_std"),
        parameterization=kw.get("parameterization", "ntk"),
    )


@builder("Dense")
def _dense(kw, shape, key):
    return nn.Dense(shape[0], kw["out"], **_affine_kwargs(kw), key=key)


@builder("Relu")
def _relu(kw, shape, key):
    return nn.Relu()


@builder("LeakyRelu")
def _leaky_relu(kw, shape, key):
    return nn.LeakyRelu(kw["alpha"])


@builder("ABRelu")
def _abrelu(kw, shape, key):
    return nn.ABRelu(kw["a"], kw["b"])


@builder("Abs")
def _abs(kw, shape, key):
    return nn.Abs()


@builder("Erf")
def _erf(kw, shape, key):
    return nn.Erf(kw.get("a", 1.0), kw.get("b", 1.0), kw.get("c", 0.0))


@builder("Identity")
def _identity(kw, shape, key):
    return nn.Identity()


@builder("Flatten")
def _flatten(kw, shape, key):
    return nn.Flatten()
