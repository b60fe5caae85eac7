"""Kernel rules of the convolutions: `Conv`, `ConvTranspose` and `ConvLocal`.

Per spatial dimension a convolution maps the covariance of its input by a shift-and-add along
the diagonal of the pair of axes `(i, i')`: `K'[o, o'] = (1/f) Σ_k K̃[s o + d k, s o' + d k]`
with the padded input covariance `K̃` (zeros for `SAME`, wrapped around for `CIRCULAR`). The
diagonal layout is the same map on one axis. All dimensions are done in one pass (a sum of
strided slices of the padded array, see `window_sum`), and the affine map of `Dense` follows.
With masks, the masked entries of the input covariance are zero, and each batch's masks go to
the output positions (`layer.output_mask`: the window centres, or for `ConvTranspose` every
output that a masked input reaches).
"""

import dataclasses
import math

import jax.numpy as jnp
from jaxtyping import Array

from ..nn import Conv, ConvLocal, ConvTranspose
from ..nn._windows import (
    Window,
    check_spatial_rank,
    conv_transpose_windows,
    conv_windows,
    window_sum,
)
from ._dense import affine_kernel, check_channels
from ._kernel import Kernel
from ._masking import output_masks
from ._registry import AbstractRule, Requirements, register
from ._spatial import to_diagonal_spatial


def window_groups(
    windows: tuple[Window, ...], diagonal_spatial: bool
) -> list[tuple[tuple[int, ...], Window]]:
    """The axes each window acts on in a kernel array, counted from the end (so that the same
    groups serve `nngp`, with two batch axes, and `cov1`, with one)."""
    n = len(windows)
    if diagonal_spatial:
        return [((d - n,), w) for d, w in enumerate(windows)]
    return [((2 * d - 2 * n, 2 * d - 2 * n + 1), w) for d, w in enumerate(windows)]


def map_kernel(k: Kernel, fn, **changes) -> Kernel:
    """Apply `fn` to every covariance of `k` and change its metadata in the same step (the
    arrays' shapes may only fit the new metadata)."""
    return k.replace(
        nngp=fn(k.nngp),
        ntk=None if k.ntk is None else fn(k.ntk),
        cov1=fn(k.cov1),
        cov2=None if k.cov2 is None else fn(k.cov2),
        **changes,
    )


def check_spatial_input(layer: object, n_spatial: int, k: Kernel) -> None:
    """Raise unless both inputs of `k` have `n_spatial` spatial dimensions."""
    check_spatial_rank(layer, n_spatial, k.shape1, "x1")
    check_spatial_rank(layer, n_spatial, k.shape2, "x2")


def _conv_kernel(layer, k: Kernel, windows: tuple[Window, ...]) -> Kernel:
    """Shift-and-add every covariance over the windows, then apply the affine map; the masks
    go to the output positions (`layer.output_mask`)."""
    groups = window_groups(windows, k.diagonal_spatial)
    n_taps = math.prod(layer.filter_shape)
    spatial = tuple(w.length for w in windows)
    pooled = map_kernel(
        k,
        lambda a: window_sum(a, groups) / n_taps,
        shape1=k.shape1[:1] + spatial,
        shape2=k.shape2[:1] + spatial,
        **output_masks(layer, k),
    )
    return affine_kernel(
        pooled,
        layer,
        layer.W_std,
        layer.b_std,
        layer.fan_in,
        layer.parameterization,
        layer.s[1] * layer.out_channels,
    )


def _check_affine_input(layer, k: Kernel) -> None:
    check_spatial_input(layer, len(layer.filter_shape), k)
    check_channels(layer, layer.s[0] * layer.in_channels, k)


@register(Conv)
class ConvRule(AbstractRule[Conv]):
    """Kernel rule of [`eqntk.nn.Conv`][]: keeps the spatial layout it is asked for."""

    def requirements(self, layer: Conv, wanted: Requirements) -> Requirements:
        return wanted

    def __call__(self, layer: Conv, k: Kernel, wanted: Requirements) -> Kernel:
        _check_affine_input(layer, k)
        windows = conv_windows(
            layer, k.shape1[1:], layer.filter_shape, layer.strides, layer.dilation, layer.padding
        )
        return _conv_kernel(layer, k, windows)


@register(ConvTranspose)
class ConvTransposeRule(AbstractRule[ConvTranspose]):
    """Kernel rule of [`eqntk.nn.ConvTranspose`][]: keeps the layout, except that `CIRCULAR`
    folding with a filter wider than the stride needs the full covariance of its input."""

    def requirements(self, layer: ConvTranspose, wanted: Requirements) -> Requirements:
        if layer.mixes_positions:
            return dataclasses.replace(wanted, diagonal_spatial=False)
        return wanted

    def __call__(self, layer: ConvTranspose, k: Kernel, wanted: Requirements) -> Kernel:
        _check_affine_input(layer, k)
        if k.diagonal_spatial and layer.mixes_positions:
            raise ValueError(
                "`ConvTranspose` with padding='CIRCULAR' and a filter wider than its stride "
                "folds different positions together and needs the full spatial covariance of "
                "its input, got the diagonal layout."
            )
        windows = conv_transpose_windows(
            k.shape1[1:], layer.filter_shape, layer.strides, layer.dilation, layer.padding
        )
        return _conv_kernel(layer, k, windows)


def _diagonal_to_full(a: Array, n_spatial: int) -> Array:
    """Place a diagonal-layout covariance on the spatial diagonal of the full layout."""
    lead, spatial = a.shape[:-n_spatial], a.shape[-n_spatial:]
    out = a.reshape(lead + sum(((s, 1) for s in spatial), ()))
    for d, s in enumerate(spatial):
        eye = jnp.eye(s, dtype=a.dtype)
        out = out * eye.reshape((1,) * (len(lead) + 2 * d) + (s, s) + (1, 1) * (n_spatial - d - 1))
    return out


@register(ConvLocal)
class ConvLocalRule(AbstractRule[ConvLocal]):
    """Kernel rule of [`eqntk.nn.ConvLocal`][]: the diagonal of the `Conv` rule; different
    positions are uncorrelated (independent weights and biases), so only the diagonal of the input
    covariance is ever needed."""

    def requirements(self, layer: ConvLocal, wanted: Requirements) -> Requirements:
        return dataclasses.replace(wanted, diagonal_spatial=True)

    def __call__(self, layer: ConvLocal, k: Kernel, wanted: Requirements) -> Kernel:
        _check_affine_input(layer, k)
        if k.shape1[1:] != layer.spatial_shape or k.shape2[1:] != layer.spatial_shape:
            raise ValueError(
                f"`ConvLocal` was built for inputs of spatial shape {layer.spatial_shape}, got "
                f"per-example shapes {k.shape1} (x1) and {k.shape2} (x2)."
            )
        windows = conv_windows(
            layer, k.shape1[1:], layer.filter_shape, layer.strides, layer.dilation, layer.padding
        )
        out = _conv_kernel(layer, to_diagonal_spatial(k), windows)
        if wanted.diagonal_spatial:
            return out
        n = len(windows)
        return map_kernel(out, lambda a: _diagonal_to_full(a, n), diagonal_spatial=False)
