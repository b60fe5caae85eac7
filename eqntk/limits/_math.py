"""Numerically robust special functions for kernel rules.

The arc-cosine kernels of the ReLU family are functions of the correlation
$\\rho = \\mathcal{K}_{12} / \\sqrt{\\mathcal{K}_{11}\\mathcal{K}_{22}}$, which is exactly 1 on the
diagonal of `K(x, x)` and for colinear inputs. There $\\arccos$ and $\\sqrt{1-\\rho^2}$ have
infinite derivatives, although the kernels themselves are smooth enough; the functions here
carry their derivatives in closed forms that stay finite.

## Choices made for XLA:CPU

Kernel programs are elementwise chains over kernel-shaped arrays, and on CPU their speed
depends on what XLA stores and what it recomputes. Where a formula is written in one of two
equivalent ways for that reason, the choice is made here or in `eqntk/_geometry.py`, and rules
call the shared function; each function's docstring gives the measurement behind it:

- **Stored divisions.** XLA:CPU stores the result of an expensive operation (a division) that
  has several consumers, but copies a cheap one (products, the arc-cosine polynomial) into
  every fusion that reads it. `times_norm` ends a homogeneous nonlinearity's map with a
  division so that each layer's NNGP is stored once; `homogeneous_correlation(store=True)`
  divides where the covariance is a window sum (spatial kernels), and multiplies after a
  `Dense` layer; `_inverse_sqrt` tests its stored result, never its cheap input.
- **Arc-cosine.** XLA's `arccos` is several times slower than a copy on CPU; float32 kernels
  use a polynomial accurate to float32 (`_arccos`).
- **Tap slicing.** A window sum reads each tap as a contiguous slice of the flattened padded
  array, so that XLA never fuses a layer's producer into every tap
  (`eqntk/_geometry.py`, `_unit_stride_taps`).

Outside the kernel maths: finite convolutions run channel-last (`nn/_conv.py`,
`_conv_one_example`: channel-first convolutions inside loops are about 20x slower on CPU), and
the ODE's right-hand side is a row-major product (`dynamics/_ode.py`).
"""

import functools as ft
import math
from collections.abc import Callable
from fractions import Fraction

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float


def power_of_two_scales(scale: Array) -> tuple[Array, Array]:
    """Exact powers of two $2^{-e}$ and $2^{e}$ with $2^{e} \approx$ `scale`, for rescaling by
    a positive scalar without rounding.

    Products with them are exact, so XLA may fuse or reorder them freely: `c / s / s`
    became `c * (1 / s^2)`, and $1 / s^2$ was flushed to 0 in float32 for $s^2$ past 1e38.
    $e$ is clipped so that both are normal numbers; a scale of 0, inf or NaN gives 1 and 1.
    """
    info = jnp.finfo(scale.dtype)
    _, e = jnp.frexp(scale)  # scale = m 2^e with m in [1/2, 1)
    e = jnp.clip(e, 2 - info.maxexp, info.maxexp - 2)
    int_dtype = jnp.int32 if info.bits == 32 else jnp.int64

    def power(exponent):
        # The bit pattern of 2^exponent: biased exponent, zero mantissa.
        biased = exponent.astype(int_dtype) + (info.maxexp - 1)
        return jax.lax.bitcast_convert_type(biased << info.nmant, scale.dtype)

    return power(-e), power(e)


def safe_sqrt(x: Array) -> Array:
    """$\\sqrt{x}$ for $x \\geq 0$, with derivative 0 (instead of infinity) at $x = 0$."""
    positive = x > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, x, 1)), 0)


def correlation(q11: Array, q12: Array, q22: Array, clip: bool = True) -> tuple[Array, Array]:
    """Return `(norm, rho)`: $\\sqrt{q_{11} q_{22}}$ and the correlation, clipped to [-1, 1]
    unless `clip` is False.

    Where a variance is zero the correlation is defined as 0 (the kernels multiply it by the
    zero norm), so that values and gradients stay finite for zero inputs.
    """
    # The square roots of the variances are taken before the product: it cannot overflow for
    # very deep networks, and q11, q22 are per-example arrays, cheaper than the product's shape.
    norm = safe_sqrt(q11) * safe_sqrt(q22)
    positive = norm > 0
    rho = jnp.where(positive, q12 / jnp.where(positive, norm, 1), 0)
    if not clip:
        return norm, rho
    return norm, snap_clip(rho)


def snap_clip(rho: Array) -> Array:
    """Clip a correlation to [-1, 1], snapping values within a few ulps of +-1 to +-1.

    The clip is straight-through: rounding can push |rho| a hair above 1, and the clip must not
    zero the gradient there. The snap: arccos(1 - d) ~ sqrt(2 d) turns the rounding error of
    rho (identical inputs give 1 - 1 ulp or so) into an error of sqrt(ulp) (1e-4 in float32),
    while snapping changes a genuine correlation in that band by no more than that amount.
    """
    snap = 1 - 16 * jnp.finfo(rho.dtype).eps
    clipped = jnp.where(jnp.abs(rho) >= snap, jnp.sign(rho), jnp.clip(rho, -1, 1))
    return rho + jax.lax.stop_gradient(clipped - rho)


def homogeneous_correlation(
    q11: Array, q12: Array, q22: Array, store: bool = False
) -> tuple[Array, tuple[Array, Array]]:
    """Return `(rho, norm)`: the correlation, as `correlation` defines it (0 where a variance is
    0, clipped straight-through), and the norm $\\sqrt{q_{11} q_{22}}$ in factors, for the maps
    of positively homogeneous nonlinearities (see `times_norm`).

    Both come from square roots of the per-example variances, so the only operations on full
    kernel-shaped arrays are products (or, with `store`, a division) and the clip. The
    per-example factors are applied one at a time: $1/\\sqrt{q_{11} q_{22}}$ itself leaves
    the float32 range (it is flushed to 0) once the variances pass about 1e37, although the
    correlation and the kernel are still representable. Where a variance is 0, its reciprocal
    square root is taken as the largest finite float: `times_norm` gives 0 up to that float's
    reciprocal, and products in the gradient meet no `0 * inf`. Where a variance has
    overflowed to infinity the correlation is lost; it is taken as the sign of `q12`, so that
    the kernel is an honest infinity (not NaN) when the covariance has overflowed too.

    `store=True` computes the correlation as a division, for a `q12` that is costly to
    recompute. XLA:CPU stores the result of an expensive operation that has several consumers
    once, but copies a cheap one into each of them. The map of a ReLU reads `rho` in three
    fusions (the NNGP, the NTK factor, the square root of 1 - rho^2); after a convolution `q12`
    is a window sum, which each of them would otherwise recompute (a CNN-Flatten kernel was
    1.7x slower). After a `Dense` layer `q12` is one multiply-add of a stored array, and the
    product is faster (storing made an FCN kernel 2x slower).
    """
    if store:
        rho = q12 / (_sqrt_or_inf(q11) * _sqrt_or_inf(q22))
    else:
        rho = (q12 * _inverse_sqrt(q11, 0.0)) * _inverse_sqrt(q22, 0.0)
    # NaN only from inf * 0 (an overflowed variance) or from a NaN input, which sign keeps.
    rho = snap_clip(jnp.where(rho == rho, rho, jnp.sign(q12)))
    largest = float(jnp.finfo(q12.dtype).max)
    return rho, (safe_sqrt(q11), _inverse_sqrt(q22, largest))


def _sqrt_or_inf(x: Array) -> Array:
    """$\\sqrt{x}$ for $x > 0$, infinity (with derivative 0) for $x = 0$: dividing by it gives
    the correlation 0 where a variance is 0. Like `_inverse_sqrt`, it tests the stored
    reciprocal square root, not `x`."""
    r = _inverse_sqrt(x, 0.0)
    positive = r > 0
    return jnp.where(positive, 1 / jnp.where(positive, r, 1), jnp.inf)


def times_norm(g: Array, norm: tuple[Array, Array]) -> Array:
    """$\\sqrt{q_{11} q_{22}}\\, g$ (0 where a variance is 0), computed as
    `g / (rsqrt(q22) / sqrt(q11))` from the factors of `homogeneous_correlation`.

    The NNGP of a positively homogeneous nonlinearity is the norm times a function of the
    correlation. XLA:CPU recomputes cheap elementwise producers (such as the arc-cosine
    polynomial) inside every fusion that consumes them, but stores the result of an expensive
    operation (a division) once. Ending the map with a division therefore keeps each layer's
    NNGP in memory, instead of re-deriving it in every fusion of the following layers (which
    made a 3-layer ReLU FCN kernel about 3x slower).
    """
    sqrt_q11, inverse_sqrt_q22 = norm
    # One division by a kernel-shaped reciprocal norm is what XLA stores (two operations on
    # full-size arrays made the FCN kernel 1.6x slower); where that reciprocal underflows
    # (norms past about 1e37 in float32), the factors are applied one at a time.
    # (A zero variance takes the second form too: 1 / 0 would put 0 * inf in the gradient.)
    positive = sqrt_q11 > 0
    inverse = inverse_sqrt_q22 / jnp.where(positive, sqrt_q11, 1)
    normal = (inverse > 0) & positive
    return jnp.where(normal, g, g * sqrt_q11) / jnp.where(normal, inverse, inverse_sqrt_q22)


def _inverse_sqrt(x: Array, at_zero: float) -> Array:
    """$1/\\sqrt{x}$ for $x > 0$, `at_zero` (with derivative 0) for $x = 0$.

    The test for $x = 0$ reads the stored reciprocal square root, never `x` itself: `x` is
    often a cheap expression (e.g. a convolution's window sum of the per-example variances)
    that XLA:CPU would otherwise recompute for every kernel entry of the fusion that consumes
    the result, N2 times per example. The gradient stays finite: the `where`s route the
    non-finite derivative of `rsqrt` at the replaced entries to constants, not to `x`.
    """
    positive = x > 0
    if at_zero == 0.0:
        return jax.lax.rsqrt(jnp.where(positive, x, jnp.inf))  # rsqrt(inf) = 0
    r = jax.lax.rsqrt(jnp.where(positive, x, 0))  # inf where x = 0
    return jnp.where(r < jnp.inf, r, at_zero)


# Abramowitz & Stegun 4.4.46: arccos(x) = sqrt(1 - x) * p(x) on [0, 1], |error| <= 2e-8.
_AS_4_4_46 = (
    1.5707963050,
    -0.2145988016,
    0.0889789874,
    -0.0501743046,
    0.0308918810,
    -0.0170881256,
    0.0066700901,
    -0.0012624911,
)


def _arccos_polynomial(x: Array) -> Array:
    """arccos on [-1, 1] from a degree-7 polynomial: copy speed, float32-accurate."""
    t = jnp.abs(x)
    p = jnp.asarray(_AS_4_4_46[-1], x.dtype)
    for coefficient in _AS_4_4_46[-2::-1]:
        p = p * t + coefficient
    r = jnp.sqrt(jnp.maximum(1 - t, 0)) * p
    return jnp.where(x < 0, math.pi - r, r)


def _arccos(x: Array) -> Array:
    # XLA's arccos is several times slower than a copy on CPU; the polynomial is as fast as a
    # copy and accurate to float32 precision, but not to float64's, so float64 keeps arccos.
    if x.dtype == jnp.float64:
        return jnp.arccos(x)
    return _arccos_polynomial(x)


@jax.custom_jvp
def arccos_kernel_0(rho: Float[Array, "*shape"]) -> Float[Array, "*shape"]:
    """The degree-0 arc-cosine kernel $J_0(\\rho) = (\\pi - \\arccos\\rho)/\\pi$.

    For standard normals $u, v$ with correlation $\\rho$, $P(u > 0, v > 0) = J_0(\\rho)/2$.
    """
    return (math.pi - _arccos(rho)) / math.pi


@arccos_kernel_0.defjvp
def _arccos_kernel_0_jvp(primals, tangents):
    (rho,), (drho,) = primals, tangents
    # d/drho = 1 / (pi sqrt(1 - rho^2)), infinite at |rho| = 1. There (the diagonal of
    # K(x, x), colinear inputs, or a correlation snapped by `snap_clip`) rho is at its extreme
    # whichever way the inputs move, so its exact tangent is 0; the computed one is a rounding
    # error of a few ulps, which the infinite slope would amplify to sqrt(ulp) (1e-8 in
    # float64, 3e-4 in float32). The tangent is therefore dropped where |rho| = 1.
    inside = jnp.abs(rho) < 1
    one_minus_rho2 = jnp.where(inside, (1 - rho) * (1 + rho), 1)
    slope = jnp.where(inside, 1 / (math.pi * jnp.sqrt(one_minus_rho2)), 0)
    return arccos_kernel_0(rho), slope * drho


@jax.custom_jvp
def arccos_kernel_1(rho: Float[Array, "*shape"]) -> Float[Array, "*shape"]:
    """The degree-1 arc-cosine kernel
    $J_1(\\rho) = (\\sqrt{1-\\rho^2} + (\\pi - \\arccos\\rho)\\rho)/\\pi$.

    $E[\\max(u,0)\\max(v,0)] = J_1(\\rho)/2$ for standard normals with correlation $\\rho$; its
    derivative is $J_0(\\rho)$, finite everywhere on [-1, 1].
    """
    # (1 - rho)(1 + rho) is exact near |rho| = 1, where 1 - rho^2 loses the low bits of rho.
    s = jnp.sqrt(jnp.maximum((1 - rho) * (1 + rho), 0))
    return (s + (math.pi - _arccos(rho)) * rho) / math.pi


@arccos_kernel_1.defjvp
def _arccos_kernel_1_jvp(primals, tangents):
    (rho,), (drho,) = primals, tangents
    return arccos_kernel_1(rho), arccos_kernel_0(rho) * drho


def arcsin(x: Array, one_minus_x2: Array | None = None) -> Array:
    """$\\arcsin$ on [-1, 1]; in float32 from polynomials that run at copy speed (see `_arccos`).

    Near $|x| = 1$ the derivative of arcsin is infinite, and rounding $x$ alone costs
    $\\sqrt{\\epsilon}$ of accuracy. A caller that knows $1 - x^2$ without cancellation passes
    it as `one_minus_x2`; for $|x| > 1/2$ the result is then computed from it alone, as
    $\\pi/2 - 2\\arcsin\\sqrt{(1 - x^2)/(2(1 + |x|))}$, to working precision.
    """
    if one_minus_x2 is None:
        if x.dtype == jnp.float64:
            return jnp.arcsin(x)
        return _arcsin_polynomial(x)
    # (1 - |x|) / 2 = (1 - x^2) / (2 (1 + |x|)), without the rounding of 1 - |x|.
    half_versine = jnp.maximum(one_minus_x2, 0) / (2 * (1 + jnp.abs(x)))
    return _arcsin_folded(x, half_versine, jnp.arcsin if x.dtype == jnp.float64 else _arcsin_small)


def _arcsin_folded(x: Array, half_versine: Array, small: Callable[[Array], Array]) -> Array:
    """$\\arcsin x$ from `small`, an arcsin accurate on [0, 1/2]: for $|x| > 1/2$,
    $\\arcsin |x| = \\pi/2 - 2 \\arcsin \\sqrt{h}$ with $h = (1 - |x|)/2$ (`half_versine`, at
    least 0), which keeps relative accuracy near $|x| = 1$."""
    t = jnp.abs(x)
    large = t > 0.5
    r = small(jnp.where(large, jnp.sqrt(half_versine), t))
    r = jnp.where(large, math.pi / 2 - 2 * r, r)
    return jnp.where(x < 0, -r, r)


# Odd polynomial for arcsin on [-1/2, 1/2] in powers of z = x^2 (the Cephes single-precision
# form), accurate to float32 rounding.
_ARCSIN_SMALL = (
    1.6666752422e-1,
    7.4953002686e-2,
    4.5470025998e-2,
    2.4181311049e-2,
    4.2163199048e-2,
)


def _arcsin_polynomial(x: Array) -> Array:
    return _arcsin_folded(x, jnp.maximum(1 - jnp.abs(x), 0) / 2, _arcsin_small)


def _arcsin_small(y: Array) -> Array:
    """arcsin on [0, 1/2] from the polynomial."""
    z = y * y
    p = jnp.asarray(_ARCSIN_SMALL[-1], y.dtype)
    for coefficient in _ARCSIN_SMALL[-2::-1]:
        p = p * z + coefficient
    return y + y * z * p


def arccos_kernel(degree: int, rho: Float[Array, "*shape"]) -> Float[Array, "*shape"]:
    """The arc-cosine kernel of degree $n$, $J_n(\\theta)/\\pi$ with $\\theta = \\arccos\\rho$.

    For standard normals $u, v$ with correlation $\\rho$,
    $E[u_+^n v_+^n] = J_n(\\theta) / (2\\pi)$ (Cho & Saul 2009), where $u_+ = \\max(u, 0)$ and
    $u_+^0$ is the step function. $J_n$ is $A_n(\\rho)\\sqrt{1-\\rho^2} + B_n(\\rho)(\\pi-\\theta)$
    with polynomials $A_n, B_n$ (see `_arccos_polynomials`). Its derivative is
    $n^2 J_{n-1}/\\pi$ (Price's theorem), finite on [-1, 1] for $n \\geq 1$.
    """
    if degree == 0:
        return arccos_kernel_0(rho)
    if degree == 1:
        return arccos_kernel_1(rho)
    return _arccos_kernel_high(degree, rho)


@ft.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _arccos_kernel_high(degree: int, rho: Array) -> Array:
    a, b = _arccos_polynomials(degree)
    s = jnp.sqrt(jnp.maximum((1 - rho) * (1 + rho), 0))
    return (_horner(a, rho) * s + _horner(b, rho) * (math.pi * arccos_kernel_0(rho))) / math.pi


@_arccos_kernel_high.defjvp
def _arccos_kernel_high_jvp(degree, primals, tangents):
    (rho,), (drho,) = primals, tangents
    slope = degree**2 * arccos_kernel(degree - 1, rho)
    return _arccos_kernel_high(degree, rho), slope * drho


def _horner(coefficients: tuple[float, ...], x: Array) -> Array:
    p = jnp.zeros_like(x)
    for c in reversed(coefficients):
        p = p * x + c
    return p


@ft.cache
def _arccos_polynomials(degree: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The coefficients (lowest power first) of $A_n, B_n$ with $J_n = A_n s + B_n \\psi$.

    Here $s = \\sqrt{1-\\rho^2}$ and $\\psi = \\pi - \\arccos\\rho$; $J_0 = \\psi$. Since
    $J_n' = n^2 J_{n-1}$ and $J_n(-1) = 0$, $J_n = n^2 (C s + D \\psi)$ where
    $(C s + D\\psi)' = A_{n-1} s + B_{n-1}\\psi$: $D' = B_{n-1}$ and
    $C'(1-\\rho^2) - \\rho C + D = A_{n-1}(1-\\rho^2)$, a triangular system for the
    coefficients of $C$ and the constant of $D$, solved exactly in rationals.
    """
    a: list[Fraction] = []
    b: list[Fraction] = [Fraction(1)]
    for n in range(1, degree + 1):
        d = [Fraction(0)] + [c / (k + 1) for k, c in enumerate(b)]  # D without its constant
        r = [Fraction(0)] * max(len(a) + 2, len(d))  # R = A (1 - rho^2) - D
        for k, c in enumerate(a):
            r[k] += c
            r[k + 2] -= c
        for k, c in enumerate(d):
            r[k] -= c
        # Coefficient of rho^j in C'(1-rho^2) - rho C: (j+1) c_{j+1} - j c_{j-1}.
        top = len(r) - 1
        cs = [Fraction(0)] * (top + 2)
        for j in range(top, 0, -1):
            cs[j - 1] = ((j + 1) * cs[j + 1] - r[j]) / j
        d[0] = r[0] - cs[1]
        a = [n * n * c for c in cs]
        b = [n * n * c for c in d]
    return _trimmed(a), _trimmed(b)


def _trimmed(coefficients: list[Fraction]) -> tuple[float, ...]:
    while coefficients and coefficients[-1] == 0:
        coefficients = coefficients[:-1]
    return tuple(float(c) for c in coefficients)
