"""Masks of variable-length inputs in the limit: zero every kernel entry at a masked position.

Semantics (those of neural-tangents' masking): a masked position holds no information. Its
input value is replaced by zero, every layer sees zeros there (so a convolution or pooling
window near padding only sums real entries), attention never attends to it, averages count
only the unmasked positions, and every kernel entry that involves a masked position is zero.
`limit` re-applies the masks after every layer (`remask`), so a layer's rule only has to say
how its masks change when it changes the positions (`map_mask`, indexing for `Index`, or the
layer's own `output_mask` for convolutions and pooling, see `output_masks`).
"""

import string
from collections.abc import Sequence
from typing import TYPE_CHECKING, TypedDict

import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

from ._kernel import Kernel
from ._spatial import cross_variances, self_variances


if TYPE_CHECKING:
    from ..nn._masked import AbstractMaskedLayer


def remask(k: Kernel) -> Kernel:
    """Zero the entries of `k` that involve a masked position (a no-op without masks)."""
    if k.mask1 is None and k.mask2 is None:
        return k
    dtype = k.nngp.dtype
    keep1 = ~k.mask1 if k.mask1 is not None else None
    mask2 = k.mask2_or_mask1
    keep2 = ~mask2 if mask2 is not None else None
    n1, n2 = k.nngp.shape[:2]
    if keep1 is None:
        keep1 = jnp.ones((n1,) + k.shape1[1:], bool)
    if keep2 is None:
        keep2 = jnp.ones((n2,) + k.shape2[1:], bool)
    keep1, keep2 = keep1.astype(dtype), keep2.astype(dtype)
    q11, q22 = cross_variances(keep1, keep2, k.diagonal_spatial)
    cross = q11 * q22
    c11, c12 = self_variances(keep1, k.diagonal_spatial)

    def cov2_fn(a: Array) -> Array:
        c21, c22 = self_variances(keep2, k.diagonal_spatial)
        return a * (c21 * c22)

    return k.map_covariances(
        lambda a: a * cross, cov1_fn=lambda a: a * (c11 * c12), cov2_fn=cov2_fn
    )


def map_mask(
    mask: Bool[Array, "n *spatial"] | None, axes: Sequence[int], matrix: Float[Array, "..."]
) -> Bool[Array, "n *spatial_out"] | None:
    """The mask after a fixed linear map `matrix` `(*P, *S)` over the spatial `axes`.

    An output position is masked when no unmasked input position reaches it with a nonzero
    weight: content takes precedence over padding.
    """
    if mask is None:
        return None
    n_spatial = mask.ndim - 1
    k = len(axes)
    letters = iter(string.ascii_letters)
    batch = next(letters)
    ins = [next(letters) for _ in range(n_spatial)]
    news = [next(letters) for _ in range(k)]
    outs = list(ins)
    for j, a in enumerate(axes):
        outs[a] = news[j]
    spec = (
        f"{batch}{''.join(ins)},{''.join(news)}{''.join(ins[a] for a in axes)}"
        f"->{batch}{''.join(outs)}"
    )
    reach = jnp.einsum(spec, (~mask).astype(matrix.dtype), jnp.abs(matrix))
    return reach == 0


def mask_count(mask: Bool[Array, "n *spatial"], dtype) -> Float[Array, " n"]:
    """The number of unmasked positions of each example (at least 1, to avoid 0/0)."""
    axes = tuple(range(1, mask.ndim))
    return jnp.maximum(jnp.sum(~mask, axis=axes), 1).astype(dtype)


class OutputMasks(TypedDict):
    """The masks of a layer's output kernel, as keyword arguments of `Kernel.replace`."""

    mask1: Bool[Array, "..."] | None
    mask2: Bool[Array, "..."] | None


def output_masks(layer: "AbstractMaskedLayer", k: Kernel) -> OutputMasks:
    """`mask1=` and `mask2=` for the kernel of `layer`'s output: each batch's mask mapped to
    the output positions by `layer.output_mask` (a convolution or pooling layer)."""
    reject_bound_mask(layer)
    return OutputMasks(
        mask1=None if k.mask1 is None else layer.output_mask(k.mask1),
        mask2=None if k.mask2 is None else layer.output_mask(k.mask2),
    )


def reject_bound_mask(layer) -> None:
    """Raise if `layer` holds one example's mask (set by `nn.with_inputs` for the finite
    network): the kernel function takes the masks of whole batches instead."""
    if layer.mask is not None:
        raise ValueError(
            f"This `{type(layer).__name__}` layer holds one example's mask (set by "
            f"`nn.with_inputs`), which is for the finite network; pass the masks of the batches "
            f"to the kernel function as `mask1=` / `mask2=` instead."
        )
