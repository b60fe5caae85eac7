"""Deep `Sequential` stacks in the limit: a run of identically built blocks is traced and
compiled once, in a `jax.lax.scan`, as [`eqntk.nn.Repeat`][] does for the stacks it builds.

XLA compiles a program of unrolled layers in a time that grows with the depth, and its
gradient in a time that grows faster (XLA:CPU copies the elementwise chain of cotangents into
each layer's reductions): a 50-layer ReLU network's kernel took 5 s to compile and its
gradient 140 s. Folded, both stay near the cost of one block.
"""

from collections.abc import Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from ..limits._registry import KernelTree, RequirementsTree, apply


MIN_BLOCKS = 4  # shorter runs are unrolled: the scan would save little
MAX_PERIOD = 4  # blocks of up to this many layers (e.g. Dense, Relu) are recognised


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
    """The blocks in order: unrolled until one keeps the kernel's metadata (at most two: the
    first block may change it, e.g. make the kernel non-Gaussian), the rest in a scan."""

    def run(block: tuple[Any, ...], k: KernelTree) -> KernelTree:
        for layer, w in zip(block, wanted):
            k = apply(layer, k, w)
        return k

    j = 0
    while j < len(blocks):
        # Two blocks at most may run unrolled before the loop; a run whose blocks never keep
        # the metadata stays unrolled to the end.
        if j < 2 and len(blocks) - j >= 2 and _keeps(run, blocks[j], k):
            break
        k = run(blocks[j], k)
        j += 1
    if j == len(blocks):
        return k
    static = eqx.filter(blocks[j], eqx.is_array, inverse=True)
    stacked = jax.tree_util.tree_map(
        lambda *leaves: jnp.stack(leaves), *[eqx.filter(b, eqx.is_array) for b in blocks[j:]]
    )

    def step(k: KernelTree, block_params: Any) -> tuple[KernelTree, None]:
        return run(eqx.combine(block_params, static), k), None

    k, _ = jax.lax.scan(step, k, stacked)
    return k


def _keeps(run: Any, block: tuple[Any, ...], k: KernelTree) -> bool:
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
