"""Kernel rules of the sinusoidal nonlinearities: `Sin`, `Cos`, `Rbf`, `Gabor`."""

import jax.numpy as jnp

from ..nn import Cos, Gabor, Rbf, Sin
from ._elementwise import AbstractElementwiseRule, EntryMap, map_entries, require_gaussian
from ._kernel import Kernel
from ._registry import Requirements, register


def sinusoid_entries(half_a2, b2, cos_2c) -> EntryMap:
    """The entry map of $a\\sin(bx + c)$ from $a^2/2$, $b^2$ and $\\cos 2c$ (see `nn.Sin`)."""

    def fn(q11, q12, q22, ntk):
        half_sum = (q11 + q22) / 2
        e_plus = jnp.exp(b2 * (q12 - half_sum))
        e_minus = cos_2c * jnp.exp(-b2 * (q12 + half_sum))
        nngp = half_a2 * (e_plus - e_minus)
        if ntk is None:
            return nngp, None
        return nngp, ntk * (half_a2 * b2 * (e_plus + e_minus))

    return fn


@register(Sin)
class SinRule(AbstractElementwiseRule[Sin]):
    """Kernel rule of [`eqntk.nn.Sin`][]."""

    def __call__(self, layer: Sin, k: Kernel, wanted: Requirements) -> Kernel:
        require_gaussian(k, layer)
        a, b, c = k.cast(layer.a), k.cast(layer.b), k.cast(layer.c)
        return map_entries(k, sinusoid_entries(a**2 / 2, b**2, jnp.cos(2 * c)))


@register(Cos)
class CosRule(AbstractElementwiseRule[Cos]):
    """Kernel rule of [`eqntk.nn.Cos`][]: `Sin` with phase $c + \\pi/2$ ($\\cos 2c$ flips)."""

    def __call__(self, layer: Cos, k: Kernel, wanted: Requirements) -> Kernel:
        require_gaussian(k, layer)
        a, b, c = k.cast(layer.a), k.cast(layer.b), k.cast(layer.c)
        return map_entries(k, sinusoid_entries(a**2 / 2, b**2, -jnp.cos(2 * c)))


@register(Rbf)
class RbfRule(AbstractElementwiseRule[Rbf]):
    """Kernel rule of [`eqntk.nn.Rbf`][]: `Sin` with $a^2 = 2$, $b^2 = 2\\gamma$, $\\cos 2c = 0$."""

    def __call__(self, layer: Rbf, k: Kernel, wanted: Requirements) -> Kernel:
        require_gaussian(k, layer)
        gamma = k.cast(layer.gamma)
        return map_entries(k, sinusoid_entries(k.cast(1.0), 2 * gamma, k.cast(0.0)))


def gabor_entries(q11, q12, q22, ntk):
    """The entry map of $e^{-x^2}\\sin x$ (see `nn.Gabor`)."""
    s = q11 + q22
    product = q11 * q22
    d = 4 * (product - q12**2)
    m = 1 + 2 * s + d  # >= 1
    envelope = jnp.exp(-(s + d) / (2 * m))
    x = q12 / m
    nngp = envelope * jnp.sinh(x) / jnp.sqrt(m)
    if ntk is None:
        return nngp, None
    # d nngp / d q12, simplified by hand (it is E[phi'(u) phi'(v)] by Price's theorem).
    shared = 1 + 2 * s + 4 * (q12**2 + product)
    odd = 4 * q12 * (d + 3 * s + 2)
    dot = envelope * (jnp.cosh(x) * shared + jnp.sinh(x) * odd) / m ** (5 / 2)
    return nngp, ntk * dot


@register(Gabor)
class GaborRule(AbstractElementwiseRule[Gabor]):
    """Kernel rule of [`eqntk.nn.Gabor`][]."""

    def __call__(self, layer: Gabor, k: Kernel, wanted: Requirements) -> Kernel:
        require_gaussian(k, layer)
        return map_entries(k, gabor_entries)
