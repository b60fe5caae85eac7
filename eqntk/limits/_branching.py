"""Kernel rules of the branching layers: `FanOut`, `Parallel` and the fan-in layers.

Streams are tuples of kernels. The fan-in rules treat the streams as independent Gaussian
processes, which holds when each stream has its own random affine layer after the `FanOut`.
"""

import functools
from typing import TypeVar, cast

import jax.numpy as jnp
from jaxtyping import Array

from ..nn import FanInConcat, FanInProd, FanInSum, FanOut, Parallel
from ..nn._branching import check_same_shapes, check_stream_count, concat_array_axis
from ._kernel import Kernel
from ._registry import (
    AbstractStreamsRule,
    KernelTree,
    Requirements,
    RequirementsTree,
    apply,
    register,
    requirements,
)


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
    """A rule that joins streams into one kernel."""

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
    streams, $\\mathcal{K} = \\sum_i \\mathcal{K}_i$, $\\Theta = \\sum_i \\Theta_i$."""

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
    $\\mathcal{K} = \\prod_i \\mathcal{K}_i$ and
    $\\Theta = \\sum_i \\Theta_i \\prod_{j \\neq i} \\mathcal{K}_j$."""

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
    """Kernel rule of [`eqntk.nn.FanInConcat`][].

    Along the channel axis: the mean of the stream kernels weighted by the streams' finite
    channel widths $n_i$, $\\mathcal{K} = \\sum_i n_i \\mathcal{K}_i / \\sum_i n_i$. Along a
    spatial axis: the block-diagonal kernel of the concatenated positions (zero covariance
    between positions from different, independent streams); this needs Gaussian streams.
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
