"""Output-axis conventions of empirical kernels, and the einsum that contracts two sides.

Every implementation ends the same way: factors computed for each batch of inputs (`x1` side and
`x2` side) are contracted over the parameter axes they share, while the output axes of one
example are traced, kept on their diagonal, or kept as an interleaved pair. Writing that as one
einsum lets `opt_einsum` choose the contraction order by its flop count, which is where the
structured method gains its speed (see `_structured.py`).
"""

import itertools
import math
from collections.abc import Hashable, Sequence
from typing import Any, NamedTuple, cast

import equinox as eqx
import jax.numpy as jnp
import opt_einsum
from jaxtyping import Array


# Labels of factor axes. `EXAMPLE` is the batch axis; `("out", k)` the k-th output axis of one
# example; `("shared", ...)` an axis that both sides index the same way (a parameter axis,
# contracted between the sides); `("local", ...)` an axis summed within one side.
EXAMPLE = ("example",)
Label = tuple[Hashable, ...]


class Factor(eqx.Module):
    """An array with one label per axis (see the module docstring).

    A label `("side", 2, label)` places one axis of a factor on the side of `x2`, for factors
    that span both sides (the NTK-vector-product method produces the whole kernel at once).
    The labels are static, so the shapes of factors can be worked out with `jax.eval_shape`.
    """

    array: Any
    labels: tuple[Label, ...] = eqx.field(static=True)


class OutputAxes(NamedTuple):
    """How the output axes of one example appear in the kernel: traced, diagonal or paired."""

    ndim: int
    trace: tuple[int, ...]
    diagonal: tuple[int, ...]


def canonical_axes(
    trace_axes: int | Sequence[int], diagonal_axes: int | Sequence[int], shape: tuple[int, ...]
) -> OutputAxes:
    """Check `trace_axes` and `diagonal_axes` against the per-example output shape `shape`.

    A scalar output has no channel axis: tracing over it (axis `0`, the default) is the
    identity, so that the defaults serve scalar-output models too.
    """
    ndim = len(shape)
    result = []
    for name, axes in (("trace_axes", trace_axes), ("diagonal_axes", diagonal_axes)):
        axes = (axes,) if isinstance(axes, int) else tuple(axes)
        if ndim == 0 and name == "trace_axes" and all(a in (0, -1) for a in axes):
            result.append(())
            continue
        if any(not isinstance(a, int) or not -ndim <= a < ndim for a in axes):
            raise ValueError(
                f"`{name}` must be axes of one example's output, which has shape {shape} "
                f"(valid: {-ndim} to {ndim - 1}), got {axes}."
            )
        canonical = tuple(sorted(a % ndim for a in axes))
        if len(set(canonical)) != len(canonical):
            raise ValueError(f"`{name}` names an axis twice: {axes}.")
        result.append(canonical)
    trace, diagonal = result
    if set(trace) & set(diagonal):
        raise ValueError(
            f"An output axis cannot be both traced and diagonal: `trace_axes`={trace}, "
            f"`diagonal_axes`={diagonal} (for output shape {shape})."
        )
    return OutputAxes(ndim, trace, diagonal)


def kernel_shape(n1: int, n2: int, shape: tuple[int, ...], axes: OutputAxes) -> tuple[int, ...]:
    """The shape of a kernel: `(N1, N2)`, then each kept axis once (diagonal) or twice (pair)."""
    kept: list[int] = []
    for k, size in enumerate(shape):
        if k in axes.diagonal:
            kept.append(size)
        elif k not in axes.trace:
            kept.extend((size, size))
    return (n1, n2, *kept)


class Contraction(NamedTuple):
    """One einsum between the factors of the two sides, and the trace normalisation."""

    equation: str
    operands: tuple[Any, ...]
    scale: float


def contraction(
    factors1: Sequence[Factor], factors2: Sequence[Factor], axes: OutputAxes
) -> Contraction:
    """The einsum that pairs the factors of side 1 with those of side 2 into a kernel.

    Traced output axes are averaged (like neural-tangents, the trace is divided by the size of
    the traced axes), diagonal ones kept once, the others kept as an interleaved pair
    `(..., S, S', ...)`, the layout of [`eqntk.Kernel`][].
    """
    letters = iter(itertools.chain("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"))
    table: dict[tuple[int, Label], str] = {}

    def letter(side: int, label: Label) -> str:
        if label[0] == "side":
            side, label = cast(int, label[1]), cast(Label, label[2])
        owner = side
        if label[0] == "shared":
            owner = 0
        elif label[0] == "out" and (label[1] in axes.trace or label[1] in axes.diagonal):
            owner = 0
        if (owner, label) not in table:
            table[(owner, label)] = next(letters)
        return table[(owner, label)]

    terms, operands = [], []
    for side, factors in ((1, factors1), (2, factors2)):
        for factor in factors:
            terms.append("".join(letter(side, label) for label in factor.labels))
            operands.append(factor.array)
    out = letter(1, EXAMPLE) + letter(2, EXAMPLE)
    for k in range(axes.ndim):
        if k in axes.diagonal:
            out += letter(1, ("out", k))
        elif k not in axes.trace:
            out += letter(1, ("out", k)) + letter(2, ("out", k))
    sizes = {
        label: size
        for factor in (*factors1, *factors2)
        for label, size in zip(factor.labels, factor.array.shape)
    }
    traced = [sizes[("out", k)] for k in axes.trace]
    return Contraction(f"{','.join(terms)}->{out}", tuple(operands), 1.0 / math.prod(traced))


def _path(c: Contraction) -> tuple[list[tuple[int, ...]], float]:
    if len(c.operands) == 1:
        return [(0,)], float(math.prod(c.operands[0].shape))
    shapes = [tuple(op.shape) for op in c.operands]
    strategy = "optimal" if len(shapes) <= 4 else "greedy"
    path, info = opt_einsum.contract_path(c.equation, *shapes, shapes=True, optimize=strategy)
    return [tuple(step) for step in path], float(info.opt_cost)


def cost(c: Contraction) -> float:
    """The flop count of the contraction along its best path."""
    return _path(c)[1]


def evaluate(c: Contraction) -> Array:
    """Evaluate the contraction along the path of lowest flop count."""
    path, _ = _path(c)
    return jnp.einsum(c.equation, *c.operands, optimize=path) * c.scale
