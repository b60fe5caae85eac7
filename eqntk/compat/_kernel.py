"""neural-tangents' `Kernel`, and its conversions to and from [`eqntk.Kernel`][]."""

from typing import Any

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

from ..limits import Kernel as EqKernel


class Kernel(eqx.Module):
    """The kernels of a network on two batches of inputs, with neural-tangents' fields.

    The arrays have the layouts of [`eqntk.Kernel`][] (the same as neural-tangents'): the two
    batch axes first, then the spatial axes, interleaved (`(N1, N2, H, H, W, W)`) or diagonal
    (`(N1, N2, H, W)`). The metadata follows neural-tangents: `shape1`/`shape2` are the shapes
    of the activations of the whole batch, in the layout given by `batch_axis` and
    `channel_axis`.

    **Fields:** `nngp`, `ntk` (or `None`), `cov1`, `cov2` (`None` when `x1_is_x2`),
    `x1_is_x2`, `is_gaussian`, `is_reversed` (always `False`), `is_input`, `diagonal_batch`,
    `diagonal_spatial`, `shape1`, `shape2`, `batch_axis`, `channel_axis`, `mask1`, `mask2`
    (boolean, `True` where masked, broadcastable to `shape1`/`shape2`).

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
        fields = {name: getattr(self, name) for name in self.__dataclass_fields__}
        unknown = set(changes) - set(fields)
        if unknown:
            raise TypeError(f"`Kernel` has no field(s) {sorted(unknown)}.")
        fields.update(changes)
        return Kernel(**fields)


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


def _eq_mask(mask: Array | None, batch_axis: int, channel_axis: int, n_spatial: int):
    if mask is None:
        return None
    mask = jnp.asarray(mask)
    ndim = n_spatial + 2
    m = jnp.broadcast_to(mask, mask.shape) if mask.ndim == ndim else mask
    m = to_cf(m, batch_axis, channel_axis)
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
        batch_axis=batch_axis,
        channel_axis=channel_axis,
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
        raise ValueError("A `Kernel` with `is_reversed=True` is not supported.")
    n_spatial = len(k.shape1) - 2
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
        mask1=_eq_mask(k.mask1, k.batch_axis, k.channel_axis, n_spatial),
        mask2=None if k.x1_is_x2 else _eq_mask(k.mask2, k.batch_axis, k.channel_axis, n_spatial),
    )
