"""Kernel rule of `Elementwise`: a user-supplied closed form, or Gauss–Hermite quadrature."""

import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ._elementwise import EntryMap
from ._math import correlation, safe_sqrt


def closed_form_entries(nngp_fn: Callable, d_nngp_fn: Callable | None) -> EntryMap:
    """The entry map from scalar functions `nngp_fn(cov12, var1, var2)` and its derivative in
    `cov12` (autodiff when `d_nngp_fn` is None)."""
    nngp_map = jnp.vectorize(nngp_fn)
    dot_map = jnp.vectorize(jax.grad(nngp_fn) if d_nngp_fn is None else d_nngp_fn)

    def fn(q11, q12, q22, ntk):
        nngp = nngp_map(q12, q11, q22)
        return nngp, None if ntk is None else ntk * dot_map(q12, q11, q22)

    return fn


def quadrature_entries(phi: Callable, deg: int) -> EntryMap:
    """The entry map of `phi` by `deg`-point Gauss–Hermite quadrature (see `nn.Elementwise`).

    With the nodes $x_i$ and weights $w_i$ of $\\int e^{-x^2} g(x)\\,dx$,
    $E[f(u) f(v)] \\approx \\frac1\\pi\\sum_{ij} w_i w_j f(\\sqrt{2q_{11}}\\,x_i)\\,
    f(\\sqrt{2q_{22}}(\\rho x_i + \\sqrt{1-\\rho^2}\\,x_j))$, the scheme of neural-tangents'
    `ElementwiseNumerical` (so the two agree to rounding at the same degree).
    """
    nodes, weights = np.polynomial.hermite.hermgauss(deg)
    x = [float(node) for node in nodes]
    w = [float(weight) for weight in weights]
    f = jnp.vectorize(phi)

    def df(z):
        # phi' elementwise: the JVP of the vectorised scalar function with unit tangents.
        return jax.jvp(f, (z,), (jnp.ones_like(z),))[1]

    def integrate(g, s1, a, b):
        outer = jnp.stack([wi * g(s1 * xi) for wi, xi in zip(w, x)])  # per example: small
        outer_nodes = jnp.asarray(x, a.dtype)

        # A loop over the outer node whose body sums the inner nodes as an unrolled chain of
        # elementwise operations: XLA fuses it into one pass over the entries per outer node
        # and never stores deg^2 values per entry (reductions over a node axis, or a fully
        # unrolled double loop, are several times slower on CPU).
        def body(i, total):
            shifted = a * outer_nodes[i]
            inner = sum(wj * g(shifted + b * xj) for wj, xj in zip(w, x))
            return total + outer[i] * inner

        shape = jnp.broadcast_shapes(a.shape, s1.shape)
        return jax.lax.fori_loop(0, deg, body, jnp.zeros(shape, a.dtype)) / math.pi

    def fn(q11, q12, q22, ntk):
        _, rho = correlation(q11, q12, q22)
        s1, s2 = safe_sqrt(2 * q11), safe_sqrt(2 * q22)
        # v = s2 (rho x + sqrt(1 - rho^2) y) = a x + b y: the Cholesky factor of the 2x2
        # covariance. The inner sum is even in b (symmetric nodes), so safe_sqrt's zero slope
        # at b = 0 is the exact derivative there.
        a, b = s2 * rho, s2 * safe_sqrt(1 - rho * rho)
        nngp = integrate(f, s1, a, b)
        return nngp, None if ntk is None else ntk * integrate(df, s1, a, b)

    return fn


@functools.lru_cache(maxsize=64)
def _compiled_quadrature_entries(phi: Callable, deg: int) -> EntryMap:
    return jax.jit(quadrature_entries(phi, deg))


def compiled_quadrature_entries(phi: Callable, deg: int) -> EntryMap:
    """`quadrature_entries` under `jax.jit`, one compiled function per `(phi, deg)`.

    The quadrature's loop body is a fresh closure at each call, so without this every eager
    kernel evaluation would trace and compile it again (seconds); under an outer `jit` the
    inner one is inlined. A `phi` that cannot be hashed gets a jitted map of its own.
    """
    try:
        return _compiled_quadrature_entries(phi, deg)
    except TypeError:  # `phi` is unhashable (e.g. a module holding arrays)
        return jax.jit(quadrature_entries(phi, deg))
