"""Fixed linear maps over positions: `Index`, `DotGeneral`, `ImageResize`."""

from collections.abc import Sequence
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, Real

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
