"""Branching layers: `FanOut`, `Parallel`, the fan-in layers, and the `residual` helper.

A network with branches passes a tuple of activations (one per stream) between the layer that
splits the stream (`FanOut`) and the layer that joins the streams back (`FanInSum`,
`FanInProd`, `FanInConcat`); `Parallel` applies one layer to each stream.
"""

import functools
from collections.abc import Sequence
from typing import Any, Literal

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float, PRNGKeyArray

from ._structure import Identity, Sequential


Streams = tuple[Float[Array, "..."], ...]


class FanOut(eqx.Module):
    """Split one activation into `n` identical streams.

    Its limit turns one kernel into a tuple of `n` equal kernels; the layers that follow
    (usually a [`eqntk.nn.Parallel`][]) must give each stream its own random affine layer,
    because the kernels of the fan-in layers treat the streams as independent.
    """

    n: int = eqx.field(static=True)

    def __init__(self, n: int):
        """**Arguments:**

        - `n`: the number of streams, at least 1.

        **Example:**

        ```python
        import jax.numpy as jnp
        from eqntk import nn

        a, b = nn.FanOut(2)(jnp.ones(3))
        assert a.shape == b.shape == (3,)
        ```
        """
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"`FanOut` needs a positive integer `n`, got {n!r}.")
        self.n = n

    def __call__(self, x: Float[Array, "*shape"], *, key: PRNGKeyArray | None = None) -> Streams:
        """Return the tuple `(x, ..., x)` of `n` streams."""
        return (x,) * self.n


class Parallel(eqx.Module):
    """Apply layer `i` to stream `i` of a tuple of streams.

    Its limit applies each layer's rule to the kernel of its stream.
    """

    layers: tuple[Any, ...]

    def __init__(self, layers: Sequence[Any]):
        """**Arguments:**

        - `layers`: one layer per stream (e.g. the branch and the shortcut of a residual
          block). Each is called as `layer(x, key=key)`.

        **Example:**

        ```python
        import jax.numpy as jnp
        import jax.random as jr
        from eqntk import nn

        model = nn.Parallel([nn.Dense(3, 4, key=jr.key(0)), nn.Identity()])
        a, b = model((jnp.ones(3), jnp.ones(3)))
        assert a.shape == (4,) and b.shape == (3,)
        ```
        """
        self.layers = tuple(layers)
        if not self.layers:
            raise ValueError("`Parallel` needs at least one layer.")

    def __call__(self, x: Streams, *, key: PRNGKeyArray | None = None) -> Streams:
        """Apply the layers to their streams.

        **Arguments:**

        - `x`: a tuple with one activation per layer.
        - `key`: a `jax.random` key, split between the layers (for `Dropout`), or `None`.

        **Returns:**

        The tuple of the layers' outputs.
        """
        check_stream_count(self, x, len(self.layers))
        keys = [None] * len(self.layers) if key is None else jr.split(key, len(self.layers))
        return tuple(layer(xi, key=ki) for layer, xi, ki in zip(self.layers, x, keys))


class FanInSum(eqx.Module):
    """Join streams by adding them; all streams must have the same shape.

    Kernel rule: the kernels of independent streams add,
    $\\mathcal{K} = \\sum_i \\mathcal{K}_i$ and $\\Theta = \\sum_i \\Theta_i$. This needs every
    stream to be Gaussian (it ends in an affine layer, or is an identity of a Gaussian stream);
    the rule raises an error otherwise.

    **Example:**

    ```python
    import jax.numpy as jnp
    from eqntk import nn

    assert (nn.FanInSum()((jnp.ones(3), 2 * jnp.ones(3))) == 3).all()
    ```
    """

    def __call__(self, x: Streams, *, key: PRNGKeyArray | None = None) -> Float[Array, "*shape"]:
        """Return the sum of the streams."""
        check_same_shapes(self, _stream_shapes(self, x))
        return functools.reduce(jnp.add, x)


class FanInProd(eqx.Module):
    """Join streams by multiplying them elementwise; all streams must have the same shape.

    Kernel rule for independent streams: $\\mathcal{K} = \\prod_i \\mathcal{K}_i$ and, by the
    product rule, $\\Theta = \\sum_i \\Theta_i \\prod_{j \\neq i} \\mathcal{K}_j$ (for two streams
    $\\Theta = \\Theta_1 \\mathcal{K}_2 + \\mathcal{K}_1 \\Theta_2$). The product is not Gaussian,
    so an affine layer must follow before any nonlinearity.

    **Example:**

    ```python
    import jax.numpy as jnp
    from eqntk import nn

    assert (nn.FanInProd()((2 * jnp.ones(3), 3 * jnp.ones(3))) == 6).all()
    ```
    """

    def __call__(self, x: Streams, *, key: PRNGKeyArray | None = None) -> Float[Array, "*shape"]:
        """Return the elementwise product of the streams."""
        check_same_shapes(self, _stream_shapes(self, x))
        return functools.reduce(jnp.multiply, x)


class FanInConcat(eqx.Module):
    """Join streams by concatenating them along the channel axis or a spatial axis.

    Kernel rule, for independent streams:

    - along the channel axis: the mean of the stream kernels weighted by the finite channel
      widths $n_i$ of the streams, $\\mathcal{K} = \\sum_i n_i \\mathcal{K}_i / \\sum_i n_i$ (the
      same for $\\Theta$). Each channel keeps the kernel of its stream, so the result is not
      Gaussian: an affine layer must follow before any nonlinearity.
    - along a spatial axis: the block-diagonal kernel, whose diagonal blocks are the stream
      kernels and whose off-diagonal blocks are zero (the streams are independent). This needs
      every stream to be Gaussian.
    """

    axis: Literal["channel"] | int = eqx.field(static=True)

    def __init__(self, axis: Literal["channel"] | int = "channel"):
        """**Arguments:**

        - `axis`: `"channel"`, or the index `k >= 0` of a spatial axis (`0` is the first
          axis after the channels: the length of a sequence, the height of an image).

        **Example:**

        ```python
        import jax.numpy as jnp
        from eqntk import nn

        x = (jnp.ones((2, 5)), jnp.ones((3, 5)))
        assert nn.FanInConcat()(x).shape == (5, 5)
        assert nn.FanInConcat(0)((jnp.ones((2, 5)), jnp.ones((2, 4)))).shape == (2, 9)
        ```
        """
        if axis != "channel" and not (isinstance(axis, int) and axis >= 0):
            raise ValueError(
                f"`FanInConcat` takes `axis='channel'` or the index of a spatial axis "
                f"(an integer >= 0), got {axis!r}."
            )
        self.axis = axis

    def __call__(self, x: Streams, *, key: PRNGKeyArray | None = None) -> Float[Array, "*shape"]:
        """Return the concatenation of the streams."""
        shapes = _stream_shapes(self, x)
        array_axis = concat_array_axis(self, len(shapes[0]) - 1)
        check_same_shapes(self, shapes, except_axis=array_axis)
        return jnp.concatenate(x, axis=array_axis)


def concat_array_axis(layer: FanInConcat, n_spatial: int) -> int:
    """The axis of a channel-first activation with `n_spatial` spatial axes to concatenate."""
    if layer.axis == "channel":
        return 0
    if layer.axis >= n_spatial:
        raise ValueError(
            f"`FanInConcat(axis={layer.axis})` concatenates along spatial axis {layer.axis}, but "
            f"its inputs have {n_spatial} spatial axes."
        )
    return 1 + layer.axis


def check_stream_count(layer: object, x: Any, expected: int) -> None:
    """Raise unless `x` is a tuple of `expected` streams."""
    if not isinstance(x, tuple):
        raise TypeError(
            f"`{type(layer).__name__}` takes a tuple of {expected} streams (made by `FanOut`), "
            f"got {type(x).__name__}."
        )
    if len(x) != expected:
        raise ValueError(
            f"`{type(layer).__name__}` has {expected} branches but received {len(x)} streams."
        )


def check_same_shapes(
    layer: object, shapes: Sequence[tuple[int, ...]], except_axis: int | None = None
) -> None:
    """Raise unless the per-example `shapes` of the streams agree, except along `except_axis`."""

    def reduced(shape):
        if except_axis is None:
            return shape
        return shape[:except_axis] + shape[except_axis + 1 :]

    if any(len(s) != len(shapes[0]) or reduced(s) != reduced(shapes[0]) for s in shapes):
        along = "" if except_axis is None else " (except along the concatenated axis)"
        raise ValueError(
            f"`{type(layer).__name__}` needs streams of the same shape{along}, got per-example "
            f"shapes {list(shapes)}."
        )


def _stream_shapes(layer: object, x: Any) -> list[tuple[int, ...]]:
    if not isinstance(x, tuple) or not x:
        raise TypeError(
            f"`{type(layer).__name__}` takes a non-empty tuple of streams (made by `FanOut`), "
            f"got {type(x).__name__}."
        )
    return [tuple(xi.shape) for xi in x]


def residual(block: Any, shortcut: Any | None = None) -> Sequential:
    """A residual block: the sum of `block(x)` and `shortcut(x)`.

    Built as `Sequential([FanOut(2), Parallel([block, shortcut]), FanInSum()])`. In the limit
    the kernels of the two paths add, which needs both to be Gaussian: `block` must end in an
    affine layer, and `shortcut` must be an identity of a Gaussian activation (the output of an
    affine layer) or an affine layer itself (e.g. a strided `Conv` that matches the shapes).

    **Arguments:**

    - `block`: the residual branch.
    - `shortcut`: the shortcut branch; `None` for [`eqntk.nn.Identity`][].

    **Returns:**

    A [`eqntk.nn.Sequential`][].

    **Example:**

    ```python
    import jax.numpy as jnp
    import jax.random as jr
    import eqntk
    from eqntk import nn

    block = nn.Sequential([nn.Relu(), nn.Dense(8, 8, key=jr.key(1))])
    model = nn.Sequential([nn.Dense(3, 8, key=jr.key(0)), nn.residual(block)])
    assert model(jnp.ones(3)).shape == (8,)
    assert eqntk.limit(model)(jnp.ones((2, 3)), get="nngp").shape == (2, 2)
    ```
    """
    shortcut = Identity() if shortcut is None else shortcut
    return Sequential([FanOut(2), Parallel([block, shortcut]), FanInSum()])
