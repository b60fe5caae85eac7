"""Fixed linear maps over positions: `Index`, `DotGeneral`, `ImageResize`."""

import string
from collections.abc import Sequence
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, Real

from ..limits._kernel import Kernel
from ..limits._masking import map_mask
from ..limits._registry import AbstractRule, Requirements, register
from ._hyperparameters import frozen, hyperparameter, real_array


# One entry of `Index(spatial=...)`: None keeps the axis, an int selects a position (and removes
# the axis), a triple (start, stop, step) is a slice. Slices are stored as triples because
# static fields must be hashable.
IndexEntry = int | tuple[int | None, int | None, int | None] | None


def _to_entry(entry: object, d: int) -> IndexEntry:
    if entry is None or (isinstance(entry, slice) and entry == slice(None)):
        return None
    if isinstance(entry, slice):
        entry = (entry.start, entry.stop, entry.step)
    if isinstance(entry, bool):
        raise TypeError(f"`spatial[{d}]` must be None, an int or a slice, got {entry!r}.")
    if isinstance(entry, int):
        return entry
    if isinstance(entry, Sequence) and len(entry) == 3:
        if all(e is None or (isinstance(e, int) and not isinstance(e, bool)) for e in entry):
            if entry[2] == 0:
                raise ValueError(f"`spatial[{d}]` is a slice with step 0.")
            return (entry[0], entry[1], entry[2])
    raise TypeError(
        f"`spatial[{d}]` must be None, an int, a slice or a (start, stop, step) triple, "
        f"got {entry!r}."
    )


def index_tuple(spatial: tuple[IndexEntry, ...], spatial_shape: Sequence[int], where: str):
    """The numpy index over the spatial axes for `Index(spatial)`, checked against the shape."""
    if len(spatial) > len(spatial_shape):
        raise ValueError(
            f"`{where}` indexes {len(spatial)} spatial axes, but its input has "
            f"{len(spatial_shape)} (spatial shape {tuple(spatial_shape)})."
        )
    out = []
    for d, (entry, size) in enumerate(zip(spatial, spatial_shape)):
        if entry is None:
            out.append(slice(None))
        elif isinstance(entry, int):
            if not -size <= entry < size:
                raise IndexError(
                    f"`{where}`: position {entry} is out of range for spatial axis {d} of "
                    f"size {size}."
                )
            out.append(entry)
        else:
            out.append(slice(*entry))
    if any(len(range(size)[i]) == 0 for i, size in zip(out, spatial_shape) if type(i) is slice):
        raise ValueError(f"`{where}` selects no positions on some axis of {tuple(spatial_shape)}.")
    return tuple(out)


class Index(eqx.Module):
    """Select positions along the spatial axes, like numpy basic indexing.

    The channel axis is never indexed. An integer selects one position and removes the axis
    (e.g. the first row of an image gives a sequence); a slice keeps the axis. In the limit the
    covariance is indexed the same way on both sides:
    $\\mathcal{K}'[i, i'] = \\mathcal{K}[\\iota(i), \\iota(i')]$.
    """

    spatial: tuple[IndexEntry, ...] = eqx.field(static=True)

    def __init__(self, spatial: Sequence[object]):
        """**Arguments:**

        - `spatial`: one entry per spatial axis, in order; missing trailing entries keep the
          whole axis. `None` keeps the axis, an int `k` selects position `k` (negative counts
          from the end) and removes the axis, and a `slice` (or a `(start, stop, step)` triple)
          slices it.

        **Example:**

        ```python
        import jax.numpy as jnp
        from eqntk import nn

        x = jnp.ones((3, 8, 8))
        assert nn.Index([slice(0, 4), slice(None, None, 2)])(x).shape == (3, 4, 4)
        assert nn.Index([2])(x).shape == (3, 8)      # an int removes the axis
        ```
        """
        if isinstance(spatial, str) or not isinstance(spatial, Sequence):
            raise TypeError(f"`spatial` must be a sequence of index entries, got {spatial!r}.")
        self.spatial = tuple(_to_entry(e, d) for d, e in enumerate(spatial))

    def __call__(
        self, x: Float[Array, "c *spatial"], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, "c *spatial_out"]:
        """Index one channel-first example `x`.

        **Arguments:**

        - `x`: one example `(C, *spatial)`.
        - `key`: unused.

        **Returns:**

        `x[:, *index]`.
        """
        return x[(slice(None),) + index_tuple(self.spatial, x.shape[1:], "Index")]


def spatial_axes(axes: int | Sequence[int], n_spatial: int | None = None) -> tuple[int, ...]:
    """Validate spatial axis numbers (0 = the first axis after the channels)."""
    axes = (axes,) if isinstance(axes, int) else tuple(axes)
    for a in axes:
        if not isinstance(a, int) or isinstance(a, bool) or a < 0:
            raise ValueError(
                f"`axes` must be non-negative spatial axis numbers (0 is the first axis after the "
                f"channels), got {axes!r}."
            )
        if n_spatial is not None and a >= n_spatial:
            raise ValueError(
                f"`axes` names spatial axis {a}, but the input has {n_spatial} spatial axes."
            )
    if len(set(axes)) != len(axes):
        raise ValueError(f"`axes` names an axis twice: {axes!r}.")
    return axes


class DotGeneral(eqx.Module):
    """A fixed (untrained) linear map over positions: a scale, or a matrix along spatial axes.

    With `matrix` $M$ of shape `(*P, *S)` acting on the spatial axes `axes` (whose sizes are
    `S`), the output is $y[c, \\dots, p, \\dots] = c_s \\sum_s M[p, s]\\, x[c, \\dots, s, \\dots]$,
    and the new axes of sizes `P` take the places of the contracted ones. The channel axis is
    never contracted, so every channel is mapped the same way. In the limit
    $\\mathcal{K}' = c_s^2\\, M \\mathcal{K} M^\\top$ on both sides of the covariance (on the
    contracted axes), which needs the full spatial covariance on them.

    `matrix` and `scale` are array leaves; the forward pass treats them as constants
    (`jax.lax.stop_gradient`), so training never changes them.
    """

    matrix: Float[Array, "..."] | None
    scale: Float[Array, ""]
    axes: tuple[int, ...] = eqx.field(static=True)

    def __init__(
        self,
        matrix: Real[ArrayLike, "..."] | None = None,
        axes: int | Sequence[int] = (),
        scale: ArrayLike = 1.0,
    ):
        """**Arguments:**

        - `matrix`: `None` (only scale), or an array of shape `(*P, *S)` with
          `len(P) == len(S) == len(axes)`: the linear map from the positions along `axes` to
          the new positions.
        - `axes`: the spatial axes the matrix contracts (0 is the first axis after the
          channels), in the order of the matrix's `S` axes.
        - `scale`: a constant factor $c_s$.

        **Example:**

        ```python
        import jax.numpy as jnp
        from eqntk import nn

        diff = nn.DotGeneral(jnp.array([[1.0, -1.0]]), axes=0)  # x[:, 0] - x[:, 1]
        assert diff(jnp.ones((4, 2, 5))).shape == (4, 1, 5)
        assert (nn.DotGeneral(scale=2.0)(jnp.ones(3)) == 2).all()
        ```
        """
        axes = spatial_axes(axes)
        self.scale = hyperparameter("scale", scale)
        if matrix is None:
            if axes:
                raise ValueError(f"`axes` must be empty when `matrix` is None, got {axes!r}.")
            self.matrix = None
        else:
            matrix = real_array("matrix", matrix)
            if not axes or matrix.ndim != 2 * len(axes):
                raise ValueError(
                    f"`matrix` must have 2 * len(axes) axes (*P, *S) for `axes`={axes!r}, "
                    f"got shape {matrix.shape}."
                )
            self.matrix = matrix
        self.axes = axes

    def __call__(
        self, x: Float[Array, "c *spatial"], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, "c *spatial_out"]:
        """Apply the map to one channel-first example `x`.

        **Arguments:**

        - `x`: one example `(C, *spatial)`.
        - `key`: unused.

        **Returns:**

        The mapped example; the contracted axes get the sizes `P`.
        """
        scale = frozen(self.scale).astype(x.dtype)
        if self.matrix is None:
            return scale * x
        check_matrix(self, x.shape[1:], "x")
        m = frozen(self.matrix).astype(x.dtype)
        k = len(self.axes)
        y = jnp.tensordot(m, x, axes=(tuple(range(k, 2 * k)), tuple(1 + a for a in self.axes)))
        return scale * jnp.moveaxis(y, tuple(range(k)), tuple(1 + a for a in self.axes))


def check_matrix(layer: DotGeneral, spatial_shape: Sequence[int], name: str) -> None:
    """Raise unless `layer.matrix` fits activations with spatial shape `spatial_shape`."""
    spatial_axes(layer.axes, len(spatial_shape))
    assert layer.matrix is not None
    k = len(layer.axes)
    expected = tuple(spatial_shape[a] for a in layer.axes)
    if tuple(layer.matrix.shape[k:]) != expected:
        raise ValueError(
            f"`DotGeneral.matrix` of shape {layer.matrix.shape} must end in the sizes {expected} "
            f"of spatial axes {layer.axes} of its input from `{name}` (spatial shape "
            f"{tuple(spatial_shape)})."
        )


class ImageResize(eqx.Module):
    """Resize the spatial axes of one example as `jax.image.resize` does.

    Each spatial axis is resized independently with half-pixel centres. `"nearest"` picks the
    nearest input position; `"linear"` interpolates linearly and, with `antialias`, widens the
    triangle filter when downsampling. Both are fixed linear maps $R_d$ per axis, so in the limit
    $\\mathcal{K}' = (\\otimes_d R_d)\\, \\mathcal{K}\\, (\\otimes_d R_d)^\\top$; the rule builds
    $R_d$ by resizing an identity matrix with `jax.image.resize` itself, so the finite network
    and the kernel use the very same interpolation weights.
    """

    shape: tuple[int, ...] = eqx.field(static=True)
    method: Literal["linear", "nearest"] = eqx.field(static=True)
    antialias: bool = eqx.field(static=True)

    def __init__(
        self,
        shape: Sequence[int],
        method: str = "linear",
        antialias: bool = True,
    ):
        """**Arguments:**

        - `shape`: the new size of each spatial axis, in order; `-1` keeps an axis's size.
        - `method`: `"linear"` or `"nearest"` (the methods with a kernel in the limit).
        - `antialias`: whether linear downsampling uses the widened (antialiasing) filter.

        **Example:**

        ```python
        import jax.numpy as jnp
        from eqntk import nn

        assert nn.ImageResize((6, -1))(jnp.ones((3, 4, 5))).shape == (3, 6, 5)
        ```
        """
        if isinstance(shape, int) or not all(
            isinstance(s, int) and (s == -1 or s > 0) for s in shape
        ):
            raise ValueError(
                f"`shape` must be a sequence of positive sizes (or -1 to keep a size), "
                f"got {shape!r}."
            )
        if method not in ("linear", "nearest"):
            raise ValueError(f"`method` must be 'linear' or 'nearest', got {method!r}.")
        self.shape = tuple(shape)
        self.method = method
        self.antialias = bool(antialias)

    def output_shape(self, spatial_shape: Sequence[int]) -> tuple[int, ...]:
        """The spatial shape of the output for inputs of spatial shape `spatial_shape`."""
        if len(self.shape) != len(spatial_shape):
            raise ValueError(
                f"`ImageResize` was given {len(self.shape)} sizes (`shape`={self.shape}), but its "
                f"input has {len(spatial_shape)} spatial axes (spatial shape "
                f"{tuple(spatial_shape)})."
            )
        return tuple(s if t == -1 else t for s, t in zip(spatial_shape, self.shape))

    def matrix(self, size: int, new_size: int, dtype) -> Float[Array, "new old"]:
        """The resize map of one axis: `jax.image.resize` applied to an identity matrix."""
        return jax.image.resize(
            jnp.eye(size, dtype=dtype), (new_size, size), self.method, antialias=self.antialias
        )

    def __call__(
        self, x: Float[Array, "c *spatial"], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, "c *spatial_out"]:
        """Resize one channel-first example `x`.

        **Arguments:**

        - `x`: one example `(C, *spatial)`.
        - `key`: unused.

        **Returns:**

        The resized example `(C, *shape)`.
        """
        new = self.output_shape(x.shape[1:])
        return jax.image.resize(x, (x.shape[0],) + new, self.method, antialias=self.antialias)


# Kernel rules -------------------------------------------------------------------------------------
# Kernel rules of the fixed linear maps over positions: `Index`, `DotGeneral`, `ImageResize`.


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
        return c2 * map_array(a, 1, n, k.diagonal_spatial, both)

    mask1, mask2 = k.mask1, k.mask2
    for axes, m in maps:
        mask1, mask2 = map_mask(mask1, axes, m), map_mask(mask2, axes, m)
    return k.map_covariances(
        cross,
        cov_fn=marginal,
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

        return k.map_covariances(
            lambda a: a[(slice(None),) * 2 + per_pair],
            cov_fn=lambda a: a[(slice(None),) + per_pair],
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
