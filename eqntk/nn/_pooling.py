"""Pooling over spatial windows (`AvgPool`, `SumPool`) and over all positions (`GlobalAvgPool`,
`GlobalSumPool`)."""

from collections.abc import Sequence

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from ._windows import (
    Padding,
    Window,
    check_spatial_rank,
    check_window_args,
    conv_windows,
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
    ones = (1,) * len(layer.window_shape)
    windows = conv_windows(
        layer, x.shape[1:], layer.window_shape, layer.strides, ones, layer.padding, "window_shape"
    )
    n = len(windows)
    y = window_sum(x, [((1 + d,), w) for d, w in enumerate(windows)])
    for d, scale in enumerate(pool_scales(layer, windows)):
        y = y * jnp.asarray(scale, y.dtype).reshape((1,) * (1 + d) + (-1,) + (1,) * (n - 1 - d))
    return y


class AvgPool(eqx.Module):
    """Average pooling over spatial windows, for any number of spatial dimensions.

    With `SAME` padding the padded zeros count towards the mean unless `normalize_edges`, which
    divides by the number of real entries instead; `CIRCULAR` wraps around.

    Kernel rule: the pooling matrix $P$ of each spatial axis acts on both axes of the pair,
    $K' = P K P^\\top$ (one window sum along each axis, then the scale), which mixes positions:
    it needs the full spatial covariance of its input.
    """

    window_shape: tuple[int, ...] = eqx.field(static=True)
    strides: tuple[int, ...] = eqx.field(static=True)
    padding: Padding = eqx.field(static=True)
    normalize_edges: bool = eqx.field(static=True)

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
    covariance of its input.
    """

    window_shape: tuple[int, ...] = eqx.field(static=True)
    strides: tuple[int, ...] = eqx.field(static=True)
    padding: Padding = eqx.field(static=True)

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

    Kernel rule: the mean of the full spatial covariance over all pairs of positions,
    $K' = \\frac{1}{S^2}\\sum_{i, i'} K[i, i']$; it needs the full layout.

    **Example:**

    ```python
    import jax.numpy as jnp
    from eqntk import nn

    assert nn.GlobalAvgPool()(jnp.ones((3, 4, 4))).shape == (3,)
    ```
    """

    def __call__(
        self,
        x: Float[Array, "c ..."],
        *,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, " c"]:
        """Average one channel-first example `x` over its spatial axes."""
        return jnp.mean(x, axis=tuple(range(1, x.ndim)))


class GlobalSumPool(eqx.Module):
    """The sum over all spatial positions: `(C, *spatial) -> (C,)`.

    Kernel rule: $K' = \\sum_{i, i'} K[i, i']$ over all pairs of positions; it needs the full
    layout.

    **Example:**

    ```python
    import jax.numpy as jnp
    from eqntk import nn

    assert (nn.GlobalSumPool()(jnp.ones((3, 4, 4))) == 16).all()
    ```
    """

    def __call__(
        self,
        x: Float[Array, "c ..."],
        *,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, " c"]:
        """Sum one channel-first example `x` over its spatial axes."""
        return jnp.sum(x, axis=tuple(range(1, x.ndim)))
