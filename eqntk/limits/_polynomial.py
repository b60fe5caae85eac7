"""Kernel rules of the polynomial nonlinearities: `Monomial`, `RectifiedMonomial`, `Polynomial`,
`Hermite`."""

import math
from collections.abc import Sequence
from numbers import Number

import jax.numpy as jnp

from ..nn import Hermite, Monomial, Polynomial, RectifiedMonomial
from ._elementwise import AbstractElementwiseRule, EntryMap, map_entries, require_gaussian
from ._kernel import Kernel
from ._math import arccos_kernel, correlation
from ._registry import Requirements, register


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
