"""neural-tangents' `stax.DotGeneral`: `jax.lax.dot_general` with a constant factor.

The layer contracts (or pairs, as `dot_general` batch dimensions) spatial axes of the batched
activations with a constant array. On one channel-first example it is a fixed linear map over
positions, so its kernel rule maps both sides of every covariance: contracted positions are
summed over, paired positions are weighted entrywise, and the constant's free axes become new
spatial axes, $\\mathcal{K}' = A\\, \\mathcal{K}\\, A^\\top$.
"""

import string
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from .. import nn
from ..limits import AbstractRule, Kernel as EqKernel, Requirements, register
from ._kernel import Kernel, from_cf, from_eqntk, nt_shape, to_cf, to_eqntk
from ._layers import Layer, traced_shape


Dims = tuple[tuple[tuple[int, ...], tuple[int, ...]], tuple[tuple[int, ...], tuple[int, ...]]]


def _split(dims: Dims, is_lhs: bool):
    """The contracting and batch axes of the activations, then those of the constant."""
    (cl, cr), (bl, br) = dims
    return ((cr, br), (cl, bl)) if is_lhs else ((cl, bl), (cr, br))


def output_axes(dims: Dims, is_lhs: bool, n_in: int, n_other: int) -> list[tuple[str, int]]:
    """`dot_general`'s output axes in order: `("x", axis of the activations)` or `("o", axis
    of the constant)`: the batch dimensions, then the free axes of `lhs`, then of `rhs`."""
    (x_c, x_b), (o_c, o_b) = _split(dims, is_lhs)
    x_free = [("x", i) for i in range(n_in) if i not in x_c + x_b]
    o_free = [("o", j) for j in range(n_other) if j not in o_c + o_b]
    batch = [("x", i) for i in x_b]
    return batch + (o_free + x_free if is_lhs else x_free + o_free)


def normalize(dimension_numbers, is_lhs: bool, n_in: int, n_other: int) -> Dims:
    """Dimension numbers as non-negative axes, checked against the ranks of the operands."""
    (cl, cr), (bl, br) = _dims(dimension_numbers)
    n_l, n_r = (n_other, n_in) if is_lhs else (n_in, n_other)
    for name, axes, n in (
        ("lhs_contracting", cl, n_l),
        ("rhs_contracting", cr, n_r),
        ("lhs_batch", bl, n_l),
        ("rhs_batch", br, n_r),
    ):
        if any(not -n <= d < n for d in axes):
            raise ValueError(
                f"`dimension_numbers` name axes {axes} as {name}, but that operand has {n} axes."
            )
    return (
        (tuple(d % n_l for d in cl), tuple(d % n_r for d in cr)),
        (tuple(d % n_l for d in bl), tuple(d % n_r for d in br)),
    )


def kernel_dot_general(k: Kernel, other1, other2, is_lhs: bool, dimension_numbers) -> Kernel:
    """The compat `Kernel` of `dot_general` of the activations with `other1` (on the side of
    `x1`) and `other2` (of `x2`); `k` is not reversed. See `Kernel.dot_general`."""
    if other1 is None or other2 is None:
        raise NotImplementedError(
            "`Kernel.dot_general` needs a constant on both sides (`other1` and `other2`); got "
            f"{'`other1`' if other1 is None else '`other2`'} None."
        )
    same_constant = other1 is other2
    other1, other2 = jnp.asarray(other1), jnp.asarray(other2)
    if other1.ndim != other2.ndim:
        raise NotImplementedError(
            f"`other1` and `other2` must have the same rank, got shapes {other1.shape} and "
            f"{other2.shape}."
        )
    n_in, n_other = len(k.shape1), other1.ndim
    dims = normalize(dimension_numbers, is_lhs, n_in, n_other)
    (x_c, x_b), (o_c, o_b) = _split(dims, is_lhs)
    ba, ca = k.batch_axis % n_in, k.channel_axis % n_in
    if ca in x_c + x_b:
        raise ValueError(
            f"`dimension_numbers` {dimension_numbers} name the channel axis {ca} of the "
            f"activations (shape {k.shape1}); the channels are infinitely many in the limit "
            "and cannot be contracted or paired."
        )
    if ba in x_c:
        raise NotImplementedError(
            f"`dimension_numbers` {dimension_numbers} contract the batch axis {ba} of the "
            f"activations (shape {k.shape1}); a `Kernel` keeps its batch axes."
        )
    spatial = [i for i in range(n_in) if i not in (ba, ca)]
    if k.diagonal_spatial and any(i in spatial for i in x_c):
        raise ValueError(
            f"`dimension_numbers` {dimension_numbers} contract spatial axes, which needs the "
            "full spatial covariance; the kernel has `diagonal_spatial=True`."
        )
    for act_shape, other, name in ((k.shape1, other1, "1"), (k.shape2, other2, "2")):
        for i, j in zip(x_c + x_b, o_c + o_b):
            if other.shape[j] != act_shape[i]:
                raise ValueError(
                    f"`dimension_numbers` pair axis {i} of the activations (size {act_shape[i]} in "
                    f"`shape{name}` {act_shape}) with axis {j} of `other{name}` (shape "
                    f"{other.shape}); the sizes must agree."
                )
    axes = output_axes(dims, is_lhs, n_in, n_other)
    diagonal = k.diagonal_spatial
    pool = iter(string.ascii_letters)
    left = {i: next(pool) for i in spatial}
    right = left if diagonal else {i: next(pool) for i in spatial}
    paired = dict(zip(o_c + o_b, x_c + x_b))
    free_left = {j: next(pool) for j in range(n_other) if j not in paired}
    free_right = free_left if diagonal else {j: next(pool) for j in free_left}
    b1, b2 = next(pool), next(pool)

    def layout(first, second):
        return "".join(a + b for a, b in zip(first, second)) if not diagonal else "".join(first)

    def array(a, o_left, o_right, n_batch):
        if a is None or jnp.ndim(a) == 0:
            return a
        bl, br = (b1, b2) if n_batch == 2 else (b1, b1)
        lead = bl + br if n_batch == 2 else bl

        def letters(side, free, b):
            return "".join(
                b if paired.get(j) == ba else side[paired[j]] if j in paired else free[j]
                for j in range(n_other)
            )

        in_spec = lead + layout([left[i] for i in spatial], [right[i] for i in spatial])
        out_first, out_second = [], []
        for kind, i in axes:
            if kind == "o":
                out_first.append(free_left[i])
                out_second.append(free_right[i])
            elif i != ba and i != ca:
                out_first.append(left[i])
                out_second.append(right[i])
        out_spec = lead + layout(out_first, out_second)
        spec = f"{in_spec},{letters(left, free_left, bl)},{letters(right, free_right, br)}"
        o1, o2 = o_left.astype(a.dtype), o_right.astype(a.dtype)
        return jnp.einsum(f"{spec}->{out_spec}", a, o1, o2, precision="highest")

    n_cov = 1 if k.diagonal_batch else 2

    def shape(s, other):
        return tuple(s[i] if kind == "x" else other.shape[i] for kind, i in axes)

    def mask(m, s, other):
        if m is None:
            return None
        target = list(s)
        target[ca] = 1
        unmasked = (~jnp.broadcast_to(m, target)).astype(other.dtype)
        reach_args = (jnp.abs(other), unmasked) if is_lhs else (unmasked, jnp.abs(other))
        return jax.lax.dot_general(*reach_args, dims) == 0

    out_ba, out_ca = axes.index(("x", ba)), axes.index(("x", ca))
    # Different constants on the two sides of a kernel of `x2=None`: `x2` no longer maps like
    # `x1`, so its covariance and mask are computed from those of `x1`.
    split = k.x1_is_x2 and not same_constant
    cov2, mask2 = (k.cov1, k.mask1) if split else (k.cov2, k.mask2)
    return k.replace(
        nngp=array(k.nngp, other1, other2, 2),
        ntk=array(k.ntk, other1, other2, 2),
        cov1=array(k.cov1, other1, other1, n_cov),
        cov2=None if cov2 is None else array(cov2, other2, other2, n_cov),
        x1_is_x2=k.x1_is_x2 and not split,
        is_reversed=False,
        shape1=shape(k.shape1, other1),
        shape2=shape(k.shape2, other2),
        batch_axis=out_ba,
        channel_axis=out_ca,
        mask1=mask(k.mask1, k.shape1, other1),
        mask2=mask(mask2, k.shape2, other2),
    )


class DotGeneralMap(eqx.Module):
    """`jax.lax.dot_general` of one example's activations with a constant `other`.

    The example is channel-first; the map is defined on neural-tangents' batched layout
    (`batch_axis`, `channel_axis`, both non-negative) with a batch of one, and its output has
    the same layout. `dimension_numbers` are non-negative and name spatial axes of the
    activations only.
    """

    other: Float[Array, "..."]
    is_lhs: bool = eqx.field(static=True)
    dimension_numbers: Dims = eqx.field(static=True)
    precision: Any = eqx.field(static=True)
    batch_axis: int = eqx.field(static=True)
    channel_axis: int = eqx.field(static=True)

    def out_layout(self, n_in: int) -> tuple[int, int, int]:
        """The rank, batch axis and channel axis of the output for activations of rank
        `n_in`."""
        axes = output_axes(self.dimension_numbers, self.is_lhs, n_in, self.other.ndim)
        return len(axes), axes.index(("x", self.batch_axis)), axes.index(("x", self.channel_axis))

    def __call__(
        self, x: Float[Array, "c *spatial"], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, "c *spatial_out"]:
        """Apply `dot_general` to one channel-first example `x` (`key` is unused)."""
        xb = from_cf(x[None], self.batch_axis, self.channel_axis)
        other = jax.lax.stop_gradient(self.other).astype(x.dtype)
        args = (other, xb) if self.is_lhs else (xb, other)
        y = jax.lax.dot_general(*args, self.dimension_numbers, self.precision)
        _, b, c = self.out_layout(xb.ndim)
        return to_cf(y, b, c)[0]


@register(DotGeneralMap)
class DotGeneralMapRule(AbstractRule[DotGeneralMap]):
    """Kernel rule of `DotGeneralMap`: the constant on both sides of every covariance,
    contracted positions summed over (`Kernel.dot_general`)."""

    def requirements(self, layer: DotGeneralMap, wanted: Requirements) -> Requirements:
        if _split(layer.dimension_numbers, layer.is_lhs)[0][0]:
            # Contracting positions mixes them: the full spatial covariance is needed.
            return Requirements(diagonal_spatial=False)
        return wanted

    def __call__(self, layer: DotGeneralMap, k: EqKernel, wanted: Requirements) -> EqKernel:
        nk = from_eqntk(k, layer.batch_axis, layer.channel_axis)
        other = jax.lax.stop_gradient(layer.other)
        out = kernel_dot_general(nk, other, other, layer.is_lhs, layer.dimension_numbers)
        return to_eqntk(out).replace(pattern1=k.pattern1, pattern2=k.pattern2)


def _dims(dimension_numbers) -> Dims:
    try:
        (cl, cr), (bl, br) = dimension_numbers
        return (tuple(map(int, cl)), tuple(map(int, cr))), (
            tuple(map(int, bl)),
            tuple(map(int, br)),
        )
    except (TypeError, ValueError):
        raise ValueError(
            "`dimension_numbers` must be ((lhs_contracting, rhs_contracting), (lhs_batch, "
            f"rhs_batch)), tuples of axes; got {dimension_numbers!r}."
        ) from None


class DotGeneralLayer(Layer):
    """neural-tangents' `DotGeneral`, on a `DotGeneralMap` (or the identity without a
    constant)."""

    def __init__(self, lhs, rhs, dimension_numbers, precision, batch_axis, channel_axis):
        if lhs is not None and rhs is not None:
            raise ValueError(
                "At most one of `lhs` and `rhs` can be given: the other factor is the layer's "
                "input."
            )
        self.is_lhs = rhs is None
        constant = lhs if self.is_lhs else rhs
        self.other = None if constant is None else jnp.asarray(constant)
        self.dimension_numbers = _dims(dimension_numbers)
        self.precision = precision
        self.batch_axis, self.channel_axis = batch_axis, channel_axis
        self._explicit_axes = (batch_axis, channel_axis) != (0, -1)

    def out_shape(self, shape):
        if self.other is None:
            return tuple(shape)
        return traced_shape(self, tuple(shape))

    def _map(self, shape: tuple[int, ...]) -> DotGeneralMap:
        assert self.other is not None
        n_in = len(shape) + 1
        ba, ca = self.batch_axis % n_in, self.channel_axis % n_in
        dims = normalize(self.dimension_numbers, self.is_lhs, n_in, self.other.ndim)
        x_c, x_b = _split(dims, self.is_lhs)[0]
        if ca in x_c + x_b:
            raise ValueError(
                f"`dimension_numbers` {self.dimension_numbers} name the channel axis "
                f"{self.channel_axis} of the input (shape {self._nt(shape)}); the channels are "
                "infinitely many in the limit and cannot be contracted or paired."
            )
        if ba in x_c + x_b:
            raise NotImplementedError(
                f"`dimension_numbers` {self.dimension_numbers} name the batch axis "
                f"{self.batch_axis} of the input: a constant that differs between examples "
                "(or a contraction over the batch) is not supported."
            )
        m = DotGeneralMap(self.other, self.is_lhs, dims, self.precision, ba, ca)
        n_out, b_out, c_out = m.out_layout(n_in)
        if (b_out, c_out) != (self.batch_axis % n_out, self.channel_axis % n_out):
            raise NotImplementedError(
                f"`DotGeneral` with `dimension_numbers` {self.dimension_numbers} and a constant "
                f"of shape {self.other.shape} moves the batch and channel axes of its input "
                f"(shape {self._nt(shape)}, axes {ba} and {ca}) to {b_out} and {c_out}; only "
                "layouts that keep `batch_axis` and `channel_axis` are supported (as the "
                "layers after it require)."
            )
        return m

    def _nt(self, shape):
        return nt_shape(tuple(shape), -1, self.batch_axis, self.channel_axis)

    def build(self, shape):
        if self.other is None:
            return nn.Identity()
        return self._map(tuple(shape))
