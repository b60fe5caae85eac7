"""Pooling over spatial windows (`AvgPool`, `SumPool`) and over all positions (`GlobalAvgPool`,
`GlobalSumPool`)."""

from collections.abc import Sequence

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, PRNGKeyArray

from ._windows import (
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


def pool_scales(layer: "AvgPool | SumPool", windows: tuple[Window, ...]) -> list[np.ndarray]:
    """Per spatial axis, the factor of each output position: `1 / window` for the mean (or
    `1 / #real entries` with `normalize_edges`), `1` for the sum. Their outer product is the
    factor of each output entry."""
    if isinstance(layer, SumPool):
        return [np.ones(w.out_len) for w in windows]
    if layer.normalize_edges:
        return [1.0 / tap_counts(w) for w in windows]
    return [np.full(w.out_len, 1.0 / w.size) for w in windows]


def _pool(layer: "AvgPool | SumPool", x: Array) -> Array:
    check_spatial_rank(layer, len(layer.window_shape), x.shape, "x")
    x = mask_inputs(layer, layer.mask, x)
    ones = (1,) * len(layer.window_shape)
    windows = conv_windows(
        layer, x.shape[1:], layer.window_shape, layer.strides, ones, layer.padding, "window_shape"
    )
    n = len(windows)
    y = window_sum(x, [((1 + d,), w) for d, w in enumerate(windows)])
    for d, scale in enumerate(pool_scales(layer, windows)):
        y = y * jnp.asarray(scale, y.dtype).reshape((1,) * (1 + d) + (-1,) + (1,) * (n - 1 - d))
    return y


def _pool_output_mask(layer: "AvgPool | SumPool", mask: Array) -> Array:
    """The mask at each window's centre (see `centre_mask`)."""
    n = len(layer.window_shape)
    windows = conv_windows(
        layer,
        mask.shape[-n:],
        layer.window_shape,
        layer.strides,
        (1,) * n,
        layer.padding,
        "window_shape",
    )
    return centre_mask(mask, windows)


class AvgPool(eqx.Module):
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
        self.window_shape, self.strides, _ = check_window_args(
            "window_shape", window_shape, strides, None, padding
        )
        self.padding = padding
        self.normalize_edges = bool(normalize_edges)
        self.mask = None

    def output_mask(self, mask: Bool[Array, "..."]) -> Bool[Array, "..."]:
        """The mask of the layer's output: each output position takes the mask of the input
        position at the centre of its window (the identity for `SAME` with stride 1).

        **Arguments:**

        - `mask`: `True` at masked positions; its trailing axes are the input's spatial axes
          (leading axes, e.g. a batch, are kept).

        **Returns:**

        The mask over the output positions.

        **Example:**

        ```python
        import jax.numpy as jnp
        from eqntk import nn

        pool = nn.AvgPool((2,), strides=(2,))
        assert pool.output_mask(jnp.arange(5) >= 2).tolist() == [False, True]
        ```
        """
        return _pool_output_mask(self, mask)

    def __call__(
        self,
        x: Float[Array, "c ..."],
        *,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, "c ..."]:
        """Average-pool one channel-first example `x`.

        **Arguments:**

        - `x`: one example `(C, *spatial)`.
        - `key`: unused.

        **Returns:**

        The output `(C, *spatial_out)`.
        """
        return _pool(self, x)


class SumPool(eqx.Module):
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
        self.window_shape, self.strides, _ = check_window_args(
            "window_shape", window_shape, strides, None, padding
        )
        self.padding = padding
        self.mask = None

    def output_mask(self, mask: Bool[Array, "..."]) -> Bool[Array, "..."]:
        """The mask of the layer's output, as for [`eqntk.nn.AvgPool.output_mask`][].

        **Arguments:**

        - `mask`: `True` at masked positions; its trailing axes are the input's spatial axes.

        **Returns:**

        The mask over the output positions.
        """
        return _pool_output_mask(self, mask)

    def __call__(
        self,
        x: Float[Array, "c ..."],
        *,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, "c ..."]:
        """Sum-pool one channel-first example `x` of shape `(C, *spatial)`."""
        return _pool(self, x)


class GlobalAvgPool(eqx.Module):
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
        """Average one channel-first example `x` over its (unmasked) spatial positions."""
        axes = tuple(range(1, x.ndim))
        if self.mask is None:
            return jnp.mean(x, axis=axes)
        total = jnp.sum(mask_inputs(self, self.mask, x), axis=axes)
        return total / jnp.maximum(jnp.sum(~self.mask), 1).astype(x.dtype)


class GlobalSumPool(eqx.Module):
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
        """Sum one channel-first example `x` over its spatial axes (zeros where masked)."""
        x = mask_inputs(self, self.mask, x)
        return jnp.sum(x, axis=tuple(range(1, x.ndim)))
