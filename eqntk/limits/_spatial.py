"""Helpers for the spatial layouts of kernel arrays (see `Kernel` for the layouts).

Full layout: the spatial axes of the two examples are interleaved, `(.., S0, S0', S1, S1', ..)`.
Diagonal layout: one axis per spatial dimension, `(.., S0, S1, ..)`.
"""

import string
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ._kernel import Kernel


def diagonal_of_pairs(a: Array, n_lead: int, n_spatial: int) -> Array:
    """Take the diagonal of every interleaved spatial pair after `n_lead` leading axes."""
    for d in range(n_spatial):
        # Pair d sits at axes (n_lead + d, n_lead + d + 1) once the earlier pairs are merged.
        a = jnp.diagonal(a, axis1=n_lead + d, axis2=n_lead + d + 1)
        a = jnp.moveaxis(a, -1, n_lead + d)
    return a


def map_axes(
    a: Array, fn: Callable[[Array], Array], axes: list[int], at: int | None = None
) -> Array:
    """Apply `fn`, a map of the positions `(*S) -> (*O)` on `axes`, to every slice of `a`
    along them (the other axes are batched through `jax.vmap`).

    The output axes take the places of the mapped ones: each its own place when `fn` keeps the
    number of axes (`axes` may then be interleaved with others, as the full layout's pairs are),
    otherwise one block where the first mapped axis was (`axes` must then be contiguous); with
    no mapped axis (`fn` makes positions from a scalar), the block goes before axis `at` (by
    default at the end).
    """
    others = [i for i in range(a.ndim) if i not in axes]
    perm = others + axes
    b = jnp.transpose(a, perm)
    lead = b.shape[: len(others)]
    b = b.reshape((-1,) + b.shape[len(others) :])
    c = jax.vmap(fn)(b)
    c = c.reshape(lead + c.shape[1:])
    n_out = c.ndim - len(others)
    if n_out == len(axes):
        return jnp.transpose(c, [perm.index(i) for i in range(a.ndim)])
    first = min(axes) if axes else (len(others) if at is None else at)
    before = [i for i, axis in enumerate(others) if axis < first]
    after = [i for i, axis in enumerate(others) if axis >= first]
    return jnp.transpose(c, before + list(range(len(others), c.ndim)) + after)


def to_diagonal_spatial(k: Kernel) -> Kernel:
    """Keep only the spatial diagonal of a full-layout kernel."""
    if k.diagonal_spatial or k.spatial_ndim == 0:
        return k.replace(diagonal_spatial=True)
    n = k.spatial_ndim
    return k.map_covariances(
        lambda a: diagonal_of_pairs(a, 2, n),
        cov_fn=lambda a: diagonal_of_pairs(a, 1, n),
        diagonal_spatial=True,
    )


def variances(cov: Float[Array, "n *spatial"], k: Kernel) -> Float[Array, "n *positions"]:
    """The variance of each example at each position: `cov` on its spatial diagonal."""
    if k.diagonal_spatial:
        return cov
    return diagonal_of_pairs(cov, 1, k.spatial_ndim)


def cross_variances(var1: Array, var2: Array, diagonal_spatial: bool) -> tuple[Array, Array]:
    """Broadcast per-position variances to the layout of a cross kernel `(n1, n2, ...)`.

    Returns `(q11, q22)` such that `q11` is the variance of the first example's entry and `q22`
    the second's, for every entry of `nngp`.
    """
    n = var1.ndim - 1
    if diagonal_spatial:
        return var1[:, None], var2[None, :]
    q11 = _interleave(var1[:, None], first=True, n_lead=2, n_spatial=n)
    q22 = _interleave(var2[None, :], first=False, n_lead=2, n_spatial=n)
    return q11, q22


def self_variances(var: Array, diagonal_spatial: bool) -> tuple[Array, Array]:
    """Broadcast per-position variances to the layout of a marginal kernel `(n, ...)`."""
    n = var.ndim - 1
    if diagonal_spatial:
        return var, var
    return (
        _interleave(var, first=True, n_lead=1, n_spatial=n),
        _interleave(var, first=False, n_lead=1, n_spatial=n),
    )


def _interleave(var: Array, first: bool, n_lead: int, n_spatial: int) -> Array:
    """Insert a size-1 axis after (first) or before (not first) each spatial axis."""
    shape = list(var.shape[:n_lead])
    for s in var.shape[n_lead:]:
        shape += [s, 1] if first else [1, s]
    return var.reshape(shape)


def gram(
    x1: Float[Array, "n1 c *spatial"], x2: Float[Array, "n2 c *spatial"], diagonal_spatial: bool
) -> Float[Array, "n1 n2 *pairs"]:
    """Channel-averaged inner products of two batches, in the requested spatial layout."""
    n = x1.ndim - 2
    # Channel and batch axes are c, Y, Z; spatial axes take letters after them.
    letters = string.ascii_lowercase[3 : 3 + 2 * n]
    s1, s2 = letters[:n], letters[n:]
    if diagonal_spatial:
        spec = f"Yc{s1},Zc{s1}->YZ{s1}"
    else:
        out = "".join(a + b for a, b in zip(s1, s2))
        spec = f"Yc{s1},Zc{s2}->YZ{out}"
    return jnp.einsum(spec, x1, x2, precision="highest") / x1.shape[1]


def self_gram(x: Float[Array, "n c *spatial"], diagonal_spatial: bool) -> Float[Array, "n *pairs"]:
    """Channel-averaged inner products of each example with itself, in the requested layout."""
    n = x.ndim - 2
    # Channel and batch axes are c, Y, Z; spatial axes take letters after them.
    letters = string.ascii_lowercase[3 : 3 + 2 * n]
    s1, s2 = letters[:n], letters[n:]
    if diagonal_spatial:
        return jnp.mean(x * x, axis=1)
    out = "".join(a + b for a, b in zip(s1, s2))
    return jnp.einsum(f"Yc{s1},Yc{s2}->Y{out}", x, x, precision="highest") / x.shape[1]


def batch_diagonal(a: Float[Array, "n n *pairs"]) -> Float[Array, "n *pairs"]:
    """The entries `a[i, i, ...]` of a kernel of a batch with itself."""
    return jnp.moveaxis(jnp.diagonal(a, axis1=0, axis2=1), -1, 0)


def swap_examples(a: Array, diagonal_spatial: bool) -> Array:
    """`K(x2, x1)` from `K(x1, x2)`: swap the batch axes and each interleaved spatial pair."""
    n_pairs = a.ndim - 2
    perm = [1, 0]
    if diagonal_spatial:
        perm += list(range(2, a.ndim))
    else:
        for d in range(n_pairs // 2):
            perm += [3 + 2 * d, 2 + 2 * d]
    return jnp.transpose(a, perm)
