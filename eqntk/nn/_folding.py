"""Deep `Sequential` stacks in the limit: a run of identically built blocks is traced and
compiled once, in a `jax.lax.scan`. [`eqntk.nn.Repeat`][]'s rule runs its stacks the same way
(`apply_stacked`).

XLA compiles a program of unrolled layers in a time that grows with the depth, and its
gradient in a time that grows faster (XLA:CPU copies the elementwise chain of cotangents into
each layer's reductions): a 50-layer ReLU network's kernel took 5 s to compile and its
gradient 140 s. Folded, both stay near the cost of one block.
"""

from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from ..limits._registry import KernelTree, RequirementsTree, apply


MIN_BLOCKS = 4  # shorter runs are unrolled: the scan would save little
MAX_PERIOD = 4  # blocks of up to this many layers (e.g. Dense, Relu) are recognised
MAX_UNROLLED = 2  # blocks run before the scan while the kernel's metadata settles


def apply_in_order(
    layers: Sequence[Any], k: KernelTree, wanted: Sequence[RequirementsTree]
) -> KernelTree:
    """Apply the rules of `layers` in order, layer `i` delivering `wanted[i]`.

    A run of at least `MIN_BLOCKS` consecutive blocks (of one to `MAX_PERIOD` layers) that are
    built alike (the same structure, static fields and array shapes; parameter values may
    differ) and asked for the same layouts runs as one `jax.lax.scan`, once a block maps the
    kernel to one of the same metadata. The result is that of the unrolled layers, up to
    floating-point rounding.
    """
    signatures = [_signature(layer) for layer in layers]
    i = 0
    while i < len(layers):
        period, count = _longest_run(signatures, wanted, i)
        if count < MIN_BLOCKS:
            k = apply(layers[i], k, wanted[i])
            i += 1
            continue
        blocks = [tuple(layers[i + j * period : i + (j + 1) * period]) for j in range(count)]
        k = _apply_blocks(blocks, k, tuple(wanted[i : i + period]))
        i += period * count
    return k


def _signature(layer: Any) -> tuple[Any, list[Any]]:
    """What must agree for two layers to share one traced rule: structure, static fields,
    array shapes and dtypes (not their values), and the other leaves' values."""
    leaves, treedef = jax.tree_util.tree_flatten(layer)
    return treedef, [
        ("array", leaf.shape, leaf.dtype) if eqx.is_array(leaf) else ("value", leaf)
        for leaf in leaves
    ]


def _longest_run(
    signatures: list[Any], wanted: Sequence[RequirementsTree], start: int
) -> tuple[int, int]:
    """`(period, count)`: the blocks of `period` layers repeated `count` times from `start`
    that cover the most layers (the shortest period on a tie)."""
    best = (1, 1)
    for period in range(1, MAX_PERIOD + 1):
        first = slice(start, start + period)
        if first.stop > len(signatures):
            break
        count = 1
        while (stop := start + (count + 1) * period) <= len(signatures):
            block = slice(stop - period, stop)
            if not (
                _same(signatures[block], signatures[first])
                and list(wanted[block]) == list(wanted[first])
            ):
                break
            count += 1
        if count >= MIN_BLOCKS and period * count > best[0] * best[1]:
            best = (period, count)
    return best


def _same(a: list[Any], b: list[Any]) -> bool:
    try:
        return bool(a == b)
    except Exception:  # leaves whose == is not a bool (e.g. numpy arrays): not alike
        return False


def _apply_blocks(
    blocks: list[tuple[Any, ...]], k: KernelTree, wanted: tuple[RequirementsTree, ...]
) -> KernelTree:
    """The blocks in order, through `apply_stacked` (their static fields agree)."""

    def run(block: tuple[Any, ...], k: KernelTree) -> KernelTree:
        for layer, w in zip(block, wanted):
            k = apply(layer, k, w)
        return k

    static = eqx.filter(blocks[0], eqx.is_array, inverse=True)
    stacked = jax.tree_util.tree_map(
        lambda *leaves: jnp.stack(leaves), *[eqx.filter(b, eqx.is_array) for b in blocks]
    )
    return apply_stacked(run, static, stacked, len(blocks), k)


def apply_stacked(
    run: Callable[[Any, KernelTree], KernelTree],
    static: Any,
    stacked: Any,
    n: int,
    k: KernelTree,
    *,
    unfoldable: Callable[[KernelTree, KernelTree], Exception] | None = None,
) -> KernelTree:
    """Apply `n` blocks in order with `run(block, k)`: block `j` is `eqx.combine(params,
    static)`, `params` the `j`-th slice of every array in `stacked`.

    The first blocks run unrolled until one maps the kernel to one of the same metadata (at
    most `MAX_UNROLLED`: the first blocks may change it, e.g. make the kernel non-Gaussian), the
    rest in one `jax.lax.scan`. When they never keep it, the blocks run unrolled to the end, or,
    if `unfoldable` is given, `unfoldable(kernel before, kernel after the next block)` is
    raised.
    """

    def block(j: int) -> Any:
        return eqx.combine(jax.tree_util.tree_map(lambda leaf: leaf[j], stacked), static)

    j = 0
    while j < n - 1 and j <= MAX_UNROLLED:  # two blocks or more left: a scan may run them
        if _keeps(run, block(j), k):
            rest = jax.tree_util.tree_map(lambda leaf: leaf[j:], stacked)

            def step(k: KernelTree, block_params: Any) -> tuple[KernelTree, None]:
                return run(eqx.combine(block_params, static), k), None

            k, _ = jax.lax.scan(step, k, rest)
            return k
        if j == MAX_UNROLLED and unfoldable is not None:
            raise unfoldable(k, eqx.filter_eval_shape(run, block(j), k))
        k = run(block(j), k)
        j += 1
    for j in range(j, n):  # the last block, or blocks that never keep the metadata
        k = run(block(j), k)
    return k


def _keeps(run: Any, block: Any, k: KernelTree) -> bool:
    """Whether `block` maps `k` to a kernel of the same structure, shapes and dtypes (what a
    scan carry must keep)."""
    out = eqx.filter_eval_shape(run, block, k)
    return _metadata(out) == _metadata(k)


def _metadata(k: KernelTree) -> tuple[Any, list[Any]]:
    leaves, treedef = jax.tree_util.tree_flatten(k)
    return treedef, [_type(leaf) if hasattr(leaf, "shape") else leaf for leaf in leaves]


def _type(leaf: Any) -> tuple[Any, ...]:
    aval = getattr(leaf, "aval", leaf)  # a tracer's abstract value, or the array's own
    return (leaf.shape, leaf.dtype, getattr(aval, "weak_type", False))
