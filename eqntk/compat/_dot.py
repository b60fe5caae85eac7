"""neural-tangents' `stax.DotGeneral`: `jax.lax.dot_general` with a constant factor.

The layer contracts (or pairs, as `dot_general` batch dimensions) spatial axes of the batched
activations with a constant array. On one channel-first example it is a fixed linear map over
positions, so its kernel rule maps both sides of every covariance: contracted positions are
summed over, paired positions are weighted entrywise, and the constant's free axes become new
spatial axes, $\\mathcal{K}' = A\\, \\mathcal{K}\\, A^\\top$.
"""

import string
from collections.abc import Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from .. import nn
from ..limits import AbstractRule, Kernel as EqKernel, Requirements, register
from ._kernel import from_cf, nt_shape, to_cf
from ._layers import Layer


Dims = tuple[tuple[tuple[int, ...], tuple[int, ...]], tuple[tuple[int, ...], tuple[int, ...]]]


def _axis_after_dot(axis: int, contracting: Sequence[int], batch: Sequence[int], lead: int) -> int:
    """Where an axis of the activations lands in `dot_general`'s output (`lead`: the number of
    the constant's free axes placed before the activations' free axes)."""
    if axis in batch:
        return list(batch).index(axis)
    return axis - sum(1 for i in contracting if i < axis) + sum(1 for i in batch if i > axis) + lead


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

    @property
    def input_dims(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The contracting and `dot_general` batch axes of the activations."""
        (cl, cr), (bl, br) = self.dimension_numbers
        return (cr, br) if self.is_lhs else (cl, bl)

    @property
    def other_dims(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The contracting and `dot_general` batch axes of `other`."""
        (cl, cr), (bl, br) = self.dimension_numbers
        return (cl, bl) if self.is_lhs else (cr, br)

    def output_axes(self, n_in: int) -> list[tuple[str, int]]:
        """The output's axes in order: `("x", axis of the activations)` or `("o", axis of
        other)`."""
        (x_c, x_b), (o_c, o_b) = self.input_dims, self.other_dims
        x_free = [("x", i) for i in range(n_in) if i not in x_c + x_b]
        o_free = [("o", j) for j in range(self.other.ndim) if j not in o_c + o_b]
        batch = [("x", i) for i in x_b]
        return batch + (o_free + x_free if self.is_lhs else x_free + o_free)

    def out_layout(self, n_in: int) -> tuple[int, int]:
        """The batch and channel axes of the output, for activations of rank `n_in`."""
        axes = self.output_axes(n_in)
        return axes.index(("x", self.batch_axis)), axes.index(("x", self.channel_axis))

    def __call__(
        self, x: Float[Array, "c *spatial"], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, "c *spatial_out"]:
        """Apply `dot_general` to one channel-first example `x` (`key` is unused)."""
        xb = from_cf(x[None], self.batch_axis, self.channel_axis)
        other = jax.lax.stop_gradient(self.other).astype(x.dtype)
        args = (other, xb) if self.is_lhs else (xb, other)
        y = jax.lax.dot_general(*args, self.dimension_numbers, self.precision)
        b, c = self.out_layout(xb.ndim)
        return to_cf(y, b, c)[0]


def _spatial_index(layer: DotGeneralMap, n_in: int) -> dict[int, int]:
    """The spatial number (0 = first spatial axis) of each spatial axis of the activations."""
    spatial = [i for i in range(n_in) if i not in (layer.batch_axis, layer.channel_axis)]
    return {a: d for d, a in enumerate(spatial)}


def _check_sizes(layer: DotGeneralMap, shape: tuple[int, ...], name: str) -> None:
    n_in = len(shape) + 1
    index = _spatial_index(layer, n_in)
    (x_c, x_b), (o_c, o_b) = layer.input_dims, layer.other_dims
    for i, j in zip(x_c + x_b, o_c + o_b):
        size = shape[1 + index[i]]
        if layer.other.shape[j] != size:
            raise ValueError(
                f"`DotGeneral` pairs axis {i} of its input from `{name}` (size {size}) with axis "
                f"{j} of the constant of shape {layer.other.shape}; the sizes must agree."
            )


def _letters(layer: DotGeneralMap, n_spatial: int, diagonal: bool):
    """einsum letters of both sides of a covariance: the input's spatial axes, `other`'s axes
    on each side, and the output's spatial axes."""
    pool = iter(string.ascii_letters)
    left = [next(pool) for _ in range(n_spatial)]
    right = left if diagonal else [next(pool) for _ in range(n_spatial)]
    n_in = n_spatial + 2
    index = _spatial_index(layer, n_in)
    (x_c, x_b), (o_c, o_b) = layer.input_dims, layer.other_dims
    paired = {j: index[i] for i, j in zip(x_c + x_b, o_c + o_b)}
    o_left, o_right = [], []
    for j in range(layer.other.ndim):
        if j in paired:
            o_left.append(left[paired[j]])
            o_right.append(right[paired[j]])
        else:
            o_left.append(next(pool))
            o_right.append(o_left[-1] if diagonal else next(pool))
    out_left, out_right = [], []
    for kind, a in layer.output_axes(n_in):
        if kind == "x" and a in index:
            out_left.append(left[index[a]])
            out_right.append(right[index[a]])
        elif kind == "o":
            out_left.append(o_left[a])
            out_right.append(o_right[a])
    return (left, right), (o_left, o_right), (out_left, out_right), pool


def _out_shape(layer: DotGeneralMap, shape: tuple[int, ...]) -> tuple[int, ...]:
    n_in = len(shape) + 1
    index = _spatial_index(layer, n_in)
    sizes = []
    for kind, a in layer.output_axes(n_in):
        if kind == "x" and a in index:
            sizes.append(shape[1 + index[a]])
        elif kind == "o":
            sizes.append(layer.other.shape[a])
    return (shape[0],) + tuple(sizes)


@register(DotGeneralMap)
class DotGeneralMapRule(AbstractRule[DotGeneralMap]):
    """Kernel rule of `DotGeneralMap`: the constant on both sides of every covariance,
    contracted positions summed over."""

    def requirements(self, layer: DotGeneralMap, wanted: Requirements) -> Requirements:
        if layer.input_dims[0]:
            # Contracting positions mixes them: the full spatial covariance is needed.
            return Requirements(diagonal_spatial=False)
        return wanted

    def __call__(self, layer: DotGeneralMap, k: EqKernel, wanted: Requirements) -> EqKernel:
        _check_sizes(layer, k.shape1, "x1")
        _check_sizes(layer, k.shape2, "x2")
        diagonal = k.diagonal_spatial
        (left, right), (o_left, o_right), (out_left, out_right), pool = _letters(
            layer, k.spatial_ndim, diagonal
        )
        other = jax.lax.stop_gradient(layer.other).astype(k.nngp.dtype)

        def layout(first, second):
            return "".join(first) if diagonal else "".join(a + b for a, b in zip(first, second))

        n1, n2 = next(pool), next(pool)
        o1, o2 = "".join(o_left), "".join(o_right)

        def cross(a):
            spec = f"{n1}{n2}{layout(left, right)},{o1},{o2}->{n1}{n2}{layout(out_left, out_right)}"
            return jnp.einsum(spec, a, other, other, precision="highest")

        def marginal(a):
            spec = f"{n1}{layout(left, right)},{o1},{o2}->{n1}{layout(out_left, out_right)}"
            return jnp.einsum(spec, a, other, other, precision="highest")

        def mask(m):
            if m is None:
                return None
            spec = f"{n1}{''.join(left)},{o1}->{n1}{''.join(out_left)}"
            reach = jnp.einsum(spec, (~m).astype(other.dtype), jnp.abs(other))
            return reach == 0

        return k.map_covariances(
            cross,
            cov_fn=marginal,
            shape1=_out_shape(layer, k.shape1),
            shape2=_out_shape(layer, k.shape2),
            mask1=mask(k.mask1),
            mask2=mask(k.mask2),
        )


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
        return _out_shape(self._map(tuple(shape)), tuple(shape))

    def _map(self, shape: tuple[int, ...]) -> DotGeneralMap:
        assert self.other is not None
        n_in, n_other = len(shape) + 1, self.other.ndim
        ba, ca = self.batch_axis % n_in, self.channel_axis % n_in
        (cl, cr), (bl, br) = self.dimension_numbers
        n_l, n_r = (n_other, n_in) if self.is_lhs else (n_in, n_other)
        for name, dims, n in (
            ("lhs_contracting", cl, n_l),
            ("rhs_contracting", cr, n_r),
            ("lhs_batch", bl, n_l),
            ("rhs_batch", br, n_r),
        ):
            if any(not -n <= d < n for d in dims):
                raise ValueError(
                    f"`dimension_numbers` names axes {dims} as {name}, but that operand has "
                    f"{n} axes."
                )
        dims = (
            (tuple(d % n_l for d in cl), tuple(d % n_r for d in cr)),
            (tuple(d % n_l for d in bl), tuple(d % n_r for d in br)),
        )
        m = DotGeneralMap(self.other, self.is_lhs, dims, self.precision, ba, ca)
        x_c, x_b = m.input_dims
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
        b_out, c_out = m.out_layout(n_in)
        n_out = len(m.output_axes(n_in))
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
