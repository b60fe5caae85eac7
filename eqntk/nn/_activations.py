"""Elementwise nonlinearities with closed-form kernels: the ReLU family, `Erf`, `Gelu`, `Sign`."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from ..limits._elementwise import AbstractElementwiseRule, EntryMap, map_entries, require_gaussian
from ..limits._kernel import Kernel
from ..limits._math import (
    arccos_kernel_0,
    arccos_kernel_1,
    arcsin,
    correlation,
    homogeneous_correlation,
    power_of_two_scales,
    times_norm,
)
from ..limits._registry import Requirements, register
from ._hyperparameters import frozen, hyperparameter
from ._nonlinearity import AbstractNonlinearity


class ABRelu(AbstractNonlinearity):
    """The two-slope ReLU $\\phi(x) = a \\min(x, 0) + b \\max(x, 0)$.

    Special cases: `Relu` ($a=0, b=1$), `LeakyRelu` ($a=\\alpha, b=1$), `Abs` ($a=-1, b=1$),
    the identity ($a=b=1$).

    Kernel rule, with $\\rho = \\mathcal{K}_{12}/\\sqrt{\\mathcal{K}_{11}\\mathcal{K}_{22}}$ and
    $\\theta = \\arccos\\rho$ (the arc-cosine kernels of Cho & Saul 2009):
    $\\mathcal{K}' = \\frac{(a-b)^2}{2\\pi}\\sqrt{\\mathcal{K}_{11}\\mathcal{K}_{22}}
    (\\sin\\theta + (\\pi-\\theta)\\cos\\theta) + ab\\,\\mathcal{K}_{12}$ and
    $\\Theta' = \\Theta \\left(\\frac{(a-b)^2}{2\\pi}(\\pi - \\theta) + ab\\right)$.
    """

    a: Float[Array, ""]
    b: Float[Array, ""]
    do_stabilize: bool = eqx.field(static=True)

    def __init__(self, a: ArrayLike, b: ArrayLike, do_stabilize: bool = False):
        """**Arguments:**

        - `a`: the slope for negative inputs.
        - `b`: the slope for positive inputs.
        - `do_stabilize`: for very deep networks: the kernel rule divides the covariances by
          their largest entry before the map and multiplies the result back, which keeps the
          intermediate products in floating-point range. The map is positively homogeneous,
          so the result is the same up to rounding (the finite network is unaffected).
          eqntk's maps never multiply two variances together (they scale by reciprocal
          square roots of each), so deep float32 networks stay accurate without it as long
          as the kernel itself is representable (variances up to about 1e38); past that
          range no rescaling of one layer helps and the kernel overflows to `inf`.

        **Example:**

        ```python
        import jax.numpy as jnp
        from eqntk import nn

        assert nn.ABRelu(-0.5, 2.0)(jnp.array([-2.0, 3.0])).tolist() == [1.0, 6.0]
        ```
        """
        self.a = hyperparameter("a", a)
        self.b = hyperparameter("b", b)
        self.do_stabilize = do_stabilize

    def phi(self, x: Array) -> Array:
        return _abrelu(x, frozen(self.a), frozen(self.b))


class Relu(AbstractNonlinearity):
    """The rectifier $\\phi(x) = \\max(x, 0)$; its kernel is the arc-cosine kernel (see
    [`eqntk.nn.ABRelu`][] with $a=0, b=1$).

    `do_stabilize` (default `False`): see [`eqntk.nn.ABRelu`][]; for very deep networks.

    **Example:**

    ```python
    import jax.numpy as jnp
    from eqntk import nn

    assert nn.Relu()(jnp.array([-1.0, 2.0])).tolist() == [0.0, 2.0]
    ```
    """

    do_stabilize: bool = eqx.field(default=False, static=True)

    def phi(self, x: Array) -> Array:
        return jax.nn.relu(x)


class LeakyRelu(AbstractNonlinearity):
    """The leaky rectifier: $x$ for $x > 0$, otherwise $\\alpha x$ (see [`eqntk.nn.ABRelu`][]
    with $a=\\alpha, b=1$)."""

    alpha: Float[Array, ""]
    do_stabilize: bool = eqx.field(static=True)

    def __init__(self, alpha: ArrayLike = 0.01, do_stabilize: bool = False):
        """**Arguments:**

        - `alpha`: the slope for negative inputs.
        - `do_stabilize`: see [`eqntk.nn.ABRelu`][]; for very deep networks.

        **Example:**

        ```python
        import jax.numpy as jnp
        from eqntk import nn

        assert nn.LeakyRelu(0.5)(jnp.array([-2.0, 2.0])).tolist() == [-1.0, 2.0]
        ```
        """
        self.alpha = hyperparameter("alpha", alpha)
        self.do_stabilize = do_stabilize

    def phi(self, x: Array) -> Array:
        return _abrelu(x, frozen(self.alpha), 1.0)


class Abs(AbstractNonlinearity):
    """The absolute value $\\phi(x) = |x|$ (see [`eqntk.nn.ABRelu`][] with $a=-1, b=1$).

    `do_stabilize` (default `False`): see [`eqntk.nn.ABRelu`][]; for very deep networks.

    **Example:**

    ```python
    import jax.numpy as jnp
    from eqntk import nn

    assert nn.Abs()(jnp.array([-1.5, 2.0])).tolist() == [1.5, 2.0]
    ```
    """

    do_stabilize: bool = eqx.field(default=False, static=True)

    def phi(self, x: Array) -> Array:
        return jnp.abs(x)


class Erf(AbstractNonlinearity):
    """The scaled error function $\\phi(x) = a\\,\\mathrm{erf}(b x) + c$.

    Kernel rule (Williams 1997): with $\\tilde q_{ij} = 2 b^2 \\mathcal{K}_{ij}$,
    $\\mathcal{K}' = \\frac{2a^2}{\\pi}\\arcsin\\frac{\\tilde q_{12}}
    {\\sqrt{(1+\\tilde q_{11})(1+\\tilde q_{22})}} + c^2$ and
    $\\Theta' = \\Theta\\,\\frac{4a^2b^2}{\\pi}
    \\left((1+\\tilde q_{11})(1+\\tilde q_{22}) - \\tilde q_{12}^2\\right)^{-1/2}$.
    """

    a: Float[Array, ""]
    b: Float[Array, ""]
    c: Float[Array, ""]

    def __init__(self, a: ArrayLike = 1.0, b: ArrayLike = 1.0, c: ArrayLike = 0.0):
        """**Arguments:**

        - `a`: the output scale.
        - `b`: the input scale.
        - `c`: the output shift.

        **Example:**

        ```python
        import jax.numpy as jnp
        from eqntk import nn

        assert nn.Erf(a=2.0, c=1.0)(jnp.zeros(3)).tolist() == [1.0, 1.0, 1.0]
        ```
        """
        self.a = hyperparameter("a", a)
        self.b = hyperparameter("b", b)
        self.c = hyperparameter("c", c)

    def phi(self, x: Array) -> Array:
        return frozen(self.a) * jax.scipy.special.erf(frozen(self.b) * x) + frozen(self.c)


# The constant of `SigmoidLike`, chosen (by neural-tangents) to minimise the squared distance
# between the function and the logistic sigmoid on [-5, 5].
SIGMOID_LIKE_SCALE = 2.4020563531719796


class SigmoidLike(AbstractNonlinearity):
    """A sigmoid made of the error function, $\\phi(x) = \\mathrm{erf}(x / 2.40206)/2 + 1/2$.

    Its kernel is that of [`eqntk.nn.Erf`][] with $a = 1/2$, $b = 1/2.4020563531719796$,
    $c = 1/2$ (neural-tangents' `Sigmoid_like`).

    **Example:**

    ```python
    import jax.numpy as jnp
    from eqntk import nn

    assert nn.SigmoidLike()(jnp.zeros(2)).tolist() == [0.5, 0.5]
    ```
    """

    def phi(self, x: Array) -> Array:
        return 0.5 * jax.scipy.special.erf(x / SIGMOID_LIKE_SCALE) + 0.5


class Gelu(AbstractNonlinearity):
    """The Gaussian error linear unit $\\phi(x) = x\\,\\Phi(x)$, $\\Phi$ the standard normal CDF.

    Kernel rule (Tsuchida et al. 2020), writing $q_{ij} = \\mathcal{K}_{ij}$,
    $P = (1+q_{11})(1+q_{22})$, $\\Delta = \\sqrt{P - q_{12}^2}$ and
    $\\alpha = \\arcsin(q_{12}/\\sqrt{P})$:
    $\\mathcal{K}' = \\frac{q_{12}}{4} + \\frac{1}{2\\pi}\\left(q_{12}\\alpha +
    \\frac{q_{12}^2 + q_{11}q_{22}\\Delta^2}{P\\Delta}\\right)$ and
    $\\Theta' = \\Theta\\left(\\frac14 + \\frac{\\alpha}{2\\pi} + \\frac{q_{12}}{2\\pi\\Delta}
    \\left(\\frac{1}{\\Delta^2} + \\frac{1 - q_{11}q_{22}}{P} + 1\\right)\\right)$.
    $\\Delta^2 \\geq 1 + q_{11} + q_{22}$, so the map is smooth everywhere.
    """

    approximate: bool = eqx.field(static=True)

    def __init__(self, approximate: bool = False):
        """**Arguments:**

        - `approximate`: whether the finite network uses the $\\tanh$ approximation of GELU
          (`jax.nn.gelu(x, approximate=True)`). The kernel is always that of the exact GELU
          (as in neural-tangents), so with `approximate=True` the finite network and its
          limit differ slightly (the two functions differ by at most about $10^{-3}$).

        **Example:**

        ```python
        import jax.numpy as jnp
        from eqntk import nn

        assert nn.Gelu()(jnp.array([0.0])).tolist() == [0.0]
        ```
        """
        self.approximate = approximate

    def phi(self, x: Array) -> Array:
        return jax.nn.gelu(x, approximate=self.approximate)


class Sign(AbstractNonlinearity):
    """The sign function $\\phi(x) = \\mathrm{sign}(x)$.

    Kernel rule, with $\\rho = \\mathcal{K}_{12}/\\sqrt{\\mathcal{K}_{11}\\mathcal{K}_{22}}$:
    $\\mathcal{K}' = \\frac{2}{\\pi}\\arcsin\\rho$ (0 where a variance is 0). The derivative is 0
    almost everywhere, so $\\Theta' = 0$: the layers below a `Sign` do not train.

    **Example:**

    ```python
    import jax.numpy as jnp
    from eqntk import nn

    assert nn.Sign()(jnp.array([-2.0, 0.0, 3.0])).tolist() == [-1.0, 0.0, 1.0]
    ```
    """

    def phi(self, x: Array) -> Array:
        return jnp.sign(x)


def _abrelu(x: Array, a: ArrayLike, b: ArrayLike) -> Array:
    return jnp.asarray(a * jnp.minimum(x, 0) + b * jnp.maximum(x, 0))


# Kernel rules -------------------------------------------------------------------------------------
# Kernel rules of the ReLU family, `Erf`, `SigmoidLike`, `Gelu` and `Sign`.


def abrelu_entries(k: Kernel, a: Array | float, b: Array | float) -> EntryMap:
    """The entry map of $\\phi(x) = a\\min(x,0) + b\\max(x,0)$ (see `nn.ABRelu`)."""
    a, b = k.cast(a), k.cast(b)
    half_gap = (a - b) ** 2 / 2
    ab = a * b
    # With spatial axes, the covariances usually come from a window sum: stored as a division
    # (see "Choices made for XLA:CPU" in `eqntk/limits/_math.py`).
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
    # dividing the covariances by about their largest entry and multiplying back changes nothing
    # but the range of the intermediate products. The scale is a power of two (exact products,
    # whatever XLA fuses) and a constant for autodiff: by homogeneity its derivative terms
    # cancel exactly. An overflowed kernel keeps scale 1: inf / inf would turn its honest
    # infinities into NaN.
    down, up = power_of_two_scales(jax.lax.stop_gradient(jnp.max(jnp.abs(k.nngp))))
    out = map_entries(k.map_covariances(lambda c: c * down, lambda t: t), fn)
    return out.map_covariances(lambda c: c * up, lambda t: t)


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
    # Where q11 = q12 = q22 (the diagonal of K(x, x)) the determinant is exactly 0, but a
    # compiler that fuses a product into the subtraction (an FMA) leaves the first product's
    # rounding error, which is larger than 1 - t^2 itself at large variances.
    det = jnp.where((q12 == q11) & (q12 == q22), 0, det)
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
