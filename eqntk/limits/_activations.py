"""Kernel rules of the closed-form nonlinearities: the ReLU family and `Erf`."""

import math

import jax.numpy as jnp
from jaxtyping import Array

from ..nn import ABRelu, Abs, Erf, LeakyRelu, Relu
from ._elementwise import map_entries, require_gaussian
from ._kernel import Kernel
from ._math import arccos_kernel_0, arccos_kernel_1, correlation
from ._registry import AbstractRule, register


def abrelu_entries(k: Kernel, a: Array | float, b: Array | float):
    """The entry map of $\\phi(x) = a\\min(x,0) + b\\max(x,0)$ (see `nn.ABRelu`)."""
    a, b = k.cast(a), k.cast(b)
    half_gap = (a - b) ** 2 / 2
    ab = a * b

    def fn(q11, q12, q22, ntk):
        norm, rho = correlation(q11, q12, q22)
        nngp = half_gap * norm * arccos_kernel_1(rho) + ab * q12
        if ntk is None:
            return nngp, None
        return nngp, ntk * (half_gap * arccos_kernel_0(rho) + ab)

    return fn


class _ElementwiseRule(AbstractRule):
    def requirements(self, layer, wanted):
        return wanted


@register(ABRelu)
class ABReluRule(_ElementwiseRule):
    """Kernel rule of [`eqntk.nn.ABRelu`][]."""

    def __call__(self, layer: ABRelu, k: Kernel, wanted) -> Kernel:
        require_gaussian(k, layer)
        return map_entries(k, abrelu_entries(k, layer.a, layer.b))


@register(Relu)
class ReluRule(_ElementwiseRule):
    """Kernel rule of [`eqntk.nn.Relu`][]."""

    def __call__(self, layer: Relu, k: Kernel, wanted) -> Kernel:
        require_gaussian(k, layer)
        return map_entries(k, abrelu_entries(k, 0.0, 1.0))


@register(LeakyRelu)
class LeakyReluRule(_ElementwiseRule):
    """Kernel rule of [`eqntk.nn.LeakyRelu`][]."""

    def __call__(self, layer: LeakyRelu, k: Kernel, wanted) -> Kernel:
        require_gaussian(k, layer)
        return map_entries(k, abrelu_entries(k, layer.alpha, 1.0))


@register(Abs)
class AbsRule(_ElementwiseRule):
    """Kernel rule of [`eqntk.nn.Abs`][]."""

    def __call__(self, layer: Abs, k: Kernel, wanted) -> Kernel:
        require_gaussian(k, layer)
        return map_entries(k, abrelu_entries(k, -1.0, 1.0))


@register(Erf)
class ErfRule(_ElementwiseRule):
    """Kernel rule of [`eqntk.nn.Erf`][]."""

    def __call__(self, layer: Erf, k: Kernel, wanted) -> Kernel:
        require_gaussian(k, layer)
        a, b, c = k.cast(layer.a), k.cast(layer.b), k.cast(layer.c)
        two_b2 = 2 * b**2

        def fn(q11, q12, q22, ntk):
            s11, s22, s12 = 1 + two_b2 * q11, 1 + two_b2 * q22, two_b2 * q12
            denominator = s11 * s22
            nngp = (2 / math.pi) * a**2 * jnp.arcsin(s12 / jnp.sqrt(denominator)) + c**2
            if ntk is None:
                return nngp, None
            dot = (4 / math.pi) * a**2 * b**2 / jnp.sqrt(denominator - s12**2)
            return nngp, ntk * dot

        return map_entries(k, fn)
