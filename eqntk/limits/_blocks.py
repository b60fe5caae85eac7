"""Bounded working memory: a kernel computed in blocks of rows of `x1`.

Every entry of an infinite-width kernel depends on one input of `x1` and one of `x2` only, so
a kernel function can compute the rows of `x1` block by block, in a `lax.map`, and hold the
temporaries of one block at a time. This is what keeps a CNN kernel's peak memory near that of
its result: each layer's rule makes a few covariance-sized temporaries, which for a whole
batch of image pairs are hundreds of MiB.
"""

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.extend.core as jax_core
import jax.numpy as jnp
from jaxtyping import Array

from ._kernel import Kernel
from ._registry import KernelTree, apply


DEFAULT_BLOCK_BYTES = 8 * 2**20
"""The default bound on the bytes of one block's largest intermediate array (a layer's NNGP or
NTK, or a rule's temporary, for all pairs of the block). The peak working memory is a few
times this: a layer's rule holds about five such arrays at once."""

# The fields of a `Kernel` with one entry per input of `x1`, and their `x2` counterparts.
_ROWS = ("nngp", "ntk", "cov1", "mask1", "pattern1")
_SHARED = {"cov2": "cov1", "mask2": "mask1", "pattern2": "pattern1"}


def pair_bytes(k: KernelTree) -> int:
    """The bytes of the NNGP and NTK of one pair of inputs, summed over the streams of `k`."""
    total = 0
    for kernel in jax.tree_util.tree_leaves(k, is_leaf=lambda z: isinstance(z, Kernel)):
        per_pair = math.prod(kernel.nngp.shape[2:]) * kernel.nngp.dtype.itemsize
        total += per_pair * (1 if kernel.ntk is None else 2)
    return total


def _rows(k: Kernel, index: slice | Array) -> Kernel:
    """The kernel of the inputs `x1[index]` against all of `x2`, never symmetric."""
    fields = {name: getattr(k, name) for name in _ROWS + tuple(_SHARED)}
    if k.x1_is_x2:
        fields.update({name: fields[source] for name, source in _SHARED.items()})
    fields.update({name: None if fields[name] is None else fields[name][index] for name in _ROWS})
    return k.replace(x1_is_x2=False, **fields)


def _largest_pair_bytes(model: Any, k: Kernel, wanted: Any) -> int:
    """The bytes of the largest array that the kernel program of `model` makes for one pair of
    inputs: a layer's kernel (its NNGP or NTK) or a rule's temporary (e.g. shifted copies of a
    covariance). Found from the program traced on one pair, without computing anything."""
    first = lambda a: None if a is None else a[:1]
    one = _rows(k, slice(0, 1))
    one = one.replace(
        nngp=one.nngp[:, :1],
        ntk=None if one.ntk is None else one.ntk[:, :1],
        cov2=first(one.cov2),
        mask2=first(one.mask2),
        pattern2=first(one.pattern2),
    )
    program = jax.make_jaxpr(lambda kernel: apply(model, kernel, wanted))(one)
    return _largest_value_bytes(program.jaxpr)


def _largest_value_bytes(jaxpr: Any, varying: Sequence[bool] | None = None) -> int:
    """The bytes of the largest value of `jaxpr` that depends on its inputs (all of them, or
    those flagged in `varying`), also in the programs it calls (loop bodies, branches, nested
    jits). Values computed from constants alone (e.g. a network's weights, stacked for a scan)
    are the same for every pair of inputs and are not counted."""
    flags = [True] * len(jaxpr.invars) if varying is None else list(varying)
    depends = {var for var, flag in zip(jaxpr.invars, flags) if flag}
    largest = max((_bytes(var) for var in depends), default=0)
    for eqn in jaxpr.eqns:
        inputs = [not isinstance(var, jax_core.Literal) and var in depends for var in eqn.invars]
        if not any(inputs):
            continue
        depends.update(eqn.outvars)
        largest = max([largest, *(_bytes(var) for var in eqn.outvars)])
        for param in eqn.params.values():
            for sub in param if isinstance(param, (list, tuple)) else (param,):
                inner = getattr(sub, "jaxpr", sub)  # a closed program, or an open one
                if not (hasattr(inner, "eqns") and hasattr(inner, "invars")):
                    continue
                # A called program's inputs are the last of the call's operands (a branch
                # index or loop constants may come first); otherwise, assume all depend.
                n = len(inner.invars)
                flags_in = inputs[len(inputs) - n :] if n <= len(inputs) else [True] * n
                largest = max(largest, _largest_value_bytes(inner, flags_in))
    return largest


def _bytes(var: Any) -> int:
    shape, dtype = getattr(var.aval, "shape", None), getattr(var.aval, "dtype", None)
    return 0 if shape is None or dtype is None else math.prod(shape) * dtype.itemsize


def apply_in_blocks(model: Any, k: Kernel, wanted: Any, block_bytes: int | None) -> KernelTree:
    """`apply(model, k, wanted)`, over blocks of rows of `x1` when the whole would make a
    kernel larger than `block_bytes` (`None`: never)."""
    n1, n2 = k.nngp.shape[:2]
    # A kernel that is small at the input is computed whole without probing the network (a
    # layer would have to grow it 16-fold to pass the bound).
    if block_bytes is None or n1 == 1 or 16 * n1 * n2 * pair_bytes(k) <= block_bytes:
        return apply(model, k, wanted)
    per_row = n2 * _largest_pair_bytes(model, k, wanted)
    rows = max(1, block_bytes // per_row)
    if rows >= n1:
        return apply(model, k, wanted)
    n_blocks = -(-n1 // rows)
    rows = -(-n1 // n_blocks)
    # Pad the last block by repeating the last input (real data: no division by zero), and
    # drop those rows afterwards.
    take = jnp.minimum(jnp.arange(n_blocks * rows), n1 - 1).reshape(n_blocks, rows)
    rows_of = lambda block: apply(model, _rows(k, block), wanted)
    out = jax.lax.map(rows_of, take)
    return jax.tree_util.tree_map(
        lambda kernel: _merge(kernel, n1, k.x1_is_x2),
        out,
        is_leaf=lambda z: isinstance(z, Kernel),
    )


def _merge(blocks: Kernel, n1: int, x1_is_x2: bool) -> Kernel:
    """One kernel from the stacked kernels of the blocks."""

    def rows(a):
        return None if a is None else a.reshape((-1,) + a.shape[2:])[:n1]

    fields = {name: rows(getattr(blocks, name)) for name in _ROWS}
    for name in _SHARED:
        # The same in every block (they depend on `x2` only).
        shared = getattr(blocks, name)
        fields[name] = None if shared is None or x1_is_x2 else shared[0]
    # Entry (i, j) and entry (j, i) came from different blocks; the kernel function makes
    # them equal exactly afterwards (see `symmetrised`), as for every kernel of `x1` with itself.
    return blocks.replace(x1_is_x2=x1_is_x2, **fields)
