"""`empirical_kernel` and `empirical_ntk_vp`: kernels of a finite Equinox network."""

import functools as ft
import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, PyTree

from .._callable import check_get, named_tuple
from ._contract import (
    EXAMPLE,
    Contraction,
    Factor,
    OutputAxes,
    canonical_axes,
    contraction,
    cost,
    evaluate,
    kernel_shape,
)
from ._structured import Plan, make_plan, side_factors


Implementation = Literal[
    "auto", "jacobian_contraction", "ntk_vector_products", "structured_derivatives"
]
IMPLEMENTATIONS = ("auto", "jacobian_contraction", "ntk_vector_products", "structured_derivatives")
_NAMES = ("nngp", "ntk")


class _Setup(eqx.Module):
    """A model split into parameter leaves and a flat function of them, with checked inputs."""

    params: list[Array]
    static: Any
    param_tree: Any = eqx.field(static=True)
    x_tree: Any = eqx.field(static=True)
    out_tree: Any = eqx.field(static=True)
    out_shapes: tuple[tuple[int, ...], ...] = eqx.field(static=True)
    out_dtypes: tuple[Any, ...] = eqx.field(static=True)

    def fn(self, params: Sequence[Array], x: Sequence[Any]) -> list[Array]:
        """The model on ONE example, as flat lists of parameter, input and output leaves."""
        model = eqx.combine(jtu.tree_unflatten(self.param_tree, list(params)), self.static)
        return jtu.tree_leaves(model(jtu.tree_unflatten(self.x_tree, list(x))))


def _setup(
    model: Any,
    x1: Any,
    x2: Any,
    vmap_axes: int,
    filter: Callable[[Any], bool] | PyTree[bool],
    need_params: bool,
) -> tuple[_Setup, list[Array], list[Array] | None]:
    params, static = eqx.partition(model, filter)
    leaves, param_tree = jtu.tree_flatten(params)
    for leaf in leaves:
        if not eqx.is_inexact_array(leaf):
            raise ValueError(
                "`filter` must select floating-point array leaves of `model` (its parameters), "
                f"but it selected a {type(leaf).__name__} "
                f"{getattr(leaf, 'dtype', '')}{getattr(leaf, 'shape', '')}."
            )
    if need_params and not leaves:
        raise ValueError(
            f"`model` ({type(model).__name__}) has no parameters: no leaf matches `filter` "
            "(by default, floating-point arrays), so it has no NTK. Pass a `filter` that selects "
            "its parameters."
        )
    x1_leaves, x_tree = _batch_leaves("x1", x1, vmap_axes)
    x2_leaves = None
    if x2 is not None:
        x2_leaves, x2_tree = _batch_leaves("x2", x2, vmap_axes)
        if x2_tree != x_tree:
            raise ValueError(
                f"`x2` must have the same structure as `x1` ({x_tree}), got {x2_tree}."
            )
        for a, b in zip(x1_leaves, x2_leaves):
            if a.shape[1:] != b.shape[1:] or a.dtype != b.dtype:
                raise ValueError(
                    f"`x2` must have the same per-example shape and dtype as `x1` "
                    f"({a.shape[1:]}, {a.dtype}), got {b.shape[1:]}, {b.dtype} "
                    f"(batch axis {vmap_axes} removed)."
                )
    one = [jax.ShapeDtypeStruct(a.shape[1:], a.dtype) for a in x1_leaves]

    def call(p, x):
        model = eqx.combine(jtu.tree_unflatten(param_tree, p), static)
        return model(jtu.tree_unflatten(x_tree, x))

    try:
        out = jax.eval_shape(call, leaves, one)
    except Exception as error:
        shapes = [tuple(o.shape) for o in one]
        shown = shapes[0] if len(shapes) == 1 else shapes
        note = (
            f"(`model` is called on ONE example: here of shape {shown}, `x1` without its batch "
            f"axis `vmap_axes`={vmap_axes}.)"
        )
        if any(o.ndim == 0 for o in one):
            note += (
                " A 1-D `x1` is a batch of scalar examples; for a single example of shape "
                "(n,), pass `x1[None]`."
            )
        error.add_note(note)
        raise
    out_leaves, out_tree = jtu.tree_flatten(out)
    setup = _Setup(
        leaves,
        static,
        param_tree,
        x_tree,
        out_tree,
        tuple(tuple(o.shape) for o in out_leaves),
        tuple(o.dtype for o in out_leaves),
    )
    return setup, x1_leaves, x2_leaves


def _batch_leaves(name: str, x: Any, vmap_axes: int) -> tuple[list[Array], Any]:
    leaves, tree = jtu.tree_flatten(x)
    if not leaves:
        raise ValueError(f"`{name}` must be an array (or a PyTree of arrays), got {x!r}.")
    result = []
    for leaf in leaves:
        if not isinstance(leaf, jax.Array | jax.ShapeDtypeStruct) and not hasattr(leaf, "shape"):
            raise TypeError(f"`{name}` must hold arrays, got {type(leaf).__name__}.")
        leaf = jnp.asarray(leaf)
        if not -leaf.ndim <= vmap_axes < leaf.ndim:
            raise ValueError(
                f"`vmap_axes`={vmap_axes} is not an axis of `{name}` (shape {leaf.shape}); "
                "`x1` and `x2` hold a batch of examples along that axis."
            )
        result.append(jnp.moveaxis(leaf, vmap_axes, 0))
    sizes = {leaf.shape[0] for leaf in result}
    if len(sizes) != 1:
        raise ValueError(
            f"All leaves of `{name}` must have the same batch size along `vmap_axes`, "
            f"got {sorted(sizes)}."
        )
    return result, tree


def _check_get(get: Any) -> tuple[str, ...]:
    names = check_get(get, _NAMES, none_allowed=False)
    assert names is not None
    return names


def _check_implementation(implementation: Any) -> None:
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(
            f"`implementation` must be one of {IMPLEMENTATIONS}, got {implementation!r}."
        )


def _out_labels(ndim: int, side: int = 1) -> tuple:
    labels = (EXAMPLE, *(("out", d) for d in range(ndim)))
    return labels if side == 1 else tuple(("side", 2, label) for label in labels)


def _nngp(setup: _Setup, x1, x2, axes: list[OutputAxes]) -> list[Array]:
    f1 = jax.vmap(setup.fn, in_axes=(None, 0))(setup.params, x1)
    f2 = f1 if x2 is None else jax.vmap(setup.fn, in_axes=(None, 0))(setup.params, x2)
    return [
        evaluate(
            contraction(
                [Factor(a, _out_labels(a.ndim - 1))], [Factor(b, _out_labels(b.ndim - 1))], ax
            )
        )
        for a, b, ax in zip(f1, f2, axes)
    ]


def _jacobian_factors(setup: _Setup, x: list[Array]) -> list[list[list[Factor]]]:
    """Per output leaf, one contribution per parameter leaf: its explicit Jacobian."""
    jac = jax.vmap(jax.jacrev(setup.fn), in_axes=(None, 0))(setup.params, x)
    return [
        [
            [Factor(block, (*_out_labels(len(shape)), *(("shared", d) for d in range(p.ndim))))]
            for block, p in zip(jac_k, setup.params)
        ]
        for jac_k, shape in zip(jac, setup.out_shapes)
    ]


def _contractions(make_factors, x1, x2, axes: list[OutputAxes]) -> list[list[Contraction]]:
    """For each output leaf, the contractions whose sum is its NTK. With `x2=None` the factors
    of `x1` serve both sides."""
    factors1 = make_factors(x1)
    factors2 = factors1 if x2 is None else make_factors(x2)
    return [
        [contraction(c1, c2, ax) for c1, c2 in zip(contribs1, contribs2)]
        for contribs1, contribs2, ax in zip(factors1, factors2, axes)
    ]


def _ntk_vector_products(setup: _Setup, x1, x2, axes: list[OutputAxes]) -> list[Array]:
    # Column by column: for each example of x2 and each entry e of its output, the parameter
    # cotangent J2^T e (one vjp), then J1 (J2^T e) for the whole x1 batch (one jvp per example).
    # Every x2 example at once (`vmap`, as neural-tangents does): a `lax.map` over x2 would bound
    # the memory of the cotangents, but XLA:CPU runs channel-first convolutions inside loops
    # about 20x slower than outside (an `equinox.nn.Conv2d` CNN took 15x longer). Memory grows
    # with N2 x outputs x parameters; `eqntk.batch` tiles large inputs.
    x2 = x1 if x2 is None else x2
    results = []
    for k, shape in enumerate(setup.out_shapes):

        def columns(x2_one, k=k, shape=shape):
            out, vjp = jax.vjp(lambda p: setup.fn(p, x2_one), setup.params)
            size = out[k].size
            basis = jnp.eye(size, dtype=out[k].dtype).reshape(size, *shape)

            def column(e):
                cotangents = [e if j == k else jnp.zeros_like(o) for j, o in enumerate(out)]
                (g,) = vjp(cotangents)

                def jvp_one(x1_one):
                    return jax.jvp(lambda p: setup.fn(p, x1_one)[k], (setup.params,), (g,))[1]

                return jax.vmap(jvp_one)(x1)

            return jax.vmap(column)(basis)

        full = jax.vmap(columns)(x2)  # (N2, O, N1, *shape)
        full = full.reshape(full.shape[0], *shape, *full.shape[2:])
        labels = (*_out_labels(len(shape), side=2), *_out_labels(len(shape)))
        results.append(evaluate(contraction([Factor(full, labels)], [], axes[k])))
    return results


def _costs(setup: _Setup, plan: Plan, x1, x2, axes: list[OutputAxes]) -> dict[str, float]:
    """Estimated flops of each implementation (forward cost `F` from the jaxpr, `O` output
    entries, `P` parameters): reverse passes per output entry, then the contractions."""
    n1 = x1[0].shape[0]
    n2 = n1 if x2 is None else x2[0].shape[0]
    n_factors = n1 if x2 is None else n1 + n2
    flops = plan.flops
    outputs = sum(math.prod(shape) for shape in setup.out_shapes)
    n_params = sum(p.size for p in setup.params)

    def contraction_cost(make_factors) -> float:
        contractions = _contractions(lambda x: jax.eval_shape(make_factors, x), x1, x2, axes)
        return sum(cost(c) for cs in contractions for c in cs)

    structured = contraction_cost(lambda x: side_factors(plan, setup.params, x, _ndims(setup)))
    jacobian = contraction_cost(lambda x: _jacobian_factors(setup, x))
    return {
        # Reverse passes through the activations only: the weight gradients are never formed.
        "structured_derivatives": n_factors * outputs * flops + structured,
        "jacobian_contraction": n_factors * outputs * (2 * flops + n_params) + jacobian,
        "ntk_vector_products": n2 * outputs * (2 * flops + n_params + n1 * 2 * flops),
    }


def _ndims(setup: _Setup) -> list[int]:
    return [len(shape) for shape in setup.out_shapes]


def _ntk(setup: _Setup, x1, x2, axes: list[OutputAxes], implementation: str) -> list[Array]:
    if implementation == "ntk_vector_products":
        return _ntk_vector_products(setup, x1, x2, axes)
    if implementation == "jacobian_contraction":
        make_factors = ft.partial(_jacobian_factors, setup)
    else:
        plan = make_plan(setup.fn, setup.params, [a[0] for a in x1])
        if implementation == "auto":
            costs = _costs(setup, plan, x1, x2, axes)
            implementation = min(costs, key=costs.__getitem__)
            if implementation != "structured_derivatives":
                return _ntk(setup, x1, x2, axes, implementation)
        make_factors = ft.partial(side_factors, plan, setup.params, out_ndims=_ndims(setup))
    dtype = jnp.result_type(*setup.params)
    return [
        sum((evaluate(c) for c in cs), start=jnp.zeros((), dtype))
        for cs in _contractions(make_factors, x1, x2, axes)
    ]


def empirical_kernel(
    model: Callable,
    x1: PyTree[Array],
    x2: PyTree[Array] | None = None,
    get: str | tuple[str, ...] = "ntk",
    *,
    # One of `Implementation`; checked with a message of its own.
    implementation: str = "auto",
    trace_axes: int | Sequence[int] = (0,),
    diagonal_axes: int | Sequence[int] = (),
    vmap_axes: int = 0,
    filter: Callable[[Any], bool] = eqx.is_inexact_array,
):
    """The empirical NNGP and NTK of a finite network, for any Equinox module.

    For a network $f_\\theta$ called on one example, with parameters $\\theta$ (the leaves of
    `model` selected by `filter`; by default every floating-point array, as in
    `eqx.partition(model, eqx.is_inexact_array)`):

    - NNGP: $f_\\theta(x_1) \\, f_\\theta(x_2)^\\top$;
    - NTK: $\\Theta(x_1, x_2) = \\sum_p \\frac{\\partial f_\\theta(x_1)}{\\partial \\theta_p}
      \\frac{\\partial f_\\theta(x_2)}{\\partial \\theta_p}^\\top$.

    Both are indexed by the output entries of the two examples. The output axes of one example
    are channel-first like every eqntk layer; each is either **traced** (averaged over its
    diagonal: the mean over channels of the default `trace_axes=(0,)` is directly comparable
    with [`eqntk.limit`][]), kept on its **diagonal** (once), or kept as a **pair**
    `(S, S')`. The kernel has shape `(N1, N2, ...)` followed by the kept axes in order, pairs
    interleaved: a `(C, H, W)` output gives `(N1, N2, H, H', W, W')`, or `(N1, N2, H, W)` with
    `diagonal_axes=(1, 2)` — the layouts of [`eqntk.Kernel`][].

    Hyperparameters that the forward pass reads through `jax.lax.stop_gradient` (those of
    [`eqntk.nn`][] layers) have zero derivative and do not contribute.

    **Arguments:**

    - `model`: any callable Equinox module, called on ONE example (`model(x)`); its output may
      be an array or a PyTree of arrays.
    - `x1`: a batch of inputs (an array, or a PyTree of arrays), batch axis `vmap_axes`. An
      empty batch gives an empty kernel.
    - `x2`: a second batch of the same per-example shape, or `None` for `x2 = x1` (computed
      once, and cheaper).
    - `get`: `"ntk"`, `"nngp"`, or a tuple of these for a named tuple of kernels.
    - `implementation`: how the NTK is computed (the NNGP needs only forward passes):
        - `"jacobian_contraction"`: the explicit per-example Jacobian, contracted;
        - `"ntk_vector_products"`: one vjp per output entry of each `x2` example, then one jvp
          per `x1` example; never holds a Jacobian, but holds one parameter cotangent per
          output entry of `x2` at once (tile large inputs with [`eqntk.batch`][]);
        - `"structured_derivatives"`: the method of Novak et al. 2022 ("Fast Finite Width
          Neural Tangent Kernel"): dense and convolutional weights contribute through their
          layer's input and output cotangents, without forming their Jacobian (see
          `eqntk/empirical/_structured.py` for the structure exploited);
        - `"auto"`: the cheapest of the three by a flop estimate made at trace time.
    - `trace_axes`: output axes (of one example) to average over; default the channel axis.
      A scalar output (shape `()`) has no axis to trace: the default (and `0`) then leaves it
      as it is, so a scalar-output model gives `(N1, N2)` kernels.
    - `diagonal_axes`: output axes to keep only on their diagonal.
    - `vmap_axes`: the batch axis of `x1` and `x2` (every leaf).
    - `filter`: selects the parameters among the leaves of `model`.

    **Returns:**

    For each output leaf of the model, an array `(N1, N2, *kept axes)`, arranged in the
    model's output structure (one array for an array-valued model); for a tuple `get`, a named
    tuple of these.

    **Example:**

    ```python
    import jax.numpy as jnp
    import jax.random as jr
    import eqntk
    from eqntk import nn

    k1, k2 = jr.split(jr.key(0))
    model = nn.Sequential([nn.Dense(3, 64, key=k1), nn.Relu(), nn.Dense(64, 2, key=k2)])
    x1, x2 = jr.normal(jr.key(1), (4, 3)), jr.normal(jr.key(2), (5, 3))
    ntk = eqntk.empirical_kernel(model, x1, x2)                     # (4, 5)
    nngp, ntk = eqntk.empirical_kernel(model, x1, x2, ("nngp", "ntk"))
    full = eqntk.empirical_kernel(model, x1, x2, trace_axes=())      # (4, 5, 2, 2)
    assert ntk.shape == (4, 5) and full.shape == (4, 5, 2, 2)
    assert jnp.allclose(ntk, (full[:, :, 0, 0] + full[:, :, 1, 1]) / 2)
    ```
    """
    # One compiled program per model structure, shapes and options: evaluated op by op, the
    # Jacobians and contractions dispatch and compile many small programs. `filter` is applied
    # here, to the model's own leaves (inside, they are tracers: a filter that tests identity
    # would select nothing).
    return _compiled_empirical_kernel(
        model,
        x1,
        x2,
        get,
        implementation=implementation,
        trace_axes=trace_axes,
        diagonal_axes=diagonal_axes,
        vmap_axes=vmap_axes,
        filter=jtu.tree_map(filter, model),
    )


@eqx.filter_jit
def _compiled_empirical_kernel(
    model, x1, x2, get, *, implementation, trace_axes, diagonal_axes, vmap_axes, filter
):
    names = _check_get(get)
    _check_implementation(implementation)
    setup, x1_leaves, x2_leaves = _setup(model, x1, x2, vmap_axes, filter, "ntk" in names)
    axes = [canonical_axes(trace_axes, diagonal_axes, shape) for shape in setup.out_shapes]
    n1 = x1_leaves[0].shape[0]
    n2 = n1 if x2_leaves is None else x2_leaves[0].shape[0]
    if n1 == 0 or n2 == 0:
        # An empty batch has an empty kernel (the traced paths index one example).
        empty = [
            jnp.zeros(kernel_shape(n1, n2, shape, ax), dtype)
            for shape, dtype, ax in zip(setup.out_shapes, setup.out_dtypes, axes)
        ]
        kernels = {name: empty for name in names}
    else:
        compute = {
            "nngp": lambda: _nngp(setup, x1_leaves, x2_leaves, axes),
            "ntk": lambda: _ntk(setup, x1_leaves, x2_leaves, axes, implementation),
        }
        kernels = {name: compute[name]() for name in names}
    trees = {name: jtu.tree_unflatten(setup.out_tree, kernels[name]) for name in names}
    if isinstance(get, str):
        return trees[get]
    return named_tuple("EmpiricalKernels", names)(*(trees[n] for n in names))


def empirical_ntk_vp(
    model: Callable,
    x1: PyTree[Array],
    x2: PyTree[Array] | None,
    cotangents: PyTree[Array],
    *,
    vmap_axes: int = 0,
    filter: Callable[[Any], bool] = eqx.is_inexact_array,
) -> PyTree[Array]:
    """The product of the empirical NTK with a vector, without forming the NTK.

    Computes $\\Theta(x_1, x_2) \\, v = J(x_1) \\, (J(x_2)^\\top v)$ with one vjp (through the
    `x2` batch) and one jvp (through the `x1` batch), where $J$ is the Jacobian of the batched
    outputs with respect to the parameters: the full NTK over all output entries, no trace.
    Useful for iterative solvers (e.g. conjugate gradients with lineax) on kernels too large
    to store.

    **Arguments:**

    - `model`: any callable Equinox module, called on ONE example.
    - `x1`, `x2`: batches of inputs (batch axis `vmap_axes`); `x2=None` means `x2 = x1`.
    - `cotangents`: $v$, with the structure and shape of the batched output on `x2`
      (batch axis first).
    - `vmap_axes`: the batch axis of `x1` and `x2`.
    - `filter`: selects the parameters among the leaves of `model`.

    **Returns:**

    $\\Theta v$, with the structure and shape of the batched output on `x1` (batch axis first).

    **Example:**

    ```python
    import jax.numpy as jnp
    import jax.random as jr
    import eqntk
    from eqntk import nn

    model = nn.Sequential([nn.Dense(3, 16, key=jr.key(0)), nn.Relu(),
                           nn.Dense(16, 1, key=jr.key(1))])
    x = jr.normal(jr.key(2), (6, 3))
    v = jr.normal(jr.key(3), (6, 1))
    ntk = eqntk.empirical_kernel(model, x)                 # (6, 6); one output channel
    assert jnp.allclose(eqntk.empirical_ntk_vp(model, x, None, v)[:, 0], ntk @ v[:, 0])
    ```
    """
    setup, x1_leaves, x2_leaves = _setup(model, x1, x2, vmap_axes, filter, True)
    x2_leaves = x1_leaves if x2_leaves is None else x2_leaves
    batched = jax.vmap(setup.fn, in_axes=(None, 0))
    out2, vjp = jax.vjp(lambda p: batched(p, x2_leaves), setup.params)
    v_leaves, v_tree = jtu.tree_flatten(cotangents)
    expected = [o.shape for o in out2]
    if v_tree != setup.out_tree or [v.shape for v in v_leaves] != expected:
        raise ValueError(
            "`cotangents` must have the structure and shapes of the batched output on `x2` "
            f"({setup.out_tree}, shapes {expected}), got {v_tree}, shapes "
            f"{[getattr(v, 'shape', None) for v in v_leaves]}."
        )
    (g,) = vjp([jnp.asarray(v, o.dtype) for v, o in zip(v_leaves, out2)])
    _, product = jax.jvp(lambda p: batched(p, x1_leaves), (setup.params,), (g,))
    return jtu.tree_unflatten(setup.out_tree, product)
