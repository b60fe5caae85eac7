"""Polynomial nonlinearities with closed-form kernels: `Monomial`, `RectifiedMonomial`,
`Polynomial`, `Hermite`."""

import math
from collections.abc import Sequence
from numbers import Number

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from ..limits._elementwise import AbstractElementwiseRule, EntryMap, map_entries, require_gaussian
from ..limits._kernel import Kernel
from ..limits._math import arccos_kernel, correlation
from ..limits._registry import Requirements, register
from ._hyperparameters import frozen, real_array


def check_degree(name: str, degree: int) -> int:
    """Return `degree` if it is a non-negative integer, else raise an error naming `name`."""
    if isinstance(degree, bool) or not isinstance(degree, int | np.integer) or degree < 0:
        raise ValueError(f"`{name}` must be a non-negative integer, got {degree!r}.")
    return int(degree)


class Monomial(eqx.Module):
    """The monomial $\\phi(x) = x^n$.

    Kernel rule (Isserlis' theorem), with $P = \\mathcal{K}_{11}\\mathcal{K}_{22}$:
    $\\mathcal{K}' = E[u^n v^n] = \\sum_{l \\equiv n \\ (2)} \\binom{n}{l}^2 l!\\,((n-l-1)!!)^2\\,
    \\mathcal{K}_{12}^l P^{(n-l)/2}$ and $\\Theta' = \\Theta\\, n^2 E[u^{n-1} v^{n-1}]$. It is the
    [`eqntk.nn.Polynomial`][] rule for one coefficient. (neural-tangents accepts degrees 0 to 5;
    any degree works here.)
    """

    degree: int = eqx.field(static=True)

    def __init__(self, degree: int):
        """**Arguments:**

        - `degree`: the power $n$, a non-negative integer.

        **Example:**

        ```python
        import jax.numpy as jnp
        from eqntk import nn

        assert nn.Monomial(3)(jnp.array([2.0])).tolist() == [8.0]
        ```
        """
        self.degree = check_degree("degree", degree)

    def __call__(
        self, x: Float[Array, "*shape"], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, "*shape"]:
        """Apply the nonlinearity elementwise to one example `x` of any shape."""
        return x**self.degree


class RectifiedMonomial(eqx.Module):
    """The rectified monomial $\\phi(x) = x^n$ for $x \\geq 0$, else 0 (for $n = 0$: the step
    function $\\mathbb{1}[x \\geq 0]$).

    Kernel rule, with the arc-cosine kernels $J_n$ of Cho & Saul 2009 and
    $\\theta = \\arccos(\\mathcal{K}_{12}/\\sqrt{\\mathcal{K}_{11}\\mathcal{K}_{22}})$:
    $\\mathcal{K}' = \\frac{(\\mathcal{K}_{11}\\mathcal{K}_{22})^{n/2}}{2\\pi} J_n(\\theta)$ and
    $\\Theta' = \\Theta\\,\\frac{n^2(\\mathcal{K}_{11}\\mathcal{K}_{22})^{(n-1)/2}}{2\\pi}
    J_{n-1}(\\theta)$
    (0 for $n = 0$). Finite at $\\theta = 0$, where neural-tangents 0.6.5 returns NaN.
    """

    degree: int = eqx.field(static=True)

    def __init__(self, degree: int):
        """**Arguments:**

        - `degree`: the power $n$, a non-negative integer.

        **Example:**

        ```python
        import jax.numpy as jnp
        from eqntk import nn

        assert nn.RectifiedMonomial(2)(jnp.array([-2.0, 3.0])).tolist() == [0.0, 9.0]
        ```
        """
        self.degree = check_degree("degree", degree)

    def __call__(
        self, x: Float[Array, "*shape"], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, "*shape"]:
        """Apply the nonlinearity elementwise to one example `x` of any shape."""
        return jnp.where(x >= 0, x**self.degree, 0)


class Polynomial(eqx.Module):
    """The polynomial $\\phi(x) = \\sum_k c_k x^k$.

    Kernel rule: expanding $\\phi(\\sigma z)$ in normalised Hermite polynomials
    $\\mathrm{He}_l(z)/\\sqrt{l!}$ (Mehler's formula),
    $\\mathcal{K}' = \\sum_l R_l(\\mathcal{K}_{11}) R_l(\\mathcal{K}_{22}) \\mathcal{K}_{12}^l$ and
    $\\Theta' = \\Theta \\sum_{l \\geq 1} l\\, R_l(\\mathcal{K}_{11}) R_l(\\mathcal{K}_{22})
    \\mathcal{K}_{12}^{l-1}$, where
    $R_l(q) = \\sum_i c_{2i+l} \\frac{(2i+l)!}{2^i i! \\sqrt{l!}} q^i$ is a polynomial:
    no square roots or divisions, so the map is finite and smooth everywhere.
    """

    coef: Float[Array, " n"]

    def __init__(self, coef: Sequence[float] | ArrayLike):
        """**Arguments:**

        - `coef`: the coefficients $c_0, c_1, \\dots$, constant term first (the order of
          `numpy.polynomial.Polynomial`). They are array leaves like other hyperparameters.

        **Example:**

        ```python
        import jax.numpy as jnp
        from eqntk import nn

        assert nn.Polynomial([1.0, 0.0, 2.0])(jnp.array([3.0])).tolist() == [19.0]
        ```
        """
        array = real_array("coef", coef, "a 1-D sequence of real coefficients")
        if array.ndim != 1 or array.shape[0] == 0:
            raise ValueError(
                f"`coef` must be a non-empty 1-D sequence of coefficients, got shape {array.shape}."
            )
        self.coef = array

    def __call__(
        self, x: Float[Array, "*shape"], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, "*shape"]:
        """Apply the nonlinearity elementwise to one example `x` of any shape."""
        coef = frozen(self.coef).astype(x.dtype)
        y = jnp.zeros_like(x)
        for k in range(coef.shape[0] - 1, -1, -1):
            y = y * x + coef[k]
        return y


class Hermite(eqx.Module):
    """The normalised probabilists' Hermite polynomial $\\phi(x) = \\mathrm{He}_n(x)/\\sqrt{n!}$.

    Kernel rule, **defined** (as in neural-tangents) by $\\mathcal{K}' = \\mathcal{K}_{12}^n$ and
    $\\Theta' = n\\,\\mathcal{K}_{12}^{n-1}\\Theta$ (0 for $n = 0$). This is
    $E[\\phi(u)\\phi(v)]$ only for unit-variance inputs, e.g. after a `LayerNorm`.
    """

    degree: int = eqx.field(static=True)

    def __init__(self, degree: int):
        """**Arguments:**

        - `degree`: the degree $n$, a non-negative integer.

        **Example:**

        ```python
        import jax.numpy as jnp
        from eqntk import nn

        assert nn.Hermite(2)(jnp.array([1.0])).tolist() == [0.0]
        ```
        """
        self.degree = check_degree("degree", degree)

    def __call__(
        self, x: Float[Array, "*shape"], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, "*shape"]:
        """Apply the nonlinearity elementwise to one example `x` of any shape."""
        # The three-term recurrence He_{k+1} = x He_k - k He_{k-1}.
        previous, current = jnp.zeros_like(x), jnp.ones_like(x)
        for k in range(self.degree):
            previous, current = current, x * current - k * previous
        return current / math.sqrt(math.factorial(self.degree))


# Kernel rules -------------------------------------------------------------------------------------
# Kernel rules of the polynomial nonlinearities: `Monomial`, `RectifiedMonomial`, `Polynomial`,
# `Hermite`.


def polynomial_entries(coef: Sequence) -> EntryMap:
    """The entry map of $\\sum_k c_k x^k$ (see `nn.Polynomial`); `coef` holds scalars, and
    coefficients that are the Python number 0 are skipped."""
    n = len(coef)

    def hermite_coefficient(q, order):
        # R_l(q) = sum_i c_{2i+l} (2i+l)! / (2^i i! sqrt(l!)) q^i, a polynomial in q.
        terms = []
        for i in range((n - 1 - order) // 2 + 1):
            c = coef[2 * i + order]
            if not (isinstance(c, Number) and c == 0):
                terms.append((i, c * (math.factorial(2 * i + order) / (2**i * math.factorial(i)))))
        if not terms:
            return None
        return sum(c * q**i for i, c in terms) / math.sqrt(math.factorial(order))

    def fn(q11, q12, q22, ntk):
        products = {}
        for order in range(n):
            r11, r22 = hermite_coefficient(q11, order), hermite_coefficient(q22, order)
            if r11 is not None and r22 is not None:
                products[order] = r11 * r22
        nngp = sum(t * q12**order for order, t in products.items())
        nngp = nngp + jnp.zeros_like(q12)  # a broadcast array even for constant polynomials
        if ntk is None:
            return nngp, None
        dot = sum(order * t * q12 ** (order - 1) for order, t in products.items() if order > 0)
        return nngp, ntk * dot

    return fn


@register(Polynomial)
class PolynomialRule(AbstractElementwiseRule[Polynomial]):
    """Kernel rule of [`eqntk.nn.Polynomial`][]."""

    def __call__(self, layer: Polynomial, k: Kernel, wanted: Requirements) -> Kernel:
        require_gaussian(k, layer)
        coef = k.cast(layer.coef)
        return map_entries(k, polynomial_entries([coef[i] for i in range(coef.shape[0])]))


@register(Monomial)
class MonomialRule(AbstractElementwiseRule[Monomial]):
    """Kernel rule of [`eqntk.nn.Monomial`][]: the polynomial with one coefficient."""

    def __call__(self, layer: Monomial, k: Kernel, wanted: Requirements) -> Kernel:
        require_gaussian(k, layer)
        return map_entries(k, polynomial_entries([0.0] * layer.degree + [1.0]))


@register(RectifiedMonomial)
class RectifiedMonomialRule(AbstractElementwiseRule[RectifiedMonomial]):
    """Kernel rule of [`eqntk.nn.RectifiedMonomial`][]."""

    def __call__(self, layer: RectifiedMonomial, k: Kernel, wanted: Requirements) -> Kernel:
        require_gaussian(k, layer)
        n = layer.degree

        def fn(q11, q12, q22, ntk):
            norm, rho = correlation(q11, q12, q22)
            # E[u_+^n v_+^n] = (q11 q22)^(n/2) J_n / (2 pi), and arccos_kernel is J_n / pi.
            nngp = norm**n * arccos_kernel(n, rho) / 2
            if ntk is None:
                return nngp, None
            if n == 0:
                return nngp, jnp.zeros_like(ntk)
            return nngp, ntk * (n**2 * norm ** (n - 1) * arccos_kernel(n - 1, rho) / 2)

        return map_entries(k, fn)


@register(Hermite)
class HermiteRule(AbstractElementwiseRule[Hermite]):
    """Kernel rule of [`eqntk.nn.Hermite`][] (defined on the covariances alone)."""

    def __call__(self, layer: Hermite, k: Kernel, wanted: Requirements) -> Kernel:
        require_gaussian(k, layer)
        n = layer.degree

        def fn(q11, q12, q22, ntk):
            nngp = q12**n
            if ntk is None:
                return nngp, None
            return nngp, jnp.zeros_like(ntk) if n == 0 else ntk * (n * q12 ** (n - 1))

        return map_entries(k, fn)
