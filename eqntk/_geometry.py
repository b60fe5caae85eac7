"""Sliding-window geometry shared by convolutions and pooling: padding, strides and dilation.

Every convolution or pooling layer reads each spatial axis of its input through a `Window`: output
position `o` combines the entries `x̃[stride * o + dilation * k]`, `k = 0, ..., size - 1`, of the
padded input `x̃`. The finite layers and their kernel rules share these objects, so that both
sides use exactly the same padding.
"""

import functools as ft
import itertools
import math
from collections.abc import Sequence
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import Array, Bool


Padding = Literal["SAME", "VALID", "CIRCULAR"]
PADDINGS = ("SAME", "VALID", "CIRCULAR")


class Window(NamedTuple):
    """How one axis of a window layer's output reads the same axis of its input.

    The input `x` (length `in_len`) is first spread out with `interior` zeros between its
    entries (transposed convolutions), then padded with `pad_lo` and `pad_hi` entries (zeros, or
    wrapped around periodically when `circular`), giving `x̃`. Output entry `o` is built from
    `x̃[stride * o + dilation * k]` for the taps `k < size`. When `fold_len` is set, the result is
    folded periodically onto that length: entry `i` is added to `(i - fold_offset) % fold_len`.
    """

    size: int
    stride: int
    dilation: int
    pad_lo: int
    pad_hi: int
    interior: int
    circular: bool
    in_len: int
    out_len: int
    fold_offset: int = 0
    fold_len: int | None = None

    @property
    def length(self) -> int:
        """The length of the axis after the layer (after folding)."""
        return self.out_len if self.fold_len is None else self.fold_len


def _positive_ints(name: str, value: Sequence[int], n: int | None) -> tuple[int, ...]:
    try:
        values = tuple(value)
    except TypeError:
        raise TypeError(f"`{name}` must be a sequence of positive integers, got {value!r}.")
    if n is not None and len(values) != n:
        raise ValueError(
            f"`{name}` must have one entry per spatial dimension ({n}), got {value!r}."
        )
    if not values or any(
        not isinstance(v, int | np.integer) or isinstance(v, bool) or v < 1 for v in values
    ):
        raise ValueError(
            f"`{name}` must be a non-empty sequence of positive integers, got {value!r}."
        )
    return tuple(int(v) for v in values)


def check_window_args(
    window_name: str,
    window_shape: Sequence[int],
    strides: Sequence[int] | None,
    dilation: Sequence[int] | None,
    padding: str,
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """Validate the geometry arguments of a window layer; `None` strides/dilation become ones.

    Returns `(window_shape, strides, dilation)` as tuples of positive integers.
    """
    window_shape = _positive_ints(window_name, window_shape, None)
    n = len(window_shape)
    strides = (1,) * n if strides is None else _positive_ints("strides", strides, n)
    dilation = (1,) * n if dilation is None else _positive_ints("dilation", dilation, n)
    if padding not in PADDINGS:
        raise ValueError(f"`padding` must be one of {PADDINGS}, got {padding!r}.")
    return window_shape, strides, dilation


def check_spatial_rank(layer: object, n_spatial: int, shape: tuple[int, ...], name: str) -> None:
    """Raise unless a channel-first per-example `shape` has `n_spatial` spatial axes."""
    if len(shape) - 1 != n_spatial:
        raise ValueError(
            f"`{type(layer).__name__}` was built for inputs with {n_spatial} spatial "
            f"dimension(s), shape (C, *spatial), but `{name}` has per-example shape {shape} "
            f"({len(shape) - 1} spatial dimension(s))."
        )


def conv_windows(
    layer: object,
    spatial_shape: Sequence[int],
    window_shape: tuple[int, ...],
    strides: tuple[int, ...],
    dilation: tuple[int, ...],
    padding: str,
    window_name: str = "filter_shape",
) -> tuple[Window, ...]:
    """The windows of a convolution or pooling layer (as `lax.conv_general_dilated` pads).

    `SAME` pads by `total = max((ceil(L / s) - 1) * s + f - L, 0)` split as `total // 2` before
    and the rest after, where `f = (size - 1) * dilation + 1` is the dilated window; `CIRCULAR`
    pads by the same amounts periodically; `VALID` does not pad.
    """
    windows = []
    for axis, (length, size, stride, dil) in enumerate(
        zip(spatial_shape, window_shape, strides, dilation)
    ):
        extent = (size - 1) * dil + 1
        if padding == "VALID":
            lo = hi = 0
        else:
            total = max((math.ceil(length / stride) - 1) * stride + extent - length, 0)
            lo, hi = total // 2, total - total // 2
        padded = length + lo + hi
        if padded < extent:
            raise ValueError(
                f"`{type(layer).__name__}`'s `{window_name}` {window_shape} (dilation "
                f"{dilation}) is larger than its input of spatial shape {tuple(spatial_shape)} "
                f"on spatial axis {axis} ({extent} > {length}) with padding='VALID'; use a "
                f"smaller window or padding='SAME'."
            )
        out_len = (padded - extent) // stride + 1
        windows.append(Window(size, stride, dil, lo, hi, 0, padding == "CIRCULAR", length, out_len))
    return tuple(windows)


def conv_transpose_windows(
    spatial_shape: Sequence[int],
    filter_shape: tuple[int, ...],
    strides: tuple[int, ...],
    dilation: tuple[int, ...],
    padding: str,
) -> tuple[Window, ...]:
    """The windows of a transposed convolution (as `lax.conv_transpose` pads).

    The input is spread out by the strides and convolved with stride 1. `SAME` gives length
    `L * s`, `VALID` gives `(L - 1) * s + max(f, s)`; `CIRCULAR` computes the `VALID` result and
    folds it periodically onto the `SAME` length, with the crop centred.
    """
    windows = []
    for length, size, stride, dil in zip(spatial_shape, filter_shape, strides, dilation):
        extent = (size - 1) * dil + 1
        if padding == "SAME":
            pad_len = extent + stride - 2
            lo = extent - 1 if stride > extent - 1 else math.ceil(pad_len / 2)
        else:
            pad_len = extent + stride - 2 + max(extent - stride, 0)
            lo = extent - 1
        hi = pad_len - lo
        spread = (length - 1) * stride + 1
        out_len = spread + lo + hi - extent + 1
        fold_offset, fold_len = 0, None
        if padding == "CIRCULAR":
            fold_len = length * stride
            fold_offset = (out_len - fold_len) // 2
        windows.append(
            Window(size, 1, dil, lo, hi, stride - 1, False, length, out_len, fold_offset, fold_len)
        )
    return tuple(windows)


def _pad(a: Array, groups: tuple[tuple[tuple[int, ...], Window], ...]) -> Array:
    """Pad every axis of every group in one operation (chained pads fuse badly in XLA)."""
    circular = [(0, 0)] * a.ndim
    zeros = [(0, 0, 0)] * a.ndim
    for axes, w in groups:
        for axis in axes:
            if w.circular:
                circular[axis] = (w.pad_lo, w.pad_hi)
            else:
                zeros[axis] = (w.pad_lo, w.pad_hi, w.interior)
    if any(lo or hi for lo, hi in circular):
        a = jnp.pad(a, circular, mode="wrap")
    if any(lo or hi or interior for lo, hi, interior in zeros):
        a = lax.pad(a, jnp.zeros((), a.dtype), zeros)
    return a


def fold(a: Array, axis: int, w: Window) -> Array:
    """Fold axis `axis` of `a` periodically onto `w.fold_len` (see `Window`)."""
    assert w.fold_len is not None
    n = w.fold_len
    # Shift so that entry i lands at a position congruent to (i - fold_offset) mod n.
    shift = -(-w.fold_offset // n) * n - w.fold_offset
    total = -(-(shift + a.shape[axis]) // n) * n
    widths = [(0, 0)] * a.ndim
    widths[axis] = (shift, total - shift - a.shape[axis])
    a = jnp.pad(a, widths)
    a = a.reshape(a.shape[:axis] + (total // n, n) + a.shape[axis + 1 :])
    return a.sum(axis)


def window_sum(a: Array, groups: Sequence[tuple[Sequence[int], Window]]) -> Array:
    """Sum of the windows' taps of `a`, all groups at once.

    Each group is `(axes, window)`: the window acts on every axis of the group with the *same*
    tap, so a group of two axes (`i`, `i'`) is the "diagonal" shift-and-add
    `out[o, o'] = Σ_k ã[s o + d k, s o' + d k]` of a covariance, and a group of one axis is a
    plain window sum. The taps of different groups are combined in all ways (a product). The
    sum is written as a sum of slices of one padded array, which XLA fuses into a single pass
    without transposes.
    """
    groups = tuple((tuple(axis % a.ndim for axis in axes), w) for axes, w in groups)
    return _window_sum(a, groups)


Groups = tuple[tuple[tuple[int, ...], Window], ...]


# Compiled as one unit even when called eagerly: one fused loop instead of one dispatch (and one
# compilation) per slice.
@ft.partial(jax.jit, static_argnums=1)
def _window_sum(a: Array, groups: Groups) -> Array:
    padded = _pad(a, groups)
    if all(w.stride == 1 for _, w in groups):
        total = _unit_stride_taps(padded, groups)
    else:
        total = _strided_taps(padded, groups)
    for axes, w in groups:
        if w.fold_len is not None:
            for axis in axes:
                total = fold(total, axis, w)
    return total


def _strided_taps(a: Array, groups: Groups) -> Array:
    """The sum of the taps as strided slices of the padded array."""
    total = None
    for taps in itertools.product(*(range(w.size) for _, w in groups)):
        start, limit, step = [0] * a.ndim, list(a.shape), [1] * a.ndim
        for (axes, w), k in zip(groups, taps):
            for axis in axes:
                start[axis] = w.dilation * k
                limit[axis] = start[axis] + w.stride * (w.out_len - 1) + 1
                step[axis] = w.stride
        piece = lax.slice(a, start, limit, step)
        total = piece if total is None else total + piece
    assert total is not None
    return total


def _unit_stride_taps(a: Array, groups: Groups) -> Array:
    """The sum of the taps as shifted slices of the padded array flattened over its window axes.

    Same sum as `_strided_taps` with stride 1, written so that no tap is a slice of the padded
    array that XLA can recognise as its unpadded input. Were it one (the centre tap of a `SAME`
    window is), XLA would read that tap straight from the input's producer and fuse the producer
    in: a stack of convolutions then recomputes every earlier layer's NTK inside each later
    layer's fusion, a cost quadratic in depth (2.5x the time of the 8-layer CNN benchmark).
    Each tap is instead one contiguous slice of the flattened array, at the tap's flat offset;
    the rows past each output row are cropped at the end.
    """
    first = min(axis for axes, _ in groups for axis in axes)
    # One extra row at the end of the first window axis keeps every tap's slice in bounds.
    a = jnp.pad(a, [(0, 0)] * first + [(0, 1)] + [(0, 0)] * (a.ndim - first - 1))
    lead, padded = a.shape[:first], a.shape[first:]
    flat_strides = [math.prod(padded[i + 1 :]) for i in range(len(padded))]
    out = [padded[0] - 1] + list(padded[1:])
    for axes, w in groups:
        for axis in axes:
            out[axis - first] = w.out_len
    flat = a.reshape(lead + (math.prod(padded),))
    length = out[0] * flat_strides[0]
    total = None
    for taps in itertools.product(*(range(w.size) for _, w in groups)):
        offset = sum(
            w.dilation * k * flat_strides[axis - first]
            for (axes, w), k in zip(groups, taps)
            for axis in axes
        )
        piece = lax.slice_in_dim(flat, offset, offset + length, axis=first)
        total = piece if total is None else total + piece
    assert total is not None
    total = total.reshape(lead + (out[0],) + tuple(padded[1:]))
    return total[(...,) + tuple(slice(0, n) for n in out)]


def tap_counts(w: Window) -> np.ndarray:
    """For each output position, the number of taps that read real (not zero-padded) entries."""
    if w.circular:
        return np.full(w.out_len, w.size)
    o = np.arange(w.out_len)[:, None]
    k = np.arange(w.size)[None, :]
    i = w.stride * o + w.dilation * k - w.pad_lo
    real = (i >= 0) & (i < w.in_len)
    return real.sum(1)


def centre_mask(mask: Bool[Array, "..."], windows: Sequence[Window]) -> Bool[Array, "..."]:
    """The mask of a convolution's or pooling layer's output (the trailing axes are spatial).

    Each output position takes the mask of the input position at the centre of its window,
    `stride * o + (extent - 1) // 2 - pad_lo` with `extent = (size - 1) * dilation + 1`:
    neural-tangents' convention for strided and `VALID` layers. It is the identity when the
    layer keeps the positions (`SAME` or `CIRCULAR` with stride 1), and the centre is always a
    real position (never padding).
    """
    index: list[slice] = [slice(None)] * (mask.ndim - len(windows))
    for w in windows:
        start = ((w.size - 1) * w.dilation) // 2 - w.pad_lo
        index.append(slice(start, start + w.stride * (w.out_len - 1) + 1, w.stride))
    return mask[tuple(index)]


def reach_mask(mask: Bool[Array, "..."], windows: Sequence[Window]) -> Bool[Array, "..."]:
    """The mask of a transposed convolution's output (the trailing axes are spatial): an output
    position is masked when any masked input position reaches it, as neural-tangents does."""
    n = len(windows)
    reach = window_sum(mask.astype(jnp.int32), [((d - n,), w) for d, w in enumerate(windows)])
    return reach > 0


def check_mask(layer: object, mask: Bool[Array, "..."], spatial: tuple[int, ...]) -> None:
    """Raise unless the mask that `layer` holds covers the positions `spatial` of its input."""
    if mask.shape != spatial:
        raise ValueError(
            f"The `mask` of this `{type(layer).__name__}` layer must have the spatial shape "
            f"{spatial} of its input (one entry per position, shared by all channels), got "
            f"{mask.shape}. `nn.with_inputs` maps a mask through the layers of a `Sequential`; "
            f"give it the mask of the network's input."
        )


def mask_inputs(layer: object, mask: Bool[Array, "*spatial"] | None, x: Array) -> Array:
    """`x` `(C, *spatial)` with zeros at the masked positions that `layer` holds (see
    `eqntk.nn.with_inputs`); `x` itself when the layer holds no mask."""
    if mask is None:
        return x
    check_mask(layer, mask, x.shape[1:])
    return jnp.where(mask, jnp.zeros((), x.dtype), x)
