"""Kernel rules of the fixed linear maps over positions: `Index`, `DotGeneral`, `ImageResize`."""

import string
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ..nn import DotGeneral, ImageResize, Index
from ..nn._reshape import check_matrix, index_tuple
from ._kernel import Kernel
from ._masking import map_mask
from ._registry import AbstractRule, Requirements, register


# A linear map over positions: the spatial axes it acts on, and its matrices `(*P, *S)` for the
# two sides of the covariance (with a leading batch axis when they differ between examples).
PositionMap = tuple[tuple[int, ...], Float[Array, "..."], Float[Array, "..."]]


def map_array(
    a: Array,
    n_lead: int,
    n_spatial: int,
    diagonal: bool,
    maps: Sequence[PositionMap],
    batched: bool = False,
) -> Array:
    """Apply every map to both sides of a covariance array with `n_lead` batch axes.

    Full layout: $\\mathcal{K}' = M_1 \\mathcal{K} M_2^\\top$ on each mapped (interleaved) pair
    of axes. With `batched`, the matrices have a leading batch axis: `M_1` follows the first
    batch axis of `a` and `M_2` the last. Diagonal layout (valid only for one selection matrix,
    one 1 per row, on both sides): $\\mathcal{K}'[p] = \\sum_s M[p, s]^2 \\mathcal{K}[s]$.
    """
    letters = iter(string.ascii_letters)
    lead = "".join(next(letters) for _ in range(n_lead))
    b1, b2 = (lead[0], lead[-1]) if batched else ("", "")
    first = [next(letters) for _ in range(n_spatial)]
    second = [next(letters) for _ in range(n_spatial)]

    def layout(f, s):
        return "".join(f) if diagonal else "".join(x + y for x, y in zip(f, s))

    for axes, m1, m2 in maps:
        m1, m2 = m1.astype(a.dtype), m2.astype(a.dtype)
        new_first = "".join(next(letters) for _ in axes)
        new_second = "".join(next(letters) for _ in axes)
        out_first, out_second = list(first), list(second)
        for j, d in enumerate(axes):
            out_first[d], out_second[d] = new_first[j], new_second[j]
        src = "".join(first[d] for d in axes)
        in_spec, out_spec = lead + layout(first, second), lead + layout(out_first, out_second)
        if diagonal:
            spec = f"{in_spec},{new_first}{src}->{out_spec}"
            a = jnp.einsum(spec, a, m1 * m2, precision="highest")
        else:
            dst = "".join(second[d] for d in axes)
            spec = f"{in_spec},{b1}{new_first}{src},{b2}{new_second}{dst}->{out_spec}"
            a = jnp.einsum(spec, a, m1, m2, precision="highest")
        first, second = out_first, out_second
    return a


def map_positions(
    k: Kernel,
    maps: Sequence[tuple[tuple[int, ...], Float[Array, "..."]]],
    scale=None,
    out_shape1=None,
    out_shape2=None,
) -> Kernel:
    """The kernel after fixed linear maps over positions (and an optional scale).

    `out_shape1`/`out_shape2` are the new per-example activation shapes. Masks follow the maps:
    an output position is masked when only masked positions reach it.
    """
    n = k.spatial_ndim
    c2 = 1.0 if scale is None else k.cast(scale) ** 2

    both = tuple((axes, m, m) for axes, m in maps)

    def cross(a):
        return c2 * map_array(a, 2, n, k.diagonal_spatial, both)

    def marginal(a):
        return None if a is None else c2 * map_array(a, 1, n, k.diagonal_spatial, both)

    mask1, mask2 = k.mask1, k.mask2
    for axes, m in maps:
        mask1, mask2 = map_mask(mask1, axes, m), map_mask(mask2, axes, m)
    return k.replace(
        nngp=cross(k.nngp),
        ntk=None if k.ntk is None else cross(k.ntk),
        cov1=marginal(k.cov1),
        cov2=marginal(k.cov2),
        shape1=k.shape1 if out_shape1 is None else out_shape1,
        shape2=k.shape2 if out_shape2 is None else out_shape2,
        mask1=mask1,
        mask2=mask2,
    )


@register(Index)
class IndexRule(AbstractRule[Index]):
    """Kernel rule of [`eqntk.nn.Index`][]: both sides of the covariance are indexed alike,
    $\\mathcal{K}'[i, i'] = \\mathcal{K}[\\iota(i), \\iota(i')]$."""

    def requirements(self, layer: Index, wanted: Requirements) -> Requirements:
        return wanted

    def __call__(self, layer: Index, k: Kernel, wanted: Requirements) -> Kernel:
        idx = index_tuple(layer.spatial, k.shape1[1:], "Index")
        if k.shape2[1:] != k.shape1[1:]:
            index_tuple(layer.spatial, k.shape2[1:], "Index")
        per_pair = idx if k.diagonal_spatial else sum(((i, i) for i in idx), ())

        def shape(s):
            return (s[0],) + np.empty(s[1:])[idx].shape

        def masked(m):
            return None if m is None else m[(slice(None),) + idx]

        return k.replace(
            nngp=k.nngp[(slice(None),) * 2 + per_pair],
            ntk=None if k.ntk is None else k.ntk[(slice(None),) * 2 + per_pair],
            cov1=k.cov1[(slice(None),) + per_pair],
            cov2=None if k.cov2 is None else k.cov2[(slice(None),) + per_pair],
            shape1=shape(k.shape1),
            shape2=shape(k.shape2),
            mask1=masked(k.mask1),
            mask2=masked(k.mask2),
        )


@register(DotGeneral)
class DotGeneralRule(AbstractRule[DotGeneral]):
    """Kernel rule of [`eqntk.nn.DotGeneral`][]:
    $\\mathcal{K}' = c_s^2\\, M \\mathcal{K} M^\\top$ on the contracted axes."""

    def requirements(self, layer: DotGeneral, wanted: Requirements) -> Requirements:
        if layer.matrix is None:
            return wanted
        return Requirements(diagonal_spatial=False)

    def __call__(self, layer: DotGeneral, k: Kernel, wanted: Requirements) -> Kernel:
        matrix = layer.matrix
        if matrix is None:
            return map_positions(k, (), layer.scale)
        check_matrix(layer, k.shape1[1:], "x1")
        check_matrix(layer, k.shape2[1:], "x2")

        def shape(s):
            out = list(s)
            for j, a in enumerate(layer.axes):
                out[1 + a] = matrix.shape[j]
            return tuple(out)

        maps = ((layer.axes, matrix),)
        return map_positions(k, maps, layer.scale, shape(k.shape1), shape(k.shape2))


@register(ImageResize)
class ImageResizeRule(AbstractRule[ImageResize]):
    """Kernel rule of [`eqntk.nn.ImageResize`][]: the resize map $R_d$ of each axis on both
    sides of the covariance, $\\mathcal{K}' = R \\mathcal{K} R^\\top$."""

    def requirements(self, layer: ImageResize, wanted: Requirements) -> Requirements:
        # Nearest-neighbour resizing selects positions, so it maps the spatial diagonal onto
        # itself; linear interpolation mixes positions and needs the full covariance.
        if layer.method == "nearest" or all(s == -1 for s in layer.shape):
            return wanted
        return Requirements(diagonal_spatial=False)

    def __call__(self, layer: ImageResize, k: Kernel, wanted: Requirements) -> Kernel:
        old1, old2 = k.shape1[1:], k.shape2[1:]
        new1, new2 = layer.output_shape(old1), layer.output_shape(old2)
        if old1 != old2:
            raise ValueError(
                f"`ImageResize` needs inputs of one spatial shape; `x1` has {old1} and `x2` {old2}."
            )
        maps = tuple(
            ((d,), layer.matrix(old, new, k.nngp.dtype))
            for d, (old, new) in enumerate(zip(old1, new1))
            if old != new
        )
        return map_positions(
            k, maps, out_shape1=(k.shape1[0],) + new1, out_shape2=(k.shape2[0],) + new2
        )
