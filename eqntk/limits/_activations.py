"""Kernel rules of the ReLU family, `Erf`, `SigmoidLike`, `Gelu` and `Sign`."""

import math

import jax
import jax.numpy as jnp
from jaxtyping import Array

from ..nn import ABRelu, Abs, Erf, Gelu, LeakyRelu, Relu, SigmoidLike, Sign
from ..nn._activations import SIGMOID_LIKE_SCALE
from ._elementwise import AbstractElementwiseRule, EntryMap, map_entries, require_gaussian
from ._kernel import Kernel
from ._math import (
    arccos_kernel_0,
    arccos_kernel_1,
    arcsin,
    correlation,
    homogeneous_correlation,
    times_norm,
)
from ._registry import Requirements, register


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
class ABReluRule(AbstractElementwiseRule[ABRelu]):
    """Kernel rule of [`eqntk.nn.ABRelu`][]."""

    def __call__(self, layer: ABRelu, k: Kernel, wanted: Requirements) -> Kernel:
        return _abrelu_kernel(layer, k, layer.a, layer.b)


@register(Relu)
class ReluRule(AbstractElementwiseRule[Relu]):
    """Kernel rule of [`eqntk.nn.Relu`][]."""

    def __call__(self, layer: Relu, k: Kernel, wanted: Requirements) -> Kernel:
        return _abrelu_kernel(layer, k, 0.0, 1.0)


@register(LeakyRelu)
class LeakyReluRule(AbstractElementwiseRule[LeakyRelu]):
    """Kernel rule of [`eqntk.nn.LeakyRelu`][]."""

    def __call__(self, layer: LeakyRelu, k: Kernel, wanted: Requirements) -> Kernel:
        return _abrelu_kernel(layer, k, layer.alpha, 1.0)


@register(Abs)
class AbsRule(AbstractElementwiseRule[Abs]):
    """Kernel rule of [`eqntk.nn.Abs`][]."""

    def __call__(self, layer: Abs, k: Kernel, wanted: Requirements) -> Kernel:
        return _abrelu_kernel(layer, k, -1.0, 1.0)


def erf_entries(k: Kernel, a, b, c) -> EntryMap:
    """The entry map of $\\phi(x) = a\\,\\mathrm{erf}(b x) + c$ (see `nn.Erf`)."""
    a, b, c = k.cast(a), k.cast(b), k.cast(c)
    two_b2 = 2 * b**2

    def fn(q11, q12, q22, ntk):
        # With s_i = 1 + 2b^2 q_ii, erf's arguments have the correlation t = 2b^2 q12 / sqrt(s1 s2).
        # Per-example factors (u = 1/s, r = sqrt(u)) cost little; the full-size work is a few
        # multiplications.
        u11, u22 = 1 / (1 + two_b2 * q11), 1 / (1 + two_b2 * q22)
        r11, r22 = jnp.sqrt(u11), jnp.sqrt(u22)
        t = (two_b2 * q12 * r11) * r22
        one_minus_t2 = _one_minus_correlation2(q11, q12, q22, two_b2, u11, u22, r11, r22)
        nngp = (2 / math.pi) * a**2 * arcsin(t, one_minus_t2) + c**2
        if ntk is None:
            return nngp, None
        # ((1 + 2b^2 q11)(1 + 2b^2 q22) - (2b^2 q12)^2)^(-1/2) = r11 r22 / sqrt(1 - t^2).
        dot = ((4 / math.pi) * a**2 * b**2 * r11 * r22) * jax.lax.rsqrt(one_minus_t2)
        return nngp, ntk * dot

    return fn


def _one_minus_correlation2(q11, q12, q22, scale, u11, u22, r11, r22):
    """$1 - t^2$ for $t = \\lambda q_{12} / \\sqrt{(1 + \\lambda q_{11})(1 + \\lambda q_{22})}$,
    without cancellation ($\\lambda$ is `scale`, $u = 1/(1 + \\lambda q)$, $r = \\sqrt u$).

    $1 - t^2 = u_{11} + \\lambda q_{11} u_{11} u_{22} + \\lambda^2 r_{11} r_{22}\\,\\det$ with
    the scaled determinant $\\det = (q_{11} r_{11})(q_{22} r_{22}) - (q_{12} r_{11})(q_{12}
    r_{22}) \\geq 0$: every term is positive, and the determinant is exactly 0 on the diagonal
    of K(x, x) (the same rounded factors on both sides), where t is closest to 1. Elsewhere its
    rounding error is that of q12 itself. Computed as 1 - t * t, the rounding of t near 1 left
    a relative error of eps / (1 - t^2) (3e-3 in float32 at input scale 100, inf beyond), and
    the scaled factors keep every product within range for variances up to the float maximum.
    """
    det = (q11 * r11) * (q22 * r22) - (q12 * r11) * (q12 * r22)
    return u11 + (scale * q11 * u11) * u22 + scale**2 * (r11 * r22) * jnp.maximum(det, 0)


@register(Erf)
class ErfRule(AbstractElementwiseRule[Erf]):
    """Kernel rule of [`eqntk.nn.Erf`][]."""

    def __call__(self, layer: Erf, k: Kernel, wanted: Requirements) -> Kernel:
        require_gaussian(k, layer)
        return map_entries(k, erf_entries(k, layer.a, layer.b, layer.c))


@register(SigmoidLike)
class SigmoidLikeRule(AbstractElementwiseRule[SigmoidLike]):
    """Kernel rule of [`eqntk.nn.SigmoidLike`][]."""

    def __call__(self, layer: SigmoidLike, k: Kernel, wanted: Requirements) -> Kernel:
        require_gaussian(k, layer)
        return map_entries(k, erf_entries(k, 0.5, 1 / SIGMOID_LIKE_SCALE, 0.5))


def gelu_entries(q11, q12, q22, ntk):
    """The entry map of the exact GELU $x\\Phi(x)$ (see `nn.Gelu`)."""
    # In terms of per-example u = 1/(1 + q), r = sqrt(u) and the sine of the angle,
    # sin = q12 / sqrt(P), with 1 - sin^2 = Delta^2 / P (without cancellation, see
    # `_one_minus_correlation2`): Delta = sqrt(1 - sin^2) / (r11 r22), q11 q22 / P = u11 q11
    # u22 q22 and (2 + q11 + q22) / P = u11 + u22, so that no product leaves the float range
    # before the kernel itself does.
    one = jnp.ones((), q12.dtype)
    u11, u22 = 1 / (1 + q11), 1 / (1 + q22)
    r11, r22 = jnp.sqrt(u11), jnp.sqrt(u22)
    sin = (q12 * r11) * r22
    cos2 = _one_minus_correlation2(q11, q12, q22, one, u11, u22, r11, r22)
    cos = jnp.sqrt(cos2)
    angle = arcsin(sin, cos2)
    # (q12^2 + q11 q22 Delta^2) / (P Delta) = sin^2 r11 r22 / cos + (q11 r11)(q22 r22) cos.
    rest = sin * sin * (r11 * r22) / cos + (q11 * r11) * (q22 * r22) * cos
    nngp = q12 / 4 + (q12 * angle + rest) / (2 * math.pi)
    if ntk is None:
        return nngp, None
    # q12 / Delta = sin / cos; 1 / Delta^2 + (1 - q11 q22) / P + 1 = u11 u22 / cos2 + u11 + u22.
    bracket = (u11 * u22) / cos2 + (u11 + u22)
    dot = 0.25 + angle / (2 * math.pi) + (sin / cos) * bracket / (2 * math.pi)
    return nngp, ntk * dot


@register(Gelu)
class GeluRule(AbstractElementwiseRule[Gelu]):
    """Kernel rule of [`eqntk.nn.Gelu`][] (always the exact GELU)."""

    def __call__(self, layer: Gelu, k: Kernel, wanted: Requirements) -> Kernel:
        require_gaussian(k, layer)
        return map_entries(k, gelu_entries)


def sign_entries(q11, q12, q22, ntk):
    """The entry map of $\\mathrm{sign}(x)$: $\\frac{2}{\\pi}\\arcsin\\rho$, NTK factor 0."""
    _, rho = correlation(q11, q12, q22)
    # (2/pi) arcsin(rho) = 2 J_0(rho) - 1, whose derivative stays finite at |rho| = 1.
    nngp = 2 * arccos_kernel_0(rho) - 1
    return nngp, None if ntk is None else jnp.zeros_like(ntk)


@register(Sign)
class SignRule(AbstractElementwiseRule[Sign]):
    """Kernel rule of [`eqntk.nn.Sign`][]."""

    def __call__(self, layer: Sign, k: Kernel, wanted: Requirements) -> Kernel:
        require_gaussian(k, layer)
        return map_entries(k, sign_entries)
