"""Numerically robust special functions for kernel rules.

The arc-cosine kernels of the ReLU family are functions of the correlation
$\\rho = \\mathcal{K}_{12} / \\sqrt{\\mathcal{K}_{11}\\mathcal{K}_{22}}$, which is exactly 1 on the
diagonal of `K(x, x)` and for colinear inputs. There $\\arccos$ and $\\sqrt{1-\\rho^2}$ have
infinite derivatives, although the kernels themselves are smooth enough; the functions here
carry their derivatives in closed forms that stay finite.
"""

import math

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float


def safe_sqrt(x: Array) -> Array:
    """$\\sqrt{x}$ for $x \\geq 0$, with derivative 0 (instead of infinity) at $x = 0$."""
    positive = x > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, x, 1)), 0)


def correlation(q11: Array, q12: Array, q22: Array) -> tuple[Array, Array]:
    """Return `(norm, rho)`: $\\sqrt{q_{11} q_{22}}$ and the correlation clipped to [-1, 1].

    Where a variance is zero the correlation is defined as 0 (the kernels multiply it by the
    zero norm), so that values and gradients stay finite for zero inputs.
    """
    norm = safe_sqrt(q11 * q22)
    positive = norm > 0
    rho = jnp.where(positive, q12 / jnp.where(positive, norm, 1), 0)
    # A straight-through clip: rounding can push |rho| a hair above 1, and the clip must not
    # zero the gradient there.
    clipped = jnp.clip(rho, -1, 1)
    return norm, rho + jax.lax.stop_gradient(clipped - rho)


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
    # d/drho = 1 / (pi sqrt(1 - rho^2)), infinite at |rho| = 1. Where |rho| = 1 holds because
    # the inputs coincide, drho is 0 as well; a floor on 1 - rho^2 keeps 0 * inf from
    # becoming NaN there.
    tiny = jnp.finfo(rho.dtype).eps
    slope = 1 / (math.pi * jnp.sqrt(jnp.maximum(1 - rho * rho, tiny)))
    return arccos_kernel_0(rho), slope * drho


@jax.custom_jvp
def arccos_kernel_1(rho: Float[Array, "*shape"]) -> Float[Array, "*shape"]:
    """The degree-1 arc-cosine kernel $J_1(\\rho) = (\\sqrt{1-\\rho^2} + (\\pi - \\arccos\\rho)\\rho)/\\pi$.

    $E[\\max(u,0)\\max(v,0)] = J_1(\\rho)/2$ for standard normals with correlation $\\rho$; its
    derivative is $J_0(\\rho)$, finite everywhere on [-1, 1].
    """
    return (jnp.sqrt(jnp.maximum(1 - rho * rho, 0)) + (math.pi - _arccos(rho)) * rho) / math.pi


@arccos_kernel_1.defjvp
def _arccos_kernel_1_jvp(primals, tangents):
    (rho,), (drho,) = primals, tangents
    return arccos_kernel_1(rho), arccos_kernel_0(rho) * drho
