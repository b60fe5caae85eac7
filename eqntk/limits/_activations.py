"""Kernel rules of the ReLU family, `Erf`, `SigmoidLike`, `Gelu` and `Sign`."""

import math

import jax
import jax.numpy as jnp
from jaxtyping import Array

from ..nn import ABRelu, Abs, Erf, Gelu, LeakyRelu, Relu, SigmoidLike, Sign
from ..nn._activations import SIGMOID_LIKE_SCALE
from ._elementwise import EntryMap, map_entries, require_gaussian
from ._kernel import Kernel
from ._math import (
    arccos_kernel_0,
    arccos_kernel_1,
    arcsin,
    correlation,
    homogeneous_correlation,
    times_norm,
)
from ._registry import AbstractRule, register


class AbstractElementwiseRule(AbstractRule):
    """A rule of an elementwise nonlinearity: it asks of its input what is asked of its output
    (an elementwise map keeps the spatial layout)."""

    def requirements(self, layer, wanted):
        return wanted


def abrelu_entries(k: Kernel, a: Array | float, b: Array | float) -> EntryMap:
    """The entry map of $\\phi(x) = a\\min(x,0) + b\\max(x,0)$ (see `nn.ABRelu`)."""
    a, b = k.cast(a), k.cast(b)
    half_gap = (a - b) ** 2 / 2
    ab = a * b
    # With spatial axes, the covariances usually come from a window sum (see `store`).
    store = k.spatial_ndim > 0

    def fn(q11, q12, q22, ntk):
        rho, norm = homogeneous_correlation(q11, q12, q22, store)
        # half_gap * norm * J1(rho) + ab * q12, with q12 = norm * rho (see `times_norm`).
        nngp = times_norm(half_gap * arccos_kernel_1(rho) + ab * rho, norm)
        if ntk is None:
            return nngp, None
        return nngp, ntk * (half_gap * arccos_kernel_0(rho) + ab)

    return fn


def _abrelu_kernel(layer, k: Kernel, a, b) -> Kernel:
    require_gaussian(k, layer)
    fn = abrelu_entries(k, a, b)
    if not layer.do_stabilize:
        return map_entries(k, fn)
    # The map is positively homogeneous (degree 1 for the NNGP, 0 for the NTK factor), so
    # dividing the covariances by their largest entry and multiplying back changes nothing but
    # the range of the intermediate products. The scale is a constant for autodiff: by
    # homogeneity its derivative terms cancel exactly. It is applied as its square root twice:
    # XLA turns a division by a scalar into a product with its reciprocal, and 1 / scale is
    # flushed to 0 in float32 for scales past about 1e38 (the whole kernel became 0).
    # An overflowed kernel keeps scale 1: inf / inf would turn its honest infinities into NaN.
    scale = jax.lax.stop_gradient(jnp.maximum(jnp.max(jnp.abs(k.nngp)), k.cast(1e-12)))
    root = jnp.sqrt(jnp.where(scale < jnp.inf, scale, 1))
    out = map_entries(k.map_covariances(lambda c: c / root / root, lambda t: t), fn)
    return out.map_covariances(lambda c: c * root * root, lambda t: t)


@register(ABRelu)
class ABReluRule(AbstractElementwiseRule):
    """Kernel rule of [`eqntk.nn.ABRelu`][]."""

    def __call__(self, layer: ABRelu, k: Kernel, wanted) -> Kernel:
        return _abrelu_kernel(layer, k, layer.a, layer.b)


@register(Relu)
class ReluRule(AbstractElementwiseRule):
    """Kernel rule of [`eqntk.nn.Relu`][]."""

    def __call__(self, layer: Relu, k: Kernel, wanted) -> Kernel:
        return _abrelu_kernel(layer, k, 0.0, 1.0)


@register(LeakyRelu)
class LeakyReluRule(AbstractElementwiseRule):
    """Kernel rule of [`eqntk.nn.LeakyRelu`][]."""

    def __call__(self, layer: LeakyRelu, k: Kernel, wanted) -> Kernel:
        return _abrelu_kernel(layer, k, layer.alpha, 1.0)


@register(Abs)
class AbsRule(AbstractElementwiseRule):
    """Kernel rule of [`eqntk.nn.Abs`][]."""

    def __call__(self, layer: Abs, k: Kernel, wanted) -> Kernel:
        return _abrelu_kernel(layer, k, -1.0, 1.0)


def erf_entries(k: Kernel, a, b, c) -> EntryMap:
    """The entry map of $\\phi(x) = a\\,\\mathrm{erf}(b x) + c$ (see `nn.Erf`)."""
    a, b, c = k.cast(a), k.cast(b), k.cast(c)
    two_b2 = 2 * b**2

    def fn(q11, q12, q22, ntk):
        # 1 + 2 b^2 q11 and 1 + 2 b^2 q22 have the small per-example shapes: their inverse
        # square roots cost little, and the full-size work is a few multiplications.
        r11, r22 = jax.lax.rsqrt(1 + two_b2 * q11), jax.lax.rsqrt(1 + two_b2 * q22)
        t = two_b2 * q12 * r11 * r22  # the correlation of erf's arguments, |t| < 1
        nngp = (2 / math.pi) * a**2 * arcsin(t) + c**2
        if ntk is None:
            return nngp, None
        # (1 + 2b^2 q11)(1 + 2b^2 q22) - (2b^2 q12)^2 >= 1: no clipping needed.
        dot = (4 / math.pi) * a**2 * b**2 * r11 * r22 * jax.lax.rsqrt(1 - t * t)
        return nngp, ntk * dot

    return fn


@register(Erf)
class ErfRule(AbstractElementwiseRule):
    """Kernel rule of [`eqntk.nn.Erf`][]."""

    def __call__(self, layer: Erf, k: Kernel, wanted) -> Kernel:
        require_gaussian(k, layer)
        return map_entries(k, erf_entries(k, layer.a, layer.b, layer.c))


@register(SigmoidLike)
class SigmoidLikeRule(AbstractElementwiseRule):
    """Kernel rule of [`eqntk.nn.SigmoidLike`][]."""

    def __call__(self, layer: SigmoidLike, k: Kernel, wanted) -> Kernel:
        require_gaussian(k, layer)
        return map_entries(k, erf_entries(k, 0.5, 1 / SIGMOID_LIKE_SCALE, 0.5))


def gelu_entries(q11, q12, q22, ntk):
    """The entry map of the exact GELU $x\\Phi(x)$ (see `nn.Gelu`)."""
    product = q11 * q22
    p = (1 + q11) * (1 + q22)
    delta2 = p - q12**2  # >= 1 + q11 + q22 > 0
    delta = jnp.sqrt(delta2)
    angle = arcsin(q12 / jnp.sqrt(p))
    nngp = q12 / 4 + (q12 * angle + (q12**2 + product * delta2) / (p * delta)) / (2 * math.pi)
    if ntk is None:
        return nngp, None
    bracket = 1 / delta2 + (1 - product) / p + 1
    dot = 0.25 + angle / (2 * math.pi) + q12 * bracket / (2 * math.pi * delta)
    return nngp, ntk * dot


@register(Gelu)
class GeluRule(AbstractElementwiseRule):
    """Kernel rule of [`eqntk.nn.Gelu`][] (always the exact GELU)."""

    def __call__(self, layer: Gelu, k: Kernel, wanted) -> Kernel:
        require_gaussian(k, layer)
        return map_entries(k, gelu_entries)


def sign_entries(q11, q12, q22, ntk):
    """The entry map of $\\mathrm{sign}(x)$: $\\frac{2}{\\pi}\\arcsin\\rho$, NTK factor 0."""
    _, rho = correlation(q11, q12, q22)
    # (2/pi) arcsin(rho) = 2 J_0(rho) - 1, whose derivative stays finite at |rho| = 1.
    nngp = 2 * arccos_kernel_0(rho) - 1
    return nngp, None if ntk is None else jnp.zeros_like(ntk)


@register(Sign)
class SignRule(AbstractElementwiseRule):
    """Kernel rule of [`eqntk.nn.Sign`][]."""

    def __call__(self, layer: Sign, k: Kernel, wanted) -> Kernel:
        require_gaussian(k, layer)
        return map_entries(k, sign_entries)
