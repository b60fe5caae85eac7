"""The tiling plan of a batched kernel computation, and what each output array is.

A kernel function returns a PyTree of arrays of three kinds, named here by their *role*:

- `"cross"`: a kernel between the two batches, `(N1, N2, *layout)` (`nngp`, `ntk`, or any
  unnamed array);
- `"row"`: a per-example array of `x1`, `(N1, *layout)` (leaves named `cov1`, `mask1`,
  `pattern1`);
- `"col"`: the same for `x2`, `(N2, *layout)` (leaves named `cov2`, `mask2`, `pattern2`).
"""

import math
from typing import Any, Literal

import equinox as eqx
import jax
import numpy as np

from ..limits import Kernel


Role = Literal["cross", "row", "col"]
# A permutation of a cross tile's axes that turns K(x1, x2) into K(x2, x1); None when unknown.
Mirror = tuple[int, ...] | None


class Leaf(eqx.Module):
    """One output array of the kernel function: where it lives in the output and how to tile it.

    **Fields:**

    - `path`: its key path in the output PyTree (as `jax.tree_util.keystr`).
    - `role`: `"cross"`, `"row"` or `"col"` (see the module docstring).
    - `layout`: its shape after the batch axes.
    - `dtype`: its dtype.
    - `mirror`: for a cross kernel, the axis permutation from a tile to its mirror image.
    """

    path: str = eqx.field(static=True)
    role: Role = eqx.field(static=True)
    layout: tuple[int, ...] = eqx.field(static=True)
    dtype: Any = eqx.field(static=True)
    mirror: Mirror = eqx.field(static=True)

    def shape(self, n1: int, n2: int) -> tuple[int, ...]:
        """The shape of the whole array for batches of `n1` and `n2` examples."""
        lead = {"cross": (n1, n2), "row": (n1,), "col": (n2,)}[self.role]
        return lead + self.layout


def tile_starts(n: int, size: int) -> list[int]:
    """Start indices of tiles of `size` covering `range(n)`, all inside it (`size <= n`).

    The last tile ends at `n` and overlaps its neighbour when `size` does not divide `n`, so
    every tile has the same shape (one compilation) and no tile needs padding or slicing.
    """
    count = math.ceil(n / size)
    return [min(i * size, n - size) for i in range(count)]


def tile_pairs(
    starts1: list[int], starts2: list[int], x1_is_x2: bool, mirrored: bool
) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """The `(row start, column start)` of the tiles to compute: off the diagonal, and on it.

    Diagonal tiles exist when `x1_is_x2` (`x2=None`); with `mirrored`, only the off-diagonal
    tiles above the diagonal are computed (the others are their mirror images). Diagonal tiles
    are written last: where the last tile overlaps its neighbour, off-diagonal tiles and their
    mirror images cover part of a diagonal tile, with values equal to it only up to rounding.
    """
    if not x1_is_x2:
        return [(r, c) for r in starts1 for c in starts2], []
    keep = (lambda r, c: r < c) if mirrored else (lambda r, c: r != c)
    off_diagonal = [(r, c) for r in starts1 for c in starts1 if keep(r, c)]
    return off_diagonal, [(r, r) for r in starts1]


def describe(template: Any, mirrors: dict[str, Mirror]) -> list[Leaf]:
    """The [`Leaf`][]s of a kernel function's output, from its shape on one tile.

    `template` is the output (of `jax.eval_shape`) on tiles of `(b1, b2)` examples; `mirrors`
    maps the paths of cross kernels with a known layout to their mirror permutation.
    """
    leaves = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(template)[0]:
        role = _role(path)
        lead = 1 if role != "cross" else 2
        name = jax.tree_util.keystr(path)
        mirror = mirrors.get(name, (1, 0) if leaf.ndim == 2 else None)
        leaves.append(Leaf(name, role, tuple(leaf.shape[lead:]), leaf.dtype, mirror))
    return leaves


def check_tile(leaves: list[Leaf], template: Any, b1: int, b2: int) -> None:
    """Check that every output array has the batch axes its role says it has."""
    for leaf, array in zip(leaves, jax.tree_util.tree_leaves(template)):
        want = {"cross": (b1, b2), "row": (b1,), "col": (b2,)}[leaf.role]
        if array.shape[: len(want)] != want:
            raise ValueError(
                f"`kernel_fn` returned an array at `output{leaf.path}` of shape {array.shape} "
                f"on tiles of {b1} and {b2} examples; `batch` expects arrays named `cov1`, "
                f"`mask1` or `pattern1` to start with the x1 batch axis, `cov2`, `mask2` or "
                f"`pattern2` with the x2 batch axis, and every other array with both, "
                f"(N1, N2, ...)."
            )


def known_mirrors(full: Any, get: Any) -> dict[str, Mirror]:
    """Mirror permutations of the cross kernels whose spatial layout is known.

    `full` is the kernel function's output with `get=None` (its shape is enough). Each
    [`eqntk.Kernel`][] in it gives the layout of its `nngp` and `ntk` through its
    `diagonal_spatial` flag: whether the spatial axes come in interleaved pairs, which the
    mirror image swaps. The result is keyed by the paths those arrays have in the output with
    the selection `get`.
    """
    mirrors: dict[str, Mirror] = {}
    for path, node in jax.tree_util.tree_flatten_with_path(full, is_leaf=_is_kernel)[0]:
        if not isinstance(node, Kernel):
            continue
        mirror = mirror_permutation(node.nngp.ndim, node.diagonal_spatial)
        for name in ("nngp", "ntk"):
            if get is None or (isinstance(get, tuple) and name in get):
                key = path + (jax.tree_util.GetAttrKey(name),)
            elif get == name:
                key = path
            else:
                continue
            mirrors[jax.tree_util.keystr(key)] = mirror
    return mirrors


def mirror_permutation(ndim: int, diagonal_spatial: bool) -> tuple[int, ...]:
    """The axis permutation of `eqntk.limits._spatial.swap_examples` for a `ndim`-axis kernel.

    It swaps the two batch axes and, in the full spatial layout, the two axes of each
    interleaved spatial pair.
    """
    if diagonal_spatial:
        return (1, 0, *range(2, ndim))
    pairs = [(3 + 2 * d, 2 + 2 * d) for d in range((ndim - 2) // 2)]
    return (1, 0, *(axis for pair in pairs for axis in pair))


def _is_kernel(node: Any) -> bool:
    return isinstance(node, Kernel)


def _role(path: tuple[Any, ...]) -> Role:
    name = _key_name(path[-1]) if path else None
    if name in ("cov1", "mask1", "pattern1"):
        return "row"
    if name in ("cov2", "mask2", "pattern2"):
        return "col"
    return "cross"


def _key_name(key: Any) -> Any:
    if isinstance(key, jax.tree_util.GetAttrKey):
        return key.name
    if isinstance(key, jax.tree_util.DictKey):
        return key.key
    return None


def host_array(leaf: Leaf, n1: int, n2: int) -> np.ndarray:
    """An uninitialised numpy array for the whole of `leaf` (pages are touched as tiles land)."""
    return np.empty(leaf.shape(n1, n2), dtype=leaf.dtype)
