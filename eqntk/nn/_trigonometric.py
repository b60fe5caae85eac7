"""Sinusoidal nonlinearities with closed-form kernels: `Sin`, `Cos`, `Rbf`, `Gabor`."""

import abc
import math

import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from ..limits._elementwise import AbstractElementwiseRule, EntryMap, map_entries, require_gaussian
from ..limits._kernel import Kernel
from ..limits._registry import Requirements, register
from ._hyperparameters import frozen, hyperparameter
from ._nonlinearity import AbstractNonlinearity


class AbstractSinusoid(AbstractNonlinearity):
    """A sinusoid $\\phi(x) = a \\sin(b x + c)$ or $a \\cos(b x + c)$: [`eqntk.nn.Sin`][] and
    [`eqntk.nn.Cos`][], which share one kernel rule (registered here)."""

    a: Float[Array, ""]
    b: Float[Array, ""]
    c: Float[Array, ""]

    def __init__(self, a: ArrayLike = 1.0, b: ArrayLike = 1.0, c: ArrayLike = 0.0):
        """**Arguments:**

        - `a`: the output scale.
        - `b`: the input scale (frequency).
        - `c`: the phase shift.
        """
        self.a = hyperparameter("a", a)
        self.b = hyperparameter("b", b)
        self.c = hyperparameter("c", c)

    @property
    @abc.abstractmethod
    def is_cosine(self) -> bool:
        """Whether $\\phi$ is the cosine: the sine with phase $c + \\pi/2$."""


class Sin(AbstractSinusoid):
    """The sinusoid $\\phi(x) = a \\sin(b x + c)$.

    Kernel rule, with $S = \\mathcal{K}_{11} + \\mathcal{K}_{22}$ and
    $e_\\pm = \\exp\\left(b^2 (\\pm\\mathcal{K}_{12} - S/2)\\right)$:
    $\\mathcal{K}' = \\frac{a^2}{2}\\left(e_+ - \\cos(2c)\\, e_-\\right)$ and
    $\\Theta' = \\Theta\\,\\frac{a^2 b^2}{2}\\left(e_+ + \\cos(2c)\\, e_-\\right)$.

    **Example:**

    ```python
    import jax.numpy as jnp
    from eqntk import nn

    assert nn.Sin(a=2.0)(jnp.zeros(2)).tolist() == [0.0, 0.0]
    ```
    """

    __init__ = AbstractSinusoid.__init__  # (for type checkers: Equinox inherits it anyway)

    @property
    def is_cosine(self) -> bool:
        """`False`."""
        return False

    def phi(self, x: Array) -> Array:
        return frozen(self.a) * jnp.sin(frozen(self.b) * x + frozen(self.c))


class Cos(AbstractSinusoid):
    """The sinusoid $\\phi(x) = a \\cos(b x + c)$: [`eqntk.nn.Sin`][] with phase $c + \\pi/2$.

    Its kernel is that of `Sin` with $\\cos(2c)$ replaced by $-\\cos(2c)$.

    **Example:**

    ```python
    import jax.numpy as jnp
    from eqntk import nn

    assert nn.Cos(a=2.0)(jnp.zeros(2)).tolist() == [2.0, 2.0]
    ```
    """

    __init__ = AbstractSinusoid.__init__  # (for type checkers: Equinox inherits it anyway)

    @property
    def is_cosine(self) -> bool:
        """`True`."""
        return True

    def phi(self, x: Array) -> Array:
        return frozen(self.a) * jnp.cos(frozen(self.b) * x + frozen(self.c))


class Rbf(AbstractNonlinearity):
    """The sinusoid $\\phi(x) = \\sqrt{2}\\sin(\\sqrt{2\\gamma}\\,x + \\pi/4)$, whose NNGP kernel is
    the squared-exponential (RBF) kernel of its inputs.

    Kernel rule: $\\mathcal{K}' = \\exp\\left(-\\gamma(\\mathcal{K}_{11} + \\mathcal{K}_{22} -
    2\\mathcal{K}_{12})\\right)$, i.e. $\\exp(-\\gamma\\|x_1 - x_2\\|^2/d)$ after a `Dense` layer on
    inputs of dimension $d$ with `W_std=1`, and $\\Theta' = 2\\gamma\\,\\mathcal{K}'\\,\\Theta$.
    """

    gamma: Float[Array, ""]

    def __init__(self, gamma: ArrayLike = 1.0):
        """**Arguments:**

        - `gamma`: the inverse squared length scale, $\\gamma = 1/(2\\ell^2)$; non-negative.

        **Example:**

        ```python
        import jax.numpy as jnp
        from eqntk import nn

        assert abs(nn.Rbf(0.5)(jnp.zeros(1))[0] - 1.0) < 1e-6
        ```
        """
        self.gamma = hyperparameter("gamma", gamma, nonnegative=True)

    def phi(self, x: Array) -> Array:
        return math.sqrt(2) * jnp.sin(jnp.sqrt(2 * frozen(self.gamma)) * x + math.pi / 4)


class Gabor(AbstractNonlinearity):
    """The Gabor function $\\phi(x) = e^{-x^2}\\sin x$.

    Kernel rule, with $S = \\mathcal{K}_{11} + \\mathcal{K}_{22}$,
    $D = 4(\\mathcal{K}_{11}\\mathcal{K}_{22} - \\mathcal{K}_{12}^2)$ and $M = 1 + 2S + D \\geq 1$
    (a Gaussian integral):
    $\\mathcal{K}' = \\frac{1}{2\\sqrt M}\\exp\\left(-\\frac{S + D}{2M}\\right)
    \\left(e^{\\mathcal{K}_{12}/M} - e^{-\\mathcal{K}_{12}/M}\\right)$, and $\\Theta'$ is $\\Theta$
    times $\\partial\\mathcal{K}'/\\partial\\mathcal{K}_{12} = E[\\phi'(u)\\phi'(v)]$.

    **Example:**

    ```python
    import jax.numpy as jnp
    from eqntk import nn

    assert nn.Gabor()(jnp.zeros(2)).tolist() == [0.0, 0.0]
    ```
    """

    def phi(self, x: Array) -> Array:
        return jnp.exp(-(x**2)) * jnp.sin(x)


# Kernel rules -------------------------------------------------------------------------------------
# Kernel rules of the sinusoidal nonlinearities: `Sin`, `Cos`, `Rbf`, `Gabor`.


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


@register(AbstractSinusoid)
class SinusoidRule(AbstractElementwiseRule[AbstractSinusoid]):
    """Kernel rule of [`eqntk.nn.Sin`][] and [`eqntk.nn.Cos`][] (`Sin` with phase $c + \\pi/2$:
    $\\cos 2c$ flips)."""

    def __call__(self, layer: AbstractSinusoid, k: Kernel, wanted: Requirements) -> Kernel:
        require_gaussian(k, layer)
        a, b, c = k.cast(layer.a), k.cast(layer.b), k.cast(layer.c)
        cos_2c = -jnp.cos(2 * c) if layer.is_cosine else jnp.cos(2 * c)
        return map_entries(k, sinusoid_entries(a**2 / 2, b**2, cos_2c))


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
