"""Branching layers: `FanOut`, `Parallel`, the fan-in layers, and the `residual` helper.

A network with branches passes a tuple of activations (one per stream) between the layer that
splits the stream (`FanOut`) and the layer that joins the streams back (`FanInSum`,
`FanInProd`, `FanInConcat`); `Parallel` applies one layer to each stream.
"""

import functools
from collections.abc import Sequence
from typing import Any, Literal, TypeVar, cast

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float, PRNGKeyArray

from ..limits._kernel import Kernel
from ..limits._registry import (
    AbstractStreamsRule,
    KernelTree,
    Requirements,
    RequirementsTree,
    apply,
    register,
    requirements,
)
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

    Kernel rule: the kernels of independent streams add; every stream must be Gaussian.

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

    Kernel rule: the kernels of independent streams multiply (the NTK by the product rule); the
    product is not Gaussian, so an affine layer must follow before any nonlinearity.

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

    Kernel rule: the width-weighted mean of the stream kernels along the channel axis (not
    Gaussian: an affine layer must follow before any nonlinearity), the block-diagonal kernel of
    Gaussian streams along a spatial axis.
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


# Kernel rules -------------------------------------------------------------------------------------
# Kernel rules of the branching layers: `FanOut`, `Parallel` and the fan-in layers.
#
# Streams are tuples of kernels. The fan-in rules treat the streams as independent Gaussian
# processes, which holds when each stream has its own random affine layer after the `FanOut`.


@register(FanOut)
class FanOutRule(AbstractStreamsRule[FanOut]):
    """Kernel rule of [`eqntk.nn.FanOut`][]: `n` copies of the kernel.

    The input must satisfy what every stream needs: the requirements of the streams merge.
    """

    def requirements(self, layer: FanOut, wanted: RequirementsTree) -> RequirementsTree:
        if not isinstance(wanted, tuple):
            return wanted
        if len(wanted) != layer.n:
            raise ValueError(
                f"`FanOut({layer.n})` makes {layer.n} streams, but the layers after it take "
                f"{len(wanted)} streams."
            )
        if not all(isinstance(w, Requirements) for w in wanted):
            raise ValueError(
                f"`FanOut({layer.n})` makes streams of one kernel each, but a layer after it "
                f"takes nested streams."
            )
        return functools.reduce(Requirements.merge, cast(tuple[Requirements, ...], wanted))

    def __call__(self, layer: FanOut, k: KernelTree, wanted: RequirementsTree) -> KernelTree:
        if isinstance(k, tuple):
            raise ValueError(
                f"`FanOut` takes one stream, got {len(k)}: join the streams first (`FanInSum`, "
                f"`FanInProd`, `FanInConcat`)."
            )
        return (k,) * layer.n


@register(Parallel)
class ParallelRule(AbstractStreamsRule[Parallel]):
    """Kernel rule of [`eqntk.nn.Parallel`][]: each layer's rule on the kernel of its stream."""

    def requirements(self, layer: Parallel, wanted: RequirementsTree) -> RequirementsTree:
        n = len(layer.layers)
        if isinstance(wanted, tuple):
            if len(wanted) != n:
                raise ValueError(
                    f"`Parallel` has {n} branches, but the layers after it take "
                    f"{len(wanted)} streams."
                )
        else:
            wanted = (wanted,) * n
        return tuple(requirements(child, w) for child, w in zip(layer.layers, wanted))

    def __call__(self, layer: Parallel, k: KernelTree, wanted: RequirementsTree) -> KernelTree:
        check_stream_count(layer, k, len(layer.layers))
        assert isinstance(k, tuple)  # checked above
        if not isinstance(wanted, tuple):
            wanted = (wanted,) * len(layer.layers)
        return tuple(apply(child, ki, w) for child, ki, w in zip(layer.layers, k, wanted))


_FanIn = TypeVar("_FanIn", FanInSum, FanInProd, FanInConcat)


class AbstractFanInRule(AbstractStreamsRule[_FanIn]):
    """A rule that joins streams into one kernel: the base of the rules of
    [`eqntk.nn.FanInSum`][], [`eqntk.nn.FanInProd`][] and [`eqntk.nn.FanInConcat`][]."""

    def requirements(self, layer: _FanIn, wanted: RequirementsTree) -> RequirementsTree:
        # One Requirements stands for every incoming stream, however many there are.
        return wanted


def _streams(layer: object, ks: KernelTree) -> tuple[Kernel, ...]:
    """Check that `ks` is a non-empty tuple of kernels in one layout."""
    if not isinstance(ks, tuple) or not ks:
        raise TypeError(
            f"`{type(layer).__name__}` joins a tuple of streams (made by `FanOut`), got one stream."
        )
    if not all(isinstance(k, Kernel) for k in ks):
        raise TypeError(
            f"`{type(layer).__name__}` joins streams of one kernel each, got nested streams."
        )
    ks = cast(tuple[Kernel, ...], ks)
    first = ks[0]
    for k in ks[1:]:
        if k.diagonal_spatial != first.diagonal_spatial or k.x1_is_x2 != first.x1_is_x2:
            raise ValueError(
                f"`{type(layer).__name__}` needs all streams in the same kernel layout."
            )
    return ks


def _require_gaussian_streams(layer: object, ks: tuple[Kernel, ...]) -> None:
    bad = [i for i, k in enumerate(ks) if not k.is_gaussian]
    if bad:
        raise ValueError(
            f"`{type(layer).__name__}` needs every incoming stream to be Gaussian in the "
            f"infinite-width limit, but stream(s) {bad} are not: end each branch with an affine "
            f"layer (`Dense`, `Conv`, ...), or use an `Identity` branch only on the output of "
            f"an affine layer."
        )


def _check_same_shapes(layer: object, ks: tuple[Kernel, ...], except_axis=None) -> None:
    check_same_shapes(layer, [k.shape1 for k in ks], except_axis)
    check_same_shapes(layer, [k.shape2 for k in ks], except_axis)


def _sum_or_none(arrays: list[Array | None]) -> Array | None:
    present = [a for a in arrays if a is not None]
    return None if arrays[0] is None else functools.reduce(jnp.add, present)


@register(FanInSum)
class FanInSumRule(AbstractFanInRule[FanInSum]):
    """Kernel rule of [`eqntk.nn.FanInSum`][]: the sum of the kernels of independent Gaussian
    streams, $\\mathcal{K} = \\sum_i \\mathcal{K}_i$, $\\Theta = \\sum_i \\Theta_i$. A stream is
    Gaussian when it ends in an affine layer or is an identity of a Gaussian stream; an error
    otherwise."""

    def __call__(self, layer: FanInSum, ks: KernelTree, wanted: RequirementsTree) -> Kernel:
        streams = _streams(layer, ks)
        _check_same_shapes(layer, streams)
        first = streams[0]
        if len(streams) > 1:
            _require_gaussian_streams(layer, streams)
        return first.replace(
            nngp=_sum_or_none([k.nngp for k in streams]),
            ntk=_sum_or_none([k.ntk for k in streams]),
            cov1=_sum_or_none([k.cov1 for k in streams]),
            cov2=_sum_or_none([k.cov2 for k in streams]),
            is_gaussian=all(k.is_gaussian for k in streams),
        )


@register(FanInProd)
class FanInProdRule(AbstractFanInRule[FanInProd]):
    """Kernel rule of [`eqntk.nn.FanInProd`][]: for independent streams
    $\\mathcal{K} = \\prod_i \\mathcal{K}_i$ and, by the product rule,
    $\\Theta = \\sum_i \\Theta_i \\prod_{j \\neq i} \\mathcal{K}_j$ (for two streams
    $\\Theta = \\Theta_1 \\mathcal{K}_2 + \\mathcal{K}_1 \\Theta_2$). The product is not
    Gaussian."""

    def __call__(self, layer: FanInProd, ks: KernelTree, wanted: RequirementsTree) -> Kernel:
        streams = _streams(layer, ks)
        _check_same_shapes(layer, streams)
        nngp, ntk = streams[0].nngp, streams[0].ntk
        for k in streams[1:]:
            # The product rule, one factor at a time.
            ntk = None if ntk is None or k.ntk is None else ntk * k.nngp + nngp * k.ntk
            nngp = nngp * k.nngp
        cov1 = functools.reduce(jnp.multiply, [k.cov1 for k in streams])
        cov2s = [k.cov2 for k in streams if k.cov2 is not None]
        cov2 = None if streams[0].cov2 is None else functools.reduce(jnp.multiply, cov2s)
        return streams[0].replace(
            nngp=nngp,
            ntk=ntk,
            cov1=cov1,
            cov2=cov2,
            is_gaussian=len(streams) == 1 and streams[0].is_gaussian,
        )


@register(FanInConcat)
class FanInConcatRule(AbstractFanInRule[FanInConcat]):
    """Kernel rule of [`eqntk.nn.FanInConcat`][], for independent streams:

    - along the channel axis: the mean of the stream kernels weighted by the finite channel
      widths $n_i$ of the streams, $\\mathcal{K} = \\sum_i n_i \\mathcal{K}_i / \\sum_i n_i$ (the
      same for $\\Theta$). Each channel keeps the kernel of its stream, so the result is not
      Gaussian.
    - along a spatial axis: the block-diagonal kernel, whose diagonal blocks are the stream
      kernels and whose off-diagonal blocks are zero (the streams are independent). This needs
      every stream to be Gaussian.
    """

    def __call__(self, layer: FanInConcat, ks: KernelTree, wanted: RequirementsTree) -> Kernel:
        streams = _streams(layer, ks)
        axis = concat_array_axis(layer, streams[0].spatial_ndim)
        _check_same_shapes(layer, streams, except_axis=axis)
        if axis == 0:
            return _concat_channels(streams)
        _require_gaussian_streams(layer, streams)
        return _concat_positions(streams, axis - 1)


def _concat_channels(ks: tuple[Kernel, ...]) -> Kernel:
    widths = [k.shape1[0] for k in ks]
    if all(w == widths[0] for w in widths):
        # Equal widths: a plain mean, as the reference implementation computes it.
        widths = [1] * len(ks)
    total = sum(widths)

    def mean(arrays):
        if arrays[0] is None:
            return None
        return functools.reduce(jnp.add, [w * a for w, a in zip(widths, arrays)]) / total

    return ks[0].replace(
        nngp=mean([k.nngp for k in ks]),
        ntk=mean([k.ntk for k in ks]),
        cov1=mean([k.cov1 for k in ks]),
        cov2=mean([k.cov2 for k in ks]),
        shape1=(sum(k.shape1[0] for k in ks),) + ks[0].shape1[1:],
        shape2=(sum(k.shape2[0] for k in ks),) + ks[0].shape2[1:],
        # Each channel keeps its own stream's kernel, so the channels are not identically
        # distributed and a nonlinearity cannot act on the averaged kernel.
        is_gaussian=False,
    )


def _concat_positions(ks: tuple[Kernel, ...], d: int) -> Kernel:
    """Concatenate along spatial axis `d`: a block-diagonal kernel over that axis."""
    first = ks[0]

    def concat(arrays, n_lead):
        if arrays[0] is None:
            return None
        if first.diagonal_spatial:
            return jnp.concatenate(arrays, axis=n_lead + d)
        # Full layout: the pair (S_d, S_d') sits at axes (row, row + 1). Stream i fills the
        # diagonal block (i, i); blocks pairing positions of different streams are zero.
        row = n_lead + 2 * d
        sizes = [a.shape[row] for a in arrays]
        blocks = []
        for i, a in enumerate(arrays):
            pad = [(0, 0)] * a.ndim
            pad[row] = (sum(sizes[:i]), sum(sizes[i + 1 :]))
            blocks.append(jnp.pad(a, pad))
        return jnp.concatenate(blocks, axis=row + 1)

    def concat_shape(shapes):
        length = sum(s[1 + d] for s in shapes)
        return shapes[0][: 1 + d] + (length,) + shapes[0][2 + d :]

    return first.replace(
        nngp=concat([k.nngp for k in ks], 2),
        ntk=concat([k.ntk for k in ks], 2),
        cov1=concat([k.cov1 for k in ks], 1),
        cov2=concat([k.cov2 for k in ks], 1),
        shape1=concat_shape([k.shape1 for k in ks]),
        shape2=concat_shape([k.shape2 for k in ks]),
        is_gaussian=True,
    )
