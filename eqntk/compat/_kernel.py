"""neural-tangents' `Kernel`, and its conversions to and from [`eqntk.Kernel`][]."""

from collections.abc import Sequence
from typing import Any

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float

from ..limits import Kernel as EqKernel


class Kernel(eqx.Module):
    """The kernels of a network on two batches of inputs, with neural-tangents' fields.

    The arrays have the layouts of [`eqntk.Kernel`][] (the same as neural-tangents'): the two
    batch axes first, then the spatial axes, interleaved (`(N1, N2, H, H, W, W)`) or diagonal
    (`(N1, N2, H, W)`). The metadata follows neural-tangents: `shape1`/`shape2` are the shapes
    of the activations of the whole batch, in the layout given by `batch_axis` and
    `channel_axis` (stored non-negative).

    **Fields:** `nngp`, `ntk` (or `None`), `cov1`, `cov2` (`None` when `x1_is_x2`),
    `x1_is_x2`, `is_gaussian`, `is_reversed` (`True` after `reverse()`: the spatial axes of the
    covariances in reverse order), `is_input`, `diagonal_batch`, `diagonal_spatial`, `shape1`,
    `shape2`, `batch_axis`, `channel_axis`, `mask1`, `mask2` (boolean, `True` where masked,
    broadcastable to `shape1`/`shape2`).

    **Methods:** neural-tangents' `replace`, `slice`, `reverse`, `transpose`, `mask`,
    `dot_general`, `k * c`, `c * k`, `k / c`, `k + b`, `k - b`, `-k`, `k[idx]`, `asdict`,
    `astuple`.

    **Example:**

    ```python
    import jax.random as jr
    from eqntk.compat import stax

    _, _, kernel_fn = stax.serial(stax.Dense(8), stax.Relu(), stax.Dense(1))
    k = kernel_fn(jr.normal(jr.key(0), (3, 4)))
    assert k.nngp.shape == (3, 3) and k.shape1 == (3, 1) and k.x1_is_x2
    ```
    """

    nngp: Float[Array, "n1 n2 *spatial"]
    ntk: Float[Array, "n1 n2 *spatial"] | None
    cov1: Float[Array, "..."]
    cov2: Float[Array, "..."] | None
    x1_is_x2: bool = eqx.field(static=True, default=False)
    is_gaussian: bool = eqx.field(static=True, default=False)
    is_reversed: bool = eqx.field(static=True, default=False)
    is_input: bool = eqx.field(static=True, default=False)
    diagonal_batch: bool = eqx.field(static=True, default=True)
    diagonal_spatial: bool = eqx.field(static=True, default=False)
    shape1: tuple[int, ...] = eqx.field(static=True, default=())
    shape2: tuple[int, ...] = eqx.field(static=True, default=())
    batch_axis: int = eqx.field(static=True, default=0)
    channel_axis: int = eqx.field(static=True, default=-1)
    mask1: Bool[Array, "..."] | None = None
    mask2: Bool[Array, "..."] | None = None

    def replace(self, **changes: Any) -> "Kernel":
        """A copy with some fields replaced (neural-tangents' `Kernel.replace`).

        **Arguments:**

        - `**changes`: field names and their new values.

        **Returns:**

        A new `Kernel`.

        **Example:**

        ```python
        import jax.numpy as jnp
        from eqntk.compat import Kernel

        k = Kernel(nngp=jnp.eye(2), ntk=None, cov1=jnp.ones(2), cov2=None, x1_is_x2=True,
                   shape1=(2, 3), shape2=(2, 3))
        assert (k.replace(nngp=2 * k.nngp).nngp == 2 * jnp.eye(2)).all()
        ```
        """
        fields = self.asdict()
        unknown = set(changes) - set(fields)
        if unknown:
            raise TypeError(f"`Kernel` has no field(s) {sorted(unknown)}.")
        fields.update(changes)
        return Kernel(**fields)

    def asdict(self) -> dict[str, Any]:
        """The fields as a dict, in declaration order (neural-tangents' `Kernel.asdict`)."""
        return {name: getattr(self, name) for name in self.__dataclass_fields__}

    def astuple(self) -> tuple[Any, ...]:
        """The fields as a tuple, in declaration order (neural-tangents' `Kernel.astuple`)."""
        return tuple(self.asdict().values())

    @property
    def _batch_ndim(self) -> int:
        """The number of batch axes of `cov1`/`cov2`."""
        return 1 if self.diagonal_batch else 2

    def _map_arrays(self, fn, ntk_fn=None, cov_fn=None, **changes: Any) -> "Kernel":
        """Apply `fn(array, n_batch_axes)` to `nngp`, `ntk` (or `ntk_fn`) and the covariances
        (or `cov_fn`), leaving `None` fields (and a scalar `ntk`) as they are."""
        ntk_fn = fn if ntk_fn is None else ntk_fn
        cov_fn = fn if cov_fn is None else cov_fn
        nb = self._batch_ndim
        ntk = self.ntk
        return self.replace(
            nngp=fn(self.nngp, 2),
            ntk=ntk if ntk is None or jnp.ndim(ntk) == 0 else ntk_fn(ntk, 2),
            cov1=cov_fn(self.cov1, nb),
            cov2=None if self.cov2 is None else cov_fn(self.cov2, nb),
            **changes,
        )

    def slice(self, n1_slice: slice, n2_slice: slice) -> "Kernel":
        """The kernel of the examples `n1_slice` of `x1` and `n2_slice` of `x2`
        (neural-tangents' `Kernel.slice`).

        `cov2` is filled from `cov1` when the kernel was computed with `x2=None`, and
        `x1_is_x2` stays set only when the two slices are equal.

        **Arguments:**

        - `n1_slice`, `n2_slice`: slices (or index arrays) of the two batches.

        **Returns:**

        A new `Kernel`.

        **Example:**

        ```python
        import jax.numpy as jnp
        from eqntk.compat import Kernel

        k = Kernel(nngp=jnp.arange(9.0).reshape(3, 3), ntk=None, cov1=jnp.arange(3.0),
                   cov2=None, x1_is_x2=True, shape1=(3, 1), shape2=(3, 1))
        part = k.slice(slice(0, 2), slice(1, 3))
        assert part.nngp.shape == (2, 2) and part.shape1 == (2, 1) and not part.x1_is_x2
        assert (part.cov2 == jnp.arange(1.0, 3.0)).all()
        ```
        """
        if not self.diagonal_batch:
            raise NotImplementedError(
                "`Kernel.slice` needs `diagonal_batch=True` (`cov1` with one batch axis); got a "
                f"`cov1` of shape {self.cov1.shape}."
            )
        same = self.x1_is_x2 and _same_index(n1_slice, n2_slice)
        cov1 = self.cov1[n1_slice]
        cov2 = None if same else (self.cov1 if self.cov2 is None else self.cov2)[n2_slice]
        ntk = self.ntk
        shape1 = self._with_batch(self.shape1, cov1.shape[0])
        shape2 = shape1 if cov2 is None else self._with_batch(self.shape2, cov2.shape[0])
        mask2 = None if same else self.mask1 if self.x1_is_x2 else self.mask2
        return self.replace(
            nngp=self.nngp[n1_slice][:, n2_slice],
            ntk=ntk if ntk is None or jnp.ndim(ntk) == 0 else ntk[n1_slice][:, n2_slice],
            cov1=cov1,
            cov2=cov2,
            x1_is_x2=same,
            shape1=shape1,
            shape2=shape2,
            mask1=self._slice_mask(self.mask1, n1_slice),
            mask2=self._slice_mask(mask2, n2_slice),
        )

    def _with_batch(self, shape: tuple[int, ...], n: int) -> tuple[int, ...]:
        out = list(shape)
        out[self.batch_axis % len(shape)] = n
        return tuple(out)

    def _slice_mask(self, mask: Array | None, index) -> Array | None:
        if mask is None:
            return None
        m = jnp.moveaxis(mask, self.batch_axis % mask.ndim, 0)
        if m.shape[0] == 1:  # broadcast over the batch
            return mask
        return jnp.moveaxis(m[index], 0, self.batch_axis % mask.ndim)

    def reverse(self) -> "Kernel":
        """Reverse the order of the spatial axes of the covariances (neural-tangents'
        `Kernel.reverse`): `(N1, N2, H, H, W, W)` becomes `(N1, N2, W, W, H, H)`, and
        `is_reversed` flips. Layers accept reversed kernels (they reverse them back).

        **Returns:**

        A new `Kernel`.

        **Example:**

        ```python
        import jax.numpy as jnp
        from eqntk.compat import Kernel

        nngp = jnp.zeros((1, 1, 2, 2, 3, 3))
        k = Kernel(nngp=nngp, ntk=None, cov1=nngp[0], cov2=None, x1_is_x2=True,
                   shape1=(1, 2, 3, 4), shape2=(1, 2, 3, 4))
        r = k.reverse()
        assert r.nngp.shape == (1, 1, 3, 3, 2, 2) and r.is_reversed
        assert r.reverse().nngp.shape == nngp.shape
        ```
        """
        per_axis = 1 if self.diagonal_spatial else 2

        def flip(a, n_batch):
            n = (a.ndim - n_batch) // per_axis
            groups = [
                list(range(n_batch + per_axis * d, n_batch + per_axis * (d + 1))) for d in range(n)
            ]
            order = list(range(n_batch)) + [i for g in reversed(groups) for i in g]
            return jnp.transpose(a, order)

        return self._map_arrays(flip, is_reversed=not self.is_reversed)

    def transpose(self, axes: Sequence[int] | None = None) -> "Kernel":
        """Permute the spatial axes of the covariances (neural-tangents' `Kernel.transpose`).

        `axes` is a permutation of the spatial axes `0, 1, ...` (the batch axes stay first;
        `None` keeps the order, as in neural-tangents). Unlike neural-tangents, `shape1`,
        `shape2` and the masks are permuted too, so the result describes activations whose
        spatial axes were transposed.

        **Arguments:**

        - `axes`: the new order of the spatial axes.

        **Returns:**

        A new `Kernel`.

        **Example:**

        ```python
        import jax.numpy as jnp
        from eqntk.compat import Kernel

        nngp = jnp.zeros((1, 1, 2, 2, 3, 3))
        k = Kernel(nngp=nngp, ntk=None, cov1=nngp[0], cov2=None, x1_is_x2=True,
                   shape1=(1, 2, 3, 4), shape2=(1, 2, 3, 4))
        t = k.transpose((1, 0))
        assert t.nngp.shape == (1, 1, 3, 3, 2, 2) and t.shape1 == (1, 3, 2, 4)
        ```
        """
        n_spatial = len(self.shape1) - 2
        axes = tuple(range(n_spatial)) if axes is None else tuple(int(a) for a in axes)
        if sorted(axes) != list(range(n_spatial)):
            raise ValueError(
                f"`axes` must be a permutation of the {n_spatial} spatial axes "
                f"{tuple(range(n_spatial))}, got {axes!r}."
            )
        per_axis = 1 if self.diagonal_spatial else 2

        def permute(a, n_batch):
            order = list(range(n_batch)) + [
                n_batch + per_axis * d + j for d in axes for j in range(per_axis)
            ]
            return jnp.transpose(a, order)

        def nt_axes(shape_ndim):
            b, c = self.batch_axis % shape_ndim, self.channel_axis % shape_ndim
            spatial = [i for i in range(shape_ndim) if i not in (b, c)]
            source = spatial[::-1] if self.is_reversed else spatial
            moved = [source[a] for a in axes]
            if self.is_reversed:
                moved = moved[::-1]
            order, it = [], iter(moved)
            for i in range(shape_ndim):
                order.append(i if i in (b, c) else next(it))
            return order

        order = nt_axes(len(self.shape1))

        def shape(s):
            return tuple(s[i] for i in order)

        def mask(m):
            return None if m is None else jnp.transpose(m, order)

        return self._map_arrays(
            permute,
            shape1=shape(self.shape1),
            shape2=shape(self.shape2),
            mask1=mask(self.mask1),
            mask2=mask(self.mask2),
        )

    def mask(self, mask1: Array | None, mask2: Array | None) -> "Kernel":
        """Zero every covariance entry that involves a masked position, and store the masks
        (neural-tangents' `Kernel.mask`).

        **Arguments:**

        - `mask1`, `mask2`: boolean arrays broadcastable to `shape1`/`shape2` with one channel
          (`True` where masked), or `None`. `mask2=None` masks `cov2` with `mask1`.

        **Returns:**

        A new `Kernel`.

        **Example:**

        ```python
        import jax.numpy as jnp
        from eqntk.compat import Kernel

        nngp = jnp.ones((1, 1, 3, 3))
        k = Kernel(nngp=nngp, ntk=None, cov1=nngp[0], cov2=None, x1_is_x2=True,
                   shape1=(1, 3, 8), shape2=(1, 3, 8))
        masked = k.mask(jnp.array([[[False], [False], [True]]]), None)
        assert masked.nngp[0, 0, 2].sum() == 0 and masked.nngp[0, 0, :2, :2].sum() == 4
        ```
        """
        p1 = self._positions(mask1)
        p2 = self._positions(mask2)
        if p1 is None and p2 is None:
            return self.replace(mask1=mask1, mask2=mask2)
        m11 = _mask_prod(p1, p1, self._batch_ndim, self.diagonal_spatial)
        m22 = m11 if p2 is None else _mask_prod(p2, p2, self._batch_ndim, self.diagonal_spatial)
        m12 = _mask_prod(p1, p2 if p2 is not None else p1, 2, self.diagonal_spatial)

        def zero(a, m):
            return a if m is None else jnp.where(m, jnp.zeros((), a.dtype), a)

        ntk = self.ntk
        return self.replace(
            nngp=zero(self.nngp, m12),
            ntk=ntk if ntk is None or jnp.ndim(ntk) == 0 else zero(ntk, m12),
            cov1=zero(self.cov1, m11),
            cov2=None if self.cov2 is None else zero(self.cov2, m22),
            mask1=mask1,
            mask2=mask2,
        )

    def _positions(self, mask: Array | None) -> Array | None:
        """A mask in neural-tangents' layout as `(N, *spatial)` in the covariances' order."""
        if mask is None:
            return None
        mask = jnp.asarray(mask)
        ndim = mask.ndim
        if ndim != len(self.shape1):
            raise ValueError(
                f"A mask must have the rank of `shape1` {self.shape1}, got shape {mask.shape}."
            )
        c = self.channel_axis % ndim
        if mask.shape[c] != 1:
            raise NotImplementedError(
                f"Masks must have one channel (size 1 on axis {c}), got shape {mask.shape}: "
                "channel-wise masks have no infinite-width limit."
            )
        m = jnp.moveaxis(mask, (self.batch_axis % ndim, c), (0, -1))[..., 0]
        if self.is_reversed:
            m = jnp.moveaxis(m, tuple(range(1, m.ndim)), tuple(range(m.ndim - 1, 0, -1)))
        return m

    def dot_general(
        self,
        other1: Array | None,
        other2: Array | None,
        is_lhs: bool,
        dimension_numbers,
    ) -> "Kernel":
        """The kernel of `jax.lax.dot_general` of the activations with constants
        (neural-tangents' `Kernel.dot_general`): `other1` on the side of `x1`, `other2` on
        the side of `x2` (`None`: that side is not multiplied), the constant as `lhs` when
        `is_lhs`.

        The dimension numbers may name spatial axes and the batch axis (as a `dot_general`
        batch dimension: a constant per example), never the channel axis. The result has the
        output's layout (`batch_axis`, `channel_axis`, `shape1`, `shape2`; masks are mapped
        along).

        **Arguments:**

        - `other1`, `other2`: the constants, or `None`.
        - `is_lhs`: whether the constants are the left operand.
        - `dimension_numbers`: `((lhs_contracting, rhs_contracting), (lhs_batch, rhs_batch))`.

        **Returns:**

        A new `Kernel`.

        **Example:**

        ```python
        import jax.numpy as jnp
        from eqntk.compat import Kernel

        nngp = jnp.ones((1, 1, 2, 2))  # NWC activations with 2 positions
        k = Kernel(nngp=nngp, ntk=None, cov1=nngp[0], cov2=None, x1_is_x2=True,
                   shape1=(1, 2, 8), shape2=(1, 2, 8))
        v = jnp.array([1.0, -1.0])
        d = k.dot_general(v, v, False, (((1,), (0,)), ((), ())))  # x[:, 0] - x[:, 1]
        assert d.nngp.shape == (1, 1) and d.nngp[0, 0] == 0 and d.shape1 == (1, 8)
        ```
        """
        from ._dot import kernel_dot_general

        if other1 is None and other2 is None:
            return self
        k = self.reverse() if self.is_reversed else self
        return kernel_dot_general(k, other1, other2, is_lhs, dimension_numbers)

    def __mul__(self, other: float) -> "Kernel":
        """The kernel of the activations times `other`: covariances times `other**2`."""
        var = other**2
        return self._map_arrays(lambda a, _: var * a)

    __rmul__ = __mul__

    def __truediv__(self, other: float) -> "Kernel":
        """The kernel of the activations divided by `other`."""
        return self * (1.0 / other)

    def __add__(self, other: float) -> "Kernel":
        """neural-tangents' `Kernel + b`: the NNGP and covariances plus `b**2` (the kernel of
        adding a bias of standard deviation `b`); the NTK is unchanged. `k - b` is the same."""
        var = other**2
        return self._map_arrays(lambda a, _: var + a, ntk_fn=lambda a, _: a)

    __sub__ = __add__

    def __neg__(self) -> "Kernel":
        """The kernel of the negated activations: the same kernel."""
        return self

    __pos__ = __neg__

    def __getitem__(self, idx) -> "Kernel":
        """Index the activations (neural-tangents' `Kernel.__getitem__`): `idx` indexes the
        batched activations, e.g. `k[:, 1:, ::2]`. The channel axis must be left whole, and the
        batch axis may be sliced but not indexed by an integer.

        **Example:**

        ```python
        import jax.numpy as jnp
        from eqntk.compat import Kernel

        nngp = jnp.zeros((2, 2, 4, 4, 3, 3))
        k = Kernel(nngp=nngp, ntk=None, cov1=nngp[0], cov2=None, x1_is_x2=True,
                   shape1=(2, 4, 3, 5), shape2=(2, 4, 3, 5))
        part = k[:, 1:3, 0]
        assert part.nngp.shape == (2, 2, 2, 2) and part.shape1 == (2, 2, 5)
        assert part.channel_axis == 2
        ```
        """
        ndim = len(self.shape1)
        full = _canonical_index(idx, ndim)
        b, c = self.batch_axis % ndim, self.channel_axis % ndim
        if full[c] != slice(None):
            raise NotImplementedError(
                f"The channel axis {c} (infinitely many channels) cannot be indexed; got index "
                f"{full[c]!r} for it."
            )
        if isinstance(full[b], int):
            raise NotImplementedError(
                f"The batch axis {b} cannot be indexed by an integer (it would vanish); use a "
                f"slice or a tuple, got {full[b]!r}."
            )
        spatial = tuple(s for i, s in enumerate(full) if i not in (b, c))
        if self.is_reversed:
            spatial = spatial[::-1]
        if not self.diagonal_spatial:
            spatial = tuple(s for s in spatial for _ in range(2))

        def index(a, n_batch):
            return a[(full[b],) * n_batch + spatial]

        removed = [i for i, s in enumerate(full) if isinstance(s, int)]

        def shape(s):
            return tuple(np.empty(s, dtype=np.int8)[full].shape)

        def mask(m, target):
            if m is None:
                return None
            target = list(target)
            target[c] = 1
            return jnp.broadcast_to(m, target)[full]

        return self._map_arrays(
            index,
            shape1=shape(self.shape1),
            shape2=shape(self.shape2),
            batch_axis=b - sum(1 for i in removed if i < b),
            channel_axis=c - sum(1 for i in removed if i < c),
            mask1=mask(self.mask1, self.shape1),
            mask2=mask(self.mask2, self.shape2),
        )


def _same_index(a, b) -> bool:
    """Whether two batch indices certainly select the same examples (equal slices, or one
    object); `False` only costs a separate `cov2`."""
    if isinstance(a, slice) and isinstance(b, slice):
        return a == b
    return a is b


def _canonical_index(idx, ndim: int) -> tuple:
    """`idx` as one entry (int or slice) per axis of a rank-`ndim` array."""
    entries = idx if isinstance(idx, tuple) else (idx,)
    if sum(e is Ellipsis for e in entries) > 1:
        raise IndexError(f"An index can have one `...`, got {idx!r}.")
    if Ellipsis in entries:
        i = entries.index(Ellipsis)
        entries = entries[:i] + (slice(None),) * (ndim - len(entries) + 1) + entries[i + 1 :]
    if len(entries) > ndim:
        raise IndexError(f"Too many indices {idx!r} for activations of rank {ndim}.")
    for e in entries:
        if not isinstance(e, int | slice) or isinstance(e, bool):
            raise TypeError(f"Indices must be ints, slices or `...`, got {e!r} in {idx!r}.")
    return entries + (slice(None),) * (ndim - len(entries))


def _mask_prod(m1, m2, n_batch: int, diagonal_spatial: bool):
    """Whether each covariance entry involves a masked position: `m1` (left) or `m2` (right),
    both `(N, *spatial)`, laid out like a covariance with `n_batch` batch axes."""
    if m1 is None and m2 is None:
        return None

    def side(m, left):
        if m is None:
            return jnp.zeros((), bool)
        n_spatial = m.ndim - 1
        shape = list(m.shape[:1])
        if n_batch == 2:
            shape = [m.shape[0], 1] if left else [1, m.shape[0]]
        for d in range(n_spatial):
            size = m.shape[1 + d]
            shape += [size] if diagonal_spatial else ([size, 1] if left else [1, size])
        return m.reshape(shape)

    return side(m1, True) | side(m2, False)


def nt_shape(shape: tuple[int, ...], n: int, batch_axis: int, channel_axis: int) -> tuple:
    """The batched shape, in the layout `(batch_axis, channel_axis)`, of examples with the
    channel-first shape `shape`."""
    ndim = len(shape) + 1
    b, c = batch_axis % ndim, channel_axis % ndim
    rest = iter(shape[1:])
    return tuple(n if i == b else shape[0] if i == c else next(rest) for i in range(ndim))


def cf_shape(shape: tuple[int, ...], batch_axis: int, channel_axis: int) -> tuple:
    """The channel-first shape of one example of a batch of shape `shape`."""
    ndim = len(shape)
    b, c = batch_axis % ndim, channel_axis % ndim
    return (shape[c],) + tuple(s for i, s in enumerate(shape) if i not in (b, c))


def to_cf(x: Array, batch_axis: int, channel_axis: int) -> Array:
    """A batch in the layout `(batch_axis, channel_axis)` as `(N, C, *spatial)`."""
    ndim = x.ndim
    b, c = batch_axis % ndim, channel_axis % ndim
    if b == c:
        raise ValueError(
            f"`batch_axis` ({batch_axis}) and `channel_axis` ({channel_axis}) must differ for "
            f"inputs of rank {ndim}."
        )
    return jnp.moveaxis(x, (b, c), (0, 1))


def from_cf(y: Array, batch_axis: int, channel_axis: int) -> Array:
    """The inverse of `to_cf`."""
    ndim = y.ndim
    return jnp.moveaxis(y, (0, 1), (batch_axis % ndim, channel_axis % ndim))


def _nt_mask(mask: Array | None, batch_axis: int, channel_axis: int) -> Array | None:
    if mask is None:
        return None
    m = jnp.expand_dims(mask, 1)  # (N, 1, *spatial)
    return from_cf(m, batch_axis, channel_axis)


def _eq_mask(mask: Array | None, batch_axis: int, channel_axis: int, shape: tuple[int, ...]):
    """A mask broadcastable to `shape` (neural-tangents' layout) as eqntk's `(N, *spatial)`."""
    if mask is None:
        return None
    mask = jnp.asarray(mask)
    target = list(shape)
    c = channel_axis % len(shape)
    target[c] = mask.shape[c] if mask.ndim == len(shape) else 1
    m = to_cf(jnp.broadcast_to(mask, target), batch_axis, channel_axis)
    return jnp.all(m, axis=1)


def from_eqntk(k: EqKernel, batch_axis: int = 0, channel_axis: int = -1) -> Kernel:
    """An [`eqntk.Kernel`][] as a compat `Kernel`."""
    n1, n2 = k.nngp.shape[:2]
    return Kernel(
        nngp=k.nngp,
        ntk=k.ntk,
        cov1=k.cov1,
        cov2=k.cov2,
        x1_is_x2=k.x1_is_x2,
        is_gaussian=k.is_gaussian,
        is_reversed=False,
        is_input=False,
        diagonal_batch=True,
        diagonal_spatial=k.diagonal_spatial,
        shape1=nt_shape(k.shape1, n1, batch_axis, channel_axis),
        shape2=nt_shape(k.shape2, n2, batch_axis, channel_axis),
        batch_axis=batch_axis % (len(k.shape1) + 1),
        channel_axis=channel_axis % (len(k.shape1) + 1),
        mask1=_nt_mask(k.mask1, batch_axis, channel_axis),
        mask2=_nt_mask(k.mask2, batch_axis, channel_axis),
    )


def to_eqntk(k: Kernel) -> EqKernel:
    """A compat `Kernel` as an [`eqntk.Kernel`][]."""
    if not k.diagonal_batch:
        raise ValueError(
            "A `Kernel` with `diagonal_batch=False` cannot be continued from; compute it with "
            "`diagonal_batch=True` (the default)."
        )
    if k.is_reversed:
        k = k.reverse()
    return EqKernel(
        nngp=k.nngp,
        ntk=k.ntk,
        cov1=k.cov1,
        cov2=None if k.x1_is_x2 else k.cov2,
        shape1=cf_shape(k.shape1, k.batch_axis, k.channel_axis),
        shape2=cf_shape(k.shape2, k.batch_axis, k.channel_axis),
        diagonal_spatial=k.diagonal_spatial,
        is_gaussian=k.is_gaussian,
        x1_is_x2=k.x1_is_x2,
        mask1=_eq_mask(k.mask1, k.batch_axis, k.channel_axis, k.shape1),
        mask2=None if k.x1_is_x2 else _eq_mask(k.mask2, k.batch_axis, k.channel_axis, k.shape2),
    )
