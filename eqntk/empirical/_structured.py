"""Structured derivatives: the empirical NTK without materialising the parameter Jacobian.

This is the method of Novak et al. 2022, "Fast Finite Width Neural Tangent Kernel". The network
is traced to a jaxpr (one example, with `jit` inlined), and every parameter leaf is classified:

- **structured**: the leaf is used by exactly one primitive, as one operand of a `dot_general`
  (dense layers, attention projections, matmuls of any layout) or as the filter of a
  `conv_general_dilated` (convolutions of any dimension, stride, padding and dilation, without
  feature or batch groups), whose other operand does not depend on that leaf;
- **generic**: any other use (biases, norms, scans, weight sharing, custom derivatives...);
- unused: the leaf does not reach the output, e.g. a hyperparameter read through
  `jax.lax.stop_gradient` (its contribution is zero).

For a structured leaf $W$ used as $y = W \\cdot x$ the Jacobian factorises,
$\\partial f / \\partial W = (\\partial f / \\partial y)(\\partial y / \\partial W)$, and
$\\partial y / \\partial W$ is $x$ times identities. Its NTK contribution is therefore

$$\\Theta_W(x_1, x_2) = \\sum \\frac{\\partial f(x_1)}{\\partial y_1} \\, x_1 \\, x_2 \\,
\\frac{\\partial f(x_2)}{\\partial y_2},$$

an einsum of four small factors: the cotangents $\\partial f/\\partial y$ (one reverse pass per
output entry, through activations only) and the layer inputs $x$ (for a convolution, its
patches). `opt_einsum` then picks the cheapest order: $(x_1 \\cdot x_2)$ and
$(\\partial f_1/\\partial y_1 \\cdot \\partial f_2/\\partial y_2)$ first (a dense layer: no
$O(\\text{width}^2)$ Jacobian at all), or the per-example weight gradients first (the Jacobian
route, best for convolutions with large spatial extent). Traced and diagonal output axes are
applied inside the same einsum, before anything of size $O^2$ is formed. Generic leaves use
their explicit Jacobian, computed in the same reverse pass.
"""

import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.extend.core
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array

from ._contract import EXAMPLE, Factor, Label


class _Rule(NamedTuple):
    """How one primitive's derivative with respect to a parameter operand is structured.

    - `applies(eqn, position)`: whether the rule covers the parameter at operand `position`.
    - `record(eqn, operands, position)`: the per-example array the contribution needs (the
      other operand, or patches of it).
    - `labels(eqn, position)`: the labels of the output `y` and of the recorded array.
    """

    applies: Callable[[Any, int], bool]
    record: Callable[[Any, Sequence[Array], int], Array]
    labels: Callable[[Any, int], tuple[tuple[Label, ...], tuple[Label, ...]]]


def _dot_labels(eqn: Any, position: int) -> tuple[tuple[Label, ...], tuple[Label, ...]]:
    # y[b, lhs_free, rhs_free] = sum_c lhs[b, lhs_free, c] * rhs[b, c, rhs_free]; the parameter's
    # batch, free and contracted axes are shared by both sides, the data's free axes are local.
    (contract_lhs, contract_rhs), (batch_lhs, batch_rhs) = eqn.params["dimension_numbers"]
    ndims = [v.aval.ndim for v in eqn.invars]
    contract, batch = (contract_lhs, contract_rhs), (batch_lhs, batch_rhs)
    free = [
        [d for d in range(ndims[i]) if d not in contract[i] and d not in batch[i]] for i in (0, 1)
    ]
    other = 1 - position
    y_labels: list[Label] = [("shared", "b", j) for j in range(len(batch_lhs))]
    for side in (0, 1):
        kind = "shared" if side == position else "local"
        y_labels += [(kind, "f", side, j) for j in range(len(free[side]))]
    x_labels: list[Label] = [("",)] * ndims[other]
    for j, d in enumerate(batch[other]):
        x_labels[d] = ("shared", "b", j)
    for j, d in enumerate(contract[other]):
        x_labels[d] = ("shared", "c", j)
    for j, d in enumerate(free[other]):
        x_labels[d] = ("local", "f", other, j)
    return tuple(y_labels), tuple(x_labels)


def _dot_record(eqn: Any, operands: Sequence[Array], position: int) -> Array:
    return operands[1 - position]


_DOT = _Rule(lambda eqn, position: True, _dot_record, _dot_labels)


def _conv_applies(eqn: Any, position: int) -> bool:
    p = eqn.params
    return position == 1 and p["feature_group_count"] == 1 and p["batch_group_count"] == 1


def _conv_record(eqn: Any, operands: Sequence[Array], position: int) -> Array:
    # Patches[k..., n, c, s...] = padded_lhs[n, c, s * stride + k * rhs_dilation]: the input
    # seen by filter tap k at output position s. Built from strided slices (memory-bound) rather
    # than `conv_general_dilated_patches`, whose identity filter costs (C k)^2 flops per position.
    p = eqn.params
    lhs, rhs = operands
    dn = p["dimension_numbers"]
    x = jnp.transpose(lhs, dn.lhs_spec)  # (N, C, *spatial)
    n_spatial = x.ndim - 2
    filter_shape = [rhs.shape[d] for d in dn.rhs_spec[2:]]
    out_shape = [eqn.outvars[0].aval.shape[d] for d in dn.out_spec[2:]]
    config = [(0, 0, 0), (0, 0, 0)] + [
        (lo, hi, dilation - 1) for (lo, hi), dilation in zip(p["padding"], p["lhs_dilation"])
    ]
    x = lax.pad(x, jnp.zeros((), x.dtype), config)
    taps = []
    for tap in itertools.product(*(range(f) for f in filter_shape)):
        start = [0, 0] + [t * d for t, d in zip(tap, p["rhs_dilation"])]
        limit = x.shape[:2] + tuple(
            s + (o - 1) * st + 1 for s, o, st in zip(start[2:], out_shape, p["window_strides"])
        )
        taps.append(lax.slice(x, start, limit, (1, 1, *p["window_strides"])))
    return jnp.stack(taps).reshape(*filter_shape, *x.shape[:2], *out_shape[:n_spatial])


def _conv_labels(eqn: Any, position: int) -> tuple[tuple[Label, ...], tuple[Label, ...]]:
    dn = eqn.params["dimension_numbers"]
    n_spatial = len(dn.out_spec) - 2
    y_labels: list[Label] = [("",)] * len(dn.out_spec)
    y_labels[dn.out_spec[0]] = ("local", "n")
    y_labels[dn.out_spec[1]] = ("shared", "o")
    for j, d in enumerate(dn.out_spec[2:]):
        y_labels[d] = ("local", "s", j)
    patch_labels = (
        *(("shared", "k", j) for j in range(n_spatial)),
        ("local", "n"),
        ("shared", "c"),
        *(("local", "s", j) for j in range(n_spatial)),
    )
    return tuple(y_labels), patch_labels


_CONV = _Rule(_conv_applies, _conv_record, _conv_labels)

_RULES = {"dot_general": _DOT, "conv_general_dilated": _CONV}


class Plan(NamedTuple):
    """The classification of a network's parameter leaves, from its jaxpr on one example.

    - `jaxpr`, `consts`: the inlined jaxpr of `fn(param_leaves, x_leaves) -> out_leaves`.
    - `structured`: equation index -> (parameter operand position, leaf index).
    - `generic`: indices of leaves handled through their explicit Jacobian.
    - `flops`: the forward cost of one example (dot and conv flops, plus one per element of
      every other primitive's output).
    """

    jaxpr: Any
    consts: list[Any]
    structured: dict[int, tuple[int, int]]
    generic: tuple[int, ...]
    flops: float


def make_plan(fn: Callable, params: list[Array], x: list[Any]) -> Plan:
    """Trace `fn(params, x)` for one example and classify every parameter leaf."""
    # With jit disabled, `jnp` functions are traced inline, so the parameter's consumer is
    # visible instead of being hidden inside a `pjit` equation.
    with jax.disable_jit():
        closed = jax.make_jaxpr(fn)(params, x)
    jaxpr = closed.jaxpr
    leaf_of = {v: i for i, v in enumerate(jaxpr.invars[: len(params)])}
    depends: dict[Any, frozenset[int]] = {v: frozenset({i}) for v, i in leaf_of.items()}
    # Where each leaf is read directly; a leaf read once has all its influence flow through
    # that one equation's output.
    uses: dict[int, list[tuple[int, int]]] = {i: [] for i in range(len(params))}
    flops = 0.0
    for index, eqn in enumerate(jaxpr.eqns):
        ins = [frozenset() if _is_literal(v) else depends.get(v, frozenset()) for v in eqn.invars]
        for position, v in enumerate(eqn.invars):
            if not _is_literal(v) and v in leaf_of:
                uses[leaf_of[v]].append((index, position))
        out = frozenset() if eqn.primitive.name == "stop_gradient" else frozenset().union(*ins)
        for v in eqn.outvars:
            depends[v] = out
        flops += _flops(eqn)
    outvars = [v for v in jaxpr.outvars if not _is_literal(v)]
    reaches_output = frozenset().union(*(depends.get(v, frozenset()) for v in outvars))
    is_output = {leaf_of[v] for v in outvars if v in leaf_of}
    structured, generic = {}, []
    for i in sorted(reaches_output):
        if len(uses[i]) == 1 and i not in is_output:
            index, position = uses[i][0]
            eqn = jaxpr.eqns[index]
            rule = _RULES.get(eqn.primitive.name)
            if rule is not None and len(eqn.invars) == 2 and rule.applies(eqn, position):
                structured[index] = (position, i)
                continue
        generic.append(i)
    return Plan(closed.jaxpr, list(closed.consts), structured, tuple(generic), flops)


def _is_literal(v: Any) -> bool:
    return isinstance(v, jax.extend.core.Literal)


def _flops(eqn: Any) -> float:
    out_size = sum(math.prod(v.aval.shape) for v in eqn.outvars if hasattr(v.aval, "shape"))
    name = eqn.primitive.name
    if name == "dot_general":
        (contract_lhs, _), _ = eqn.params["dimension_numbers"]
        lhs_shape = eqn.invars[0].aval.shape
        return 2.0 * out_size * math.prod(lhs_shape[d] for d in contract_lhs)
    if name == "conv_general_dilated":
        rhs = eqn.invars[1].aval.shape
        dn = eqn.params["dimension_numbers"]
        # rhs holds (O, I, *filter); each output entry costs I * prod(filter) multiply-adds.
        return 2.0 * out_size * math.prod(rhs) / rhs[dn.rhs_spec[0]]
    return float(out_size)


def _run(
    plan: Plan, params: Sequence[Array], x: Sequence[Any], deltas: dict[int, Array]
) -> tuple[list[Array], dict[int, Array]]:
    """Evaluate the jaxpr, adding `deltas[i]` to the output of structured equation `i` and
    recording what the contribution of its parameter needs."""
    env: dict[Any, Any] = {}

    def read(v: Any) -> Any:
        return v.val if _is_literal(v) else env[v]

    for v, value in zip(plan.jaxpr.constvars, plan.consts):
        env[v] = value
    for v, value in zip(plan.jaxpr.invars, [*params, *x]):
        env[v] = value
    records = {}
    for index, eqn in enumerate(plan.jaxpr.eqns):
        operands = [read(v) for v in eqn.invars]
        out = eqn.primitive.bind(*operands, **eqn.primitive.get_bind_params(eqn.params))
        if index in plan.structured:
            position, _ = plan.structured[index]
            records[index] = _RULES[eqn.primitive.name].record(eqn, operands, position)
            out = out + deltas[index]
        outs = out if eqn.primitive.multiple_results else [out]
        for v, value in zip(eqn.outvars, outs):
            env[v] = value
    return [read(v) for v in plan.jaxpr.outvars], records


def side_factors(
    plan: Plan, params: list[Array], x: list[Any], out_ndims: Sequence[int]
) -> list[list[list[Factor]]]:
    """The factors of one batch of inputs `x` (leaves with a leading batch axis).

    For each output leaf, a list of contributions (one per structured equation or generic
    leaf), each a list of labelled arrays whose einsum with the other side's is that
    contribution to the NTK (see the module docstring).
    """
    zeros = {
        index: jnp.zeros(
            plan.jaxpr.eqns[index].outvars[0].aval.shape,
            plan.jaxpr.eqns[index].outvars[0].aval.dtype,
        )
        for index in plan.structured
    }
    generic = [params[i] for i in plan.generic]

    def per_example(x_one: list[Any]):
        def fn(deltas, generic_params):
            full = list(params)
            for i, value in zip(plan.generic, generic_params):
                full[i] = value
            return _run(plan, full, x_one, deltas)

        return jax.jacrev(fn, argnums=(0, 1), has_aux=True)(zeros, generic)

    jac, records = jax.vmap(per_example)(x)
    factors: list[list[list[Factor]]] = []
    for (delta_jac, generic_jac), out_ndim in zip(jac, out_ndims):
        out_labels = tuple(("out", d) for d in range(out_ndim))
        contributions = []
        for index, (position, _) in plan.structured.items():
            eqn = plan.jaxpr.eqns[index]
            y_labels, r_labels = _RULES[eqn.primitive.name].labels(eqn, position)
            contributions.append(
                [
                    Factor(delta_jac[index], (EXAMPLE, *out_labels, *y_labels)),
                    Factor(records[index], (EXAMPLE, *r_labels)),
                ]
            )
        for j, (i, leaf_jac) in enumerate(zip(plan.generic, generic_jac)):
            leaf_labels = tuple(("shared", "leaf", j, d) for d in range(params[i].ndim))
            contributions.append([Factor(leaf_jac, (EXAMPLE, *out_labels, *leaf_labels))])
        factors.append(contributions)
    return factors
