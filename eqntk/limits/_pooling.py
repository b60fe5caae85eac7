"""Kernel rules of pooling: `AvgPool`, `SumPool`, `GlobalAvgPool` and `GlobalSumPool`.

Pooling mixes positions, so these rules need the full spatial covariance of their input. Along
each spatial dimension a window layer with pooling matrix `P` maps the pair of axes `(i, i')` to
`P K Pᵀ`: one window sum along `i` and one along `i'`, then the scale of each output entry.

Masks: the entries at masked positions are zero (`remask`), so window sums skip them; window
layers take each batch's masks to the output positions (the window centres, `output_mask`),
and `GlobalAvgPool` divides by the numbers of unmasked positions instead of all of them.
"""

import dataclasses
import math

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from ..nn import AvgPool, GlobalAvgPool, GlobalSumPool, SumPool
from ..nn._pooling import pool_scales
from ..nn._windows import Window, conv_windows, window_sum
from ._conv import check_spatial_input, map_kernel
from ._kernel import Kernel
from ._masking import mask_count, output_masks
from ._registry import AbstractRule, Requirements, register


def _require_full(layer: object, k: Kernel) -> None:
    if k.diagonal_spatial and k.spatial_ndim > 0:
        raise ValueError(
            f"`{type(layer).__name__}` mixes positions and needs the full spatial covariance of "
            f"its input, got the diagonal layout (compute the input kernel with "
            f"`diagonal_spatial=False`)."
        )


def _pool_pairs(a: Array, windows: tuple[Window, ...], factor: np.ndarray | float) -> Array:
    """`P K Pᵀ` on every interleaved pair of trailing spatial axes, times `factor`."""
    n = len(windows)
    for d, w in enumerate(windows):
        for axis in (2 * d - 2 * n, 2 * d - 2 * n + 1):
            a = window_sum(a, [((axis,), w)])
    if isinstance(factor, np.ndarray):
        return a * jnp.asarray(factor, a.dtype).reshape(
            (1,) * (a.ndim - factor.ndim) + factor.shape
        )
    return a * factor


@register(AvgPool, SumPool)
class PoolRule(AbstractRule[AvgPool | SumPool]):
    """Kernel rule of [`eqntk.nn.AvgPool`][] and [`eqntk.nn.SumPool`][]."""

    def requirements(self, layer: AvgPool | SumPool, wanted: Requirements) -> Requirements:
        return dataclasses.replace(wanted, diagonal_spatial=False)

    def __call__(self, layer: AvgPool | SumPool, k: Kernel, wanted: Requirements) -> Kernel:
        n = len(layer.window_shape)
        check_spatial_input(layer, n, k)
        _require_full(layer, k)
        windows = conv_windows(
            layer,
            k.shape1[1:],
            layer.window_shape,
            layer.strides,
            (1,) * n,
            layer.padding,
            "window_shape",
        )
        scales = pool_scales(layer, windows)
        if all(np.all(s == s[0]) for s in scales):
            # A uniform scale: one scalar instead of an array broadcast over the kernel.
            factor: np.ndarray | float = float(np.prod([s[0] ** 2 for s in scales]))
        else:
            factor = scales[0][:, None] * scales[0][None, :]
            for s in scales[1:]:
                factor = np.multiply.outer(factor, s[:, None] * s[None, :])
        spatial = tuple(w.out_len for w in windows)
        return map_kernel(
            k,
            lambda a: _pool_pairs(a, windows, factor),
            shape1=k.shape1[:1] + spatial,
            shape2=k.shape2[:1] + spatial,
            **output_masks(layer, k),
        )


@register(GlobalAvgPool, GlobalSumPool)
class GlobalPoolRule(AbstractRule[GlobalAvgPool | GlobalSumPool]):
    """Kernel rule of [`eqntk.nn.GlobalAvgPool`][] and [`eqntk.nn.GlobalSumPool`][]: the sum of
    the full spatial covariance over all pairs of positions, divided for the mean by the
    numbers of unmasked positions of the two examples, $|U_1| |U_2|$ (the entries at masked
    positions are zero)."""

    def requirements(
        self, layer: GlobalAvgPool | GlobalSumPool, wanted: Requirements
    ) -> Requirements:
        return dataclasses.replace(wanted, diagonal_spatial=False)

    def __call__(
        self, layer: GlobalAvgPool | GlobalSumPool, k: Kernel, wanted: Requirements
    ) -> Kernel:
        _require_full(layer, k)
        n = k.spatial_ndim

        def pool(a: Array) -> Array:
            return jnp.sum(a, axis=tuple(range(a.ndim - 2 * n, a.ndim)))

        # The output has no positions: its masks are None.
        out = map_kernel(
            k,
            pool,
            shape1=k.shape1[:1],
            shape2=k.shape2[:1],
            diagonal_spatial=False,
            **output_masks(layer, k),
        )
        if isinstance(layer, GlobalSumPool):
            return out
        n1, n2 = k.nngp.shape[:2]
        count1 = _unmasked_counts(k.mask1, n1, k.shape1, k.nngp.dtype)
        count2 = _unmasked_counts(k.mask2_or_mask1, n2, k.shape2, k.nngp.dtype)
        pair = count1[:, None] * count2[None, :]
        return out.replace(
            nngp=out.nngp / pair,
            ntk=None if out.ntk is None else out.ntk / pair,
            cov1=out.cov1 / count1**2,
            cov2=None if out.cov2 is None else out.cov2 / count2**2,
        )


def _unmasked_counts(mask, n: int, shape: tuple[int, ...], dtype) -> Array:
    """The number of unmasked positions of each of `n` examples (all of them without a mask)."""
    if mask is None:
        return jnp.full((n,), math.prod(shape[1:]), dtype)
    return mask_count(mask, dtype)
