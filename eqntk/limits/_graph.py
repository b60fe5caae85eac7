"""Kernel rule of `Aggregate` (graph message passing)."""

import jax
import jax.numpy as jnp

from ..nn import Aggregate
from ..nn._graph import dense_adjacency
from ._kernel import Kernel
from ._registry import AbstractRule, Requirements, register
from ._reshape import map_array


def _maps(layer: Aggregate, pattern, shape, n: int, name: str, dtype):
    """The per-example maps `M = A^T` `(N, *S_out, *S_in)` of a batch of graphs."""
    axes = layer.aggregated_axes(len(shape) - 1)
    agg_shape = tuple(shape[1 + a] for a in axes)
    if pattern is None:
        raise ValueError(
            f"`Aggregate` needs the graphs of the inputs: call the kernel function with "
            f"`pattern1=...` (and `pattern2=...` with `x2`), one graph per example of shape "
            f"(N, *S, *S) = {(n,) + agg_shape * 2} or an integer edge list (N, E, 2)."
        )
    if pattern.shape[0] != n:
        raise ValueError(
            f"`{name}` must hold one graph per example ({n}), got shape {pattern.shape}."
        )
    adjacency = jax.vmap(lambda p: dense_adjacency(p, agg_shape, dtype, name))(pattern)
    k = len(axes)
    # y[j] = sum_i x[i] A[i, j]: the map from positions i to positions j is A transposed.
    matrix = jnp.moveaxis(adjacency, tuple(range(1, 1 + k)), tuple(range(1 + k, 1 + 2 * k)))
    return axes, matrix


@register(Aggregate)
class AggregateRule(AbstractRule[Aggregate]):
    """Kernel rule of [`eqntk.nn.Aggregate`][]:
    $\\mathcal{K}'(x_1, x_2) = A_1^\\top \\mathcal{K}(x_1, x_2) A_2$ on the aggregated axes,
    with each example's own adjacency. It needs the full spatial covariance."""

    def requirements(self, layer: Aggregate, wanted: Requirements) -> Requirements:
        return Requirements(diagonal_spatial=False)

    def __call__(self, layer: Aggregate, k: Kernel, wanted: Requirements) -> Kernel:
        if layer.pattern is not None:
            raise ValueError(
                "This `Aggregate` layer holds one example's graph (set by `nn.with_inputs`), "
                "which is for the finite network; pass the graphs of the batches to the kernel "
                "function as `pattern1=` / `pattern2=` instead."
            )
        dtype = k.nngp.dtype
        n1, n2 = k.nngp.shape[:2]
        axes, m1 = _maps(layer, k.pattern1, k.shape1, n1, "pattern1", dtype)
        if k.x1_is_x2:
            m2 = m1
        else:
            _, m2 = _maps(layer, k.pattern2, k.shape2, n2, "pattern2", dtype)
        n = k.spatial_ndim

        def apply(a, ma, mb, n_lead):
            return map_array(a, n_lead, n, False, ((axes, ma, mb),), batched=True)

        return k.replace(
            nngp=apply(k.nngp, m1, m2, 2),
            ntk=None if k.ntk is None else apply(k.ntk, m1, m2, 2),
            cov1=apply(k.cov1, m1, m1, 1),
            cov2=None if k.cov2 is None else apply(k.cov2, m2, m2, 1),
        )
