"""Pooling over spatial windows (`AvgPool`, `SumPool`) and over all positions (`GlobalAvgPool`,
`GlobalSumPool`)."""

import abc
import dataclasses
import math
from collections.abc import Sequence

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, PRNGKeyArray

from .._geometry import (
    Padding,
    Window,
    centre_mask,
    check_spatial_rank,
    check_window_args,
    conv_windows,
    mask_inputs,
    tap_counts,
    window_sum,
)
from ..limits._kernel import Kernel
from ..limits._masking import mask_count, output_masks
from ..limits._registry import AbstractRule, Requirements, register
from ._conv import check_spatial_input
from ._masked import AbstractMaskedLayer


def pool_scales(layer: "AbstractWindowPool", windows: tuple[Window, ...]) -> list[np.ndarray]:
    """Per spatial axis, the factor of each output position: `1 / window` for the mean (or
    `1 / #real entries` with `normalize_edges`), `1` for the sum. Their outer product is the
    factor of each output entry."""
    if not isinstance(layer, AvgPool):
        return [np.ones(w.out_len) for w in windows]
    if layer.normalize_edges:
        return [1.0 / tap_counts(w) for w in windows]
    return [np.full(w.out_len, 1.0 / w.size) for w in windows]


class AbstractWindowPool(AbstractMaskedLayer):
    """A pooling over spatial windows, `(C, *spatial) -> (C, *spatial_out)`: the mean
    ([`eqntk.nn.AvgPool`][]) or the sum ([`eqntk.nn.SumPool`][]) of each window, scaled by
    `pool_scales`. Each final class holds the fields; the windows and the forward pass are read
    from them the same way."""

    window_shape: eqx.AbstractVar[tuple[int, ...]]
    strides: eqx.AbstractVar[tuple[int, ...]]
    padding: eqx.AbstractVar[Padding]

    def windows(self, spatial_shape: tuple[int, ...]) -> tuple[Window, ...]:
        """The window of each spatial dimension for inputs of `spatial_shape`."""
        ones = (1,) * len(self.window_shape)
        return conv_windows(
            self, spatial_shape, self.window_shape, self.strides, ones, self.padding, "window_shape"
        )

    def __call__(
        self,
        x: Float[Array, "c ..."],
        *,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, "c ..."]:
        """Pool one channel-first example `x` over each window.

        **Arguments:**

        - `x`: one example `(C, *spatial)`.
        - `key`: unused.

        **Returns:**

        The output `(C, *spatial_out)`.
        """
        check_spatial_rank(self, len(self.window_shape), x.shape, "x")
        x = mask_inputs(self, self.mask, x)
        windows = self.windows(x.shape[1:])
        n = len(windows)
        y = window_sum(x, [((1 + d,), w) for d, w in enumerate(windows)])
        for d, scale in enumerate(pool_scales(self, windows)):
            shape = (1,) * (1 + d) + (-1,) + (1,) * (n - 1 - d)
            y = y * jnp.asarray(scale, y.dtype).reshape(shape)
        return y


def _set_window_fields(
    layer: AbstractWindowPool,
    window_shape: Sequence[int],
    strides: Sequence[int] | None,
    padding: Padding,
) -> None:
    """Check and set the window geometry of a pooling layer, with no mask (from its
    `__init__`)."""
    layer.window_shape, layer.strides, _ = check_window_args(
        "window_shape", window_shape, strides, None, padding
    )
    layer.padding = padding
    layer.mask = None


class AvgPool(AbstractWindowPool):
    """Average pooling over spatial windows, for any number of spatial dimensions.

    With `SAME` padding the padded zeros count towards the mean unless `normalize_edges`, which
    divides by the number of real entries instead; `CIRCULAR` wraps around.

    Kernel rule: the pooling matrix $P$ of each spatial axis acts on both axes of the pair,
    $K' = P K P^\\top$ (one window sum along each axis, then the scale), which mixes positions:
    it needs the full spatial covariance of its input.

    Masks: with a mask set by [`eqntk.nn.with_inputs`][] the layer zeroes its input at masked
    positions, which still count towards the window size (as in neural-tangents); an output
    position is masked when the input position at the centre of its window is (`output_mask`).
    """

    window_shape: tuple[int, ...] = eqx.field(static=True)
    strides: tuple[int, ...] = eqx.field(static=True)
    padding: Padding = eqx.field(static=True)
    normalize_edges: bool = eqx.field(static=True)
    mask: Bool[Array, "*spatial"] | None

    def __init__(
        self,
        window_shape: Sequence[int],
        strides: Sequence[int] | None = None,
        padding: Padding = "VALID",
        normalize_edges: bool = False,
    ):
        """**Arguments:**

        - `window_shape`: the window size along each spatial dimension.
        - `strides`: the stride along each spatial dimension; `None` for ones (not the window).
        - `padding`: `"VALID"`, `"SAME"` or `"CIRCULAR"`.
        - `normalize_edges`: with `SAME` padding, average over the real entries only.

        **Example:**

        ```python
        import jax.numpy as jnp
        from eqntk import nn

        pool = nn.AvgPool((2, 2), strides=(2, 2))
        assert pool(jnp.ones((3, 8, 8))).shape == (3, 4, 4)
        ```
        """
        _set_window_fields(self, window_shape, strides, padding)
        self.normalize_edges = bool(normalize_edges)

    def output_mask(self, mask: Bool[Array, "..."]) -> Bool[Array, "..."]:
        """The mask of the layer's output, as for [`eqntk.nn.Conv.output_mask`][]: the mask at
        the centre of each window.

        **Arguments:**

        - `mask`: `True` at masked positions; trailing axes: the input's spatial axes.

        **Example:**

        ```python
        import jax.numpy as jnp
        from eqntk import nn

        pool = nn.AvgPool((2,), strides=(2,))
        assert pool.output_mask(jnp.arange(5) >= 2).tolist() == [False, True]
        ```
        """
        return centre_mask(mask, self.windows(mask.shape[-len(self.window_shape) :]))


class SumPool(AbstractWindowPool):
    """Sum pooling over spatial windows, for any number of spatial dimensions.

    Kernel rule: as [`eqntk.nn.AvgPool`][] without the scale; it needs the full spatial
    covariance of its input. Masks as for `AvgPool`.
    """

    window_shape: tuple[int, ...] = eqx.field(static=True)
    strides: tuple[int, ...] = eqx.field(static=True)
    padding: Padding = eqx.field(static=True)
    mask: Bool[Array, "*spatial"] | None

    def __init__(
        self,
        window_shape: Sequence[int],
        strides: Sequence[int] | None = None,
        padding: Padding = "VALID",
    ):
        """**Arguments:**

        - `window_shape`: the window size along each spatial dimension.
        - `strides`: the stride along each spatial dimension; `None` for ones.
        - `padding`: `"VALID"`, `"SAME"` (zeros) or `"CIRCULAR"`.

        **Example:**

        ```python
        import jax.numpy as jnp
        from eqntk import nn

        assert (nn.SumPool((2,))(jnp.ones((1, 3))) == 2).all()
        ```
        """
        _set_window_fields(self, window_shape, strides, padding)

    def output_mask(self, mask: Bool[Array, "..."]) -> Bool[Array, "..."]:
        """The mask of the layer's output, as for [`eqntk.nn.AvgPool.output_mask`][].

        **Arguments:**

        - `mask`: `True` at masked positions; its trailing axes are the input's spatial axes.

        **Returns:**

        The mask over the output positions.
        """
        return centre_mask(mask, self.windows(mask.shape[-len(self.window_shape) :]))


class AbstractGlobalPool(AbstractMaskedLayer):
    """A pooling over all spatial positions, `(C, *spatial) -> (C,)`: the sum
    ([`eqntk.nn.GlobalSumPool`][]) or the mean over the unmasked positions
    ([`eqntk.nn.GlobalAvgPool`][]). Both have one kernel rule, registered here."""

    @property
    @abc.abstractmethod
    def averages(self) -> bool:
        """Whether the layer divides the sum by the number of unmasked positions."""

    def output_mask(self, mask: Bool[Array, "..."]) -> None:
        """`None`: the output has no positions left to mask.

        **Arguments:**

        - `mask`: the mask of the input.

        **Returns:**

        `None`.
        """
        return None

    def __call__(
        self,
        x: Float[Array, "c ..."],
        *,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, " c"]:
        """Pool one channel-first example `x` over its spatial axes: the sum (masked positions
        counting as zeros), or with `averages` the mean over the unmasked positions."""
        axes = tuple(range(1, x.ndim))
        if self.mask is None:
            return jnp.mean(x, axis=axes) if self.averages else jnp.sum(x, axis=axes)
        total = jnp.sum(mask_inputs(self, self.mask, x), axis=axes)
        if not self.averages:
            return total
        return total / jnp.maximum(jnp.sum(~self.mask), 1).astype(x.dtype)


class GlobalAvgPool(AbstractGlobalPool):
    """The mean over all spatial positions: `(C, *spatial) -> (C,)`.

    With a mask (set by [`eqntk.nn.with_inputs`][]) the mean is over the unmasked positions
    only, $y_c = \\frac{1}{|U|}\\sum_{i \\in U} x_c[i]$ (zero when every position is masked).

    Kernel rule: the mean of the full spatial covariance over all pairs of unmasked positions,
    $K'(x_1, x_2) = \\frac{1}{|U_1| |U_2|}\\sum_{i \\in U_1, i' \\in U_2} K[i, i']$ ($|U| = S$,
    the number of positions, without masks); it needs the full layout.

    **Example:**

    ```python
    import jax.numpy as jnp
    from eqntk import nn

    assert nn.GlobalAvgPool()(jnp.ones((3, 4, 4))).shape == (3,)
    pool = nn.with_inputs(nn.GlobalAvgPool(), mask=jnp.arange(4) >= 1)
    assert pool(jnp.arange(4.0)[None]).tolist() == [0.0]   # the mean of the first entry
    ```
    """

    mask: Bool[Array, "*spatial"] | None = None

    @property
    def averages(self) -> bool:
        """`True`: the mean over the unmasked positions."""
        return True


class GlobalSumPool(AbstractGlobalPool):
    """The sum over all spatial positions: `(C, *spatial) -> (C,)`.

    With a mask (set by [`eqntk.nn.with_inputs`][]) the masked positions count as zeros.

    Kernel rule: $K' = \\sum_{i, i'} K[i, i']$ over all pairs of positions (the entries at
    masked positions are zero); it needs the full layout.

    **Example:**

    ```python
    import jax.numpy as jnp
    from eqntk import nn

    assert (nn.GlobalSumPool()(jnp.ones((3, 4, 4))) == 16).all()
    ```
    """

    mask: Bool[Array, "*spatial"] | None = None

    @property
    def averages(self) -> bool:
        """`False`: the sum, masked positions counting as zeros."""
        return False


# Kernel rules -------------------------------------------------------------------------------------
# Kernel rules of pooling: `AvgPool`, `SumPool`, `GlobalAvgPool` and `GlobalSumPool`.
#
# Pooling mixes positions, so these rules need the full spatial covariance of their input (the
# maps, e.g. `P K Pᵀ` per spatial dimension for the window layers, are in the layers' docstrings).
#
# Masks: the entries at masked positions are zero (`remask`), so window sums skip them; window
# layers take each batch's masks to the output positions (the window centres, `output_mask`),
# and `GlobalAvgPool` divides by the numbers of unmasked positions instead of all of them.


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
        windows = layer.windows(k.shape1[1:])
        scales = pool_scales(layer, windows)
        if all(np.all(s == s[0]) for s in scales):
            # A uniform scale: one scalar instead of an array broadcast over the kernel.
            factor: np.ndarray | float = float(np.prod([s[0] ** 2 for s in scales]))
        else:
            factor = scales[0][:, None] * scales[0][None, :]
            for s in scales[1:]:
                factor = np.multiply.outer(factor, s[:, None] * s[None, :])
        spatial = tuple(w.out_len for w in windows)
        return k.map_covariances(
            lambda a: _pool_pairs(a, windows, factor),
            shape1=k.shape1[:1] + spatial,
            shape2=k.shape2[:1] + spatial,
            **output_masks(layer, k),
        )


@register(AbstractGlobalPool)
class GlobalPoolRule(AbstractRule[AbstractGlobalPool]):
    """Kernel rule of [`eqntk.nn.GlobalAvgPool`][] and [`eqntk.nn.GlobalSumPool`][] (the maps
    are in their docstrings); it needs the full spatial covariance."""

    def requirements(self, layer: AbstractGlobalPool, wanted: Requirements) -> Requirements:
        return dataclasses.replace(wanted, diagonal_spatial=False)

    def __call__(self, layer: AbstractGlobalPool, k: Kernel, wanted: Requirements) -> Kernel:
        _require_full(layer, k)
        n = k.spatial_ndim

        def pool(a: Array) -> Array:
            return jnp.sum(a, axis=tuple(range(a.ndim - 2 * n, a.ndim)))

        # The output has no positions: its masks are None.
        out = k.map_covariances(
            pool,
            shape1=k.shape1[:1],
            shape2=k.shape2[:1],
            diagonal_spatial=False,
            **output_masks(layer, k),
        )
        if not layer.averages:
            return out
        n1, n2 = k.nngp.shape[:2]
        count1 = _unmasked_counts(k.mask1, n1, k.shape1, k.nngp.dtype)
        count2 = _unmasked_counts(k.mask2_or_mask1, n2, k.shape2, k.nngp.dtype)
        pair = count1[:, None] * count2[None, :]
        return out.map_covariances(
            lambda a: a / pair,
            cov1_fn=lambda a: a / count1**2,
            cov2_fn=lambda a: a / count2**2,
        )


def _unmasked_counts(mask, n: int, shape: tuple[int, ...], dtype) -> Array:
    """The number of unmasked positions of each of `n` examples (all of them without a mask)."""
    if mask is None:
        return jnp.full((n,), math.prod(shape[1:]), dtype)
    return mask_count(mask, dtype)
