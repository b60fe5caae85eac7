"""Hermite expansions of an elementwise function, and sketches of tensor powers.

For $z \\sim N(0, 1)$ and the normalised probabilists' Hermite polynomials
$h_j = \\mathrm{He}_j / \\sqrt{j!}$, a function of a Gaussian of standard deviation $s$ expands
as $\\sigma(s z) = \\sum_j c_j(s)\\, h_j(z)$ with $c_j(s) = E[\\sigma(s z) h_j(z)]$, and Mehler's
formula gives its dual kernel: for unit-variance $(z, z')$ with correlation $\\rho$,
$E[\\sigma(s z) \\sigma(s' z')] = \\sum_j c_j(s) c_j(s') \\rho^j$.
"""

import functools as ft
import math
from collections.abc import Callable

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float


# Quadrature for the coefficients: Gauss-Legendre on [-10, 0] and [0, 10] against the normal
# density (the mass beyond 10 is 1.5e-23). Splitting at 0 makes a kink there (the ReLU
# family, rectified monomials) cost no accuracy, where Gauss-Hermite converges only
# algebraically on it (1e-3 off for the ReLU's coefficients with 160 nodes).
N_NODES = 96
HALF_WIDTH = 10.0


@ft.cache
def _nodes(n: int) -> tuple[np.ndarray, np.ndarray]:
    t, w = np.polynomial.legendre.leggauss(n)
    z = np.concatenate([(t - 1) * HALF_WIDTH / 2, (t + 1) * HALF_WIDTH / 2])
    w = np.concatenate([w, w]) * HALF_WIDTH / 2
    return z, w * np.exp(-(z**2) / 2) / math.sqrt(2 * math.pi)


def normalised_hermite(z: Float[Array, "*shape"], degree: int) -> Float[Array, "*shape d"]:
    """$h_0(z), \\dots, h_{degree}(z)$ stacked on a new last axis (a stable recurrence)."""
    hs = [jnp.ones_like(z), z]
    for j in range(1, degree):
        hs.append((z * hs[j] - math.sqrt(j) * hs[j - 1]) / math.sqrt(j + 1))
    return jnp.stack(hs[: degree + 1], axis=-1)


def hermite_coefficients(
    fn: Callable[[Array], Array], s: Float[Array, " n"], degree: int
) -> Float[Array, "n d"]:
    """$c_j(s)$ for $j = 0, \\dots,$ `degree`, for each standard deviation in `s`."""
    z, w = _nodes(N_NODES)
    z = jnp.asarray(z, s.dtype)
    w = jnp.asarray(w, s.dtype)
    values = fn(s[:, None] * z[None, :])  # (n, nodes)
    h = normalised_hermite(z, degree)  # (nodes, d)
    return (values * w[None, :]) @ h


def derivative_coefficients(c: Float[Array, "n d"], s: Float[Array, " n"]) -> Float[Array, "n d-1"]:
    """The coefficients of $\\sigma'(s z)$ from those of $\\sigma(s z)$ (one degree higher).

    Gaussian integration by parts, $E[g'(z) \\mathrm{He}_j(z)] = E[g(z) \\mathrm{He}_{j+1}(z)]$
    with $g(z) = \\sigma(s z)$, gives $E[\\sigma'(s z) h_j(z)] = \\sqrt{j+1}\\, c_{j+1}(s) / s$:
    no derivative of $\\sigma$ is taken, so a step (the ReLU's derivative) costs no accuracy.
    """
    j = jnp.arange(1, c.shape[1], dtype=c.dtype)
    return c[:, 1:] * jnp.sqrt(j)[None, :] / s[:, None]


def product_sketch(v: Float[Array, "n k"], weights: Float[Array, "j m k"]) -> Float[Array, "n m"]:
    """A sketch $P(v)$ of the tensor power $v^{\\otimes j}$: $P(v) \\cdot P(v') \\approx
    (v \\cdot v')^j$, unbiased.

    Each of the $m$ coordinates is $\\prod_{t=1}^{j} (w_{t i} \\cdot v) / \\sqrt{m}$ with
    independent standard normal $w_{t i}$ (a Gaussian tensor random projection), so each
    product has expectation $(v \\cdot v')^j$ and, for unit vectors, variance at most $3^j$.
    """
    m = weights.shape[1]
    out = jnp.ones((v.shape[0], m), v.dtype)
    for t in range(weights.shape[0]):
        out = out * (v @ weights[t].T)
    return out / math.sqrt(m)
