"""`Aggregate`: message passing over a graph given with each example."""

from collections.abc import Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, PRNGKeyArray, Shaped

from ..limits._kernel import Kernel
from ..limits._registry import AbstractRule, Requirements, register
from ._hyperparameters import frozen
from ._masked import AbstractMaskedLayer
from ._reshape import map_array, spatial_axes
from ._structure import Flatten, Sequential


def dense_adjacency(
    pattern: Shaped[Array, "..."], agg_shape: tuple[int, ...], dtype, name: str = "pattern"
) -> Float[Array, "..."]:
    """One example's graph as a dense adjacency `(*S, *S)` over the aggregated positions.

    A floating (or boolean) `pattern` is already dense. An integer `pattern` is an edge list
    `(E, 2)` (one aggregated axis) or `(E, K, 2)`, with (sender, receiver) coordinates in the
    last axis: repeated edges add up, and an edge with any negative coordinate is padding.
    """
    k = len(agg_shape)
    if not jnp.issubdtype(pattern.dtype, jnp.integer):
        if pattern.shape != agg_shape * 2:
            raise ValueError(
                f"`{name}` (a dense adjacency) must have the shape (*S, *S) = {agg_shape * 2} of "
                f"one example's aggregated positions, got {pattern.shape}. Integer arrays are "
                f"read as edge lists (E, 2) or (E, K, 2)."
            )
        return pattern.astype(dtype)
    if pattern.ndim == 2 and k == 1:
        pattern = pattern[:, None, :]
    if pattern.ndim != 3 or pattern.shape[1:] != (k, 2):
        raise ValueError(
            f"`{name}` (an integer edge list) must have shape (E, {k}, 2)"
            + (" or (E, 2)" if k == 1 else "")
            + f" for {k} aggregated axes, got {pattern.shape}."
        )
    valid = jnp.all(pattern >= 0, axis=(1, 2))
    senders = tuple(jnp.where(valid, pattern[:, d, 0], 0) for d in range(k))
    receivers = tuple(jnp.where(valid, pattern[:, d, 1], 0) for d in range(k))
    adjacency = jnp.zeros(agg_shape * 2, dtype)
    return adjacency.at[senders + receivers].add(valid.astype(dtype))


class Aggregate(eqx.Module):
    """Graph message passing: each position becomes the weighted sum of its predecessors.

    For one example with positions $i$ (over the aggregated spatial axes, flattened in row-major
    order) and adjacency $A$ ($A_{ij}$ the weight of the edge from $i$ to $j$):
    $y[c, j] = \\sum_i x[c, i]\\, A_{ij}$, at every channel and at every position of the other
    spatial axes. In the limit $\\mathcal{K}'(x_1, x_2) = A_1^\\top \\mathcal{K}(x_1, x_2) A_2$ on
    the aggregated axes (Du et al. 2019, "Graph neural tangent kernel").

    The graph belongs to the example, not to the layer:

    - the kernel function takes the graphs of a batch as `pattern1`/`pattern2`:
      `eqntk.limit(model)(x1, x2, pattern1=A1, pattern2=A2)`;
    - the finite network gets one example's graph through [`eqntk.nn.with_inputs`][], which
      returns the model with every `Aggregate` layer holding that graph:
      `jax.vmap(lambda x, a: nn.with_inputs(model, pattern=a)(x))(xs, graphs)`.

    A graph is either a dense adjacency of shape `(*S, *S)` (floating or boolean; `S` the sizes
    of the aggregated axes) or an integer edge list `(E, 2)` / `(E, K, 2)` of (sender, receiver)
    coordinates in which repeated edges add up and any negative coordinate marks a padding edge.
    """

    axes: tuple[int, ...] | None = eqx.field(static=True)
    pattern: Shaped[Array, "..."] | None

    def __init__(self, axes: int | Sequence[int] | None = None):
        """**Arguments:**

        - `axes`: the spatial axes to aggregate over (0 is the first axis after the channels),
          or `None` for all of them. The other spatial axes are handled independently.

        **Example:**

        ```python
        import jax.numpy as jnp
        from eqntk import nn

        layer = nn.with_inputs(nn.Aggregate(), pattern=jnp.ones((4, 4)))
        assert (layer(jnp.ones((3, 4))) == 4).all()       # every vertex sums all 4
        edges = jnp.array([[0, 1], [1, 2], [-1, -1]])      # 0 -> 1, 1 -> 2, padding
        y = nn.with_inputs(nn.Aggregate(), pattern=edges)(jnp.arange(3.0)[None])
        assert y.tolist() == [[0.0, 0.0, 1.0]]
        ```
        """
        self.axes = None if axes is None else spatial_axes(axes)
        self.pattern = None

    def aggregated_axes(self, n_spatial: int) -> tuple[int, ...]:
        """The aggregated spatial axes for inputs with `n_spatial` spatial axes."""
        if self.axes is None:
            return tuple(range(n_spatial))
        return spatial_axes(self.axes, n_spatial)

    def __call__(
        self, x: Float[Array, "c *spatial"], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, "c *spatial"]:
        """Aggregate one channel-first example `x` over the graph set by `with_inputs`.

        Without a graph (`pattern` None) the layer is the identity, as if every vertex had only
        a self-loop.

        **Arguments:**

        - `x`: one example `(C, *spatial)`.
        - `key`: unused.

        **Returns:**

        The aggregated example, of the shape of `x`.
        """
        if self.pattern is None:
            # As in neural-tangents: without a graph every vertex only keeps its own value.
            return x
        axes = self.aggregated_axes(x.ndim - 1)
        agg_shape = tuple(x.shape[1 + a] for a in axes)
        adjacency = dense_adjacency(frozen(self.pattern), agg_shape, x.dtype)
        k = len(axes)
        y = jnp.tensordot(x, adjacency, axes=(tuple(1 + a for a in axes), tuple(range(k))))
        return jnp.moveaxis(y, tuple(range(y.ndim - k, y.ndim)), tuple(1 + a for a in axes))


def with_inputs(
    model: Any,
    *,
    pattern: Shaped[Array, "..."] | None = None,
    mask: Bool[Array, "*spatial"] | None = None,
) -> Any:
    """`model` with one example's side inputs set on the layers that use them.

    The graph of an example goes to every [`eqntk.nn.Aggregate`][] layer, and its mask of
    padded positions to every layer that mixes positions: [`eqntk.nn.GlobalSelfAttention`][]
    (which then never attends to them), the convolutions ([`eqntk.nn.Conv`][],
    [`eqntk.nn.ConvTranspose`][], [`eqntk.nn.ConvLocal`][]) and the pooling layers
    ([`eqntk.nn.AvgPool`][], [`eqntk.nn.SumPool`][], [`eqntk.nn.GlobalAvgPool`][],
    [`eqntk.nn.GlobalSumPool`][]), which zero their input at masked positions, and
    `GlobalAvgPool` averages over the unmasked positions only. These are the semantics of the
    kernel function's `mask1`/`mask2`, so Monte Carlo estimates agree with the limit (at the
    unmasked positions of the output; the finite outputs at masked positions are meaningless).

    Each layer holds the mask of *its own input*: through a [`eqntk.nn.Sequential`][] the mask
    follows the layers, each convolution or pooling layer mapping it to its output positions
    (`layer.output_mask`: strided and `VALID` layers keep the mask at each window's centre), so
    a layer after a strided convolution gets the mask at its own resolution; a `Flatten` or a
    global pooling ends it. Every other container (e.g. [`eqntk.nn.Parallel`][]) passes the
    mask it receives to each of its children unchanged, as do layers without `output_mask`
    (elementwise layers, `Dense`); a layer that then sees a mask of the wrong spatial shape
    raises an error when called.

    Layers are called on one example, and these inputs belong to the example: call this inside
    the function that is vmapped over the batch, so that they never become part of the trained
    parameters. The kernel function takes the same inputs for whole batches, as
    `pattern1`/`pattern2` and `mask1`/`mask2`; a model holding them has no kernel.

    **Arguments:**

    - `model`: a network (any PyTree of layers).
    - `pattern`: one example's graph: a dense adjacency `(*S, *S)` or an integer edge list
      `(E, 2)` / `(E, K, 2)` (see [`eqntk.nn.Aggregate`][]); `None` leaves the graphs as
      they are.
    - `mask`: one example's mask `(*spatial)` over the positions of the network's input, `True`
      at padded positions (one mask for all channels); `None` leaves the masks as they are.

    **Returns:**

    A copy of `model` holding these inputs.

    **Example:**

    ```python
    import jax
    import jax.numpy as jnp
    import jax.random as jr
    from eqntk import nn

    model = nn.Sequential([nn.Dense(3, 8, key=jr.key(0)), nn.Relu(), nn.Aggregate()])
    xs, graphs = jnp.ones((5, 3, 4)), jnp.ones((5, 4, 4))
    ys = jax.vmap(lambda x, a: nn.with_inputs(model, pattern=a)(x))(xs, graphs)
    assert ys.shape == (5, 8, 4)

    cnn = nn.Sequential([nn.Conv(3, 8, (3,), strides=(2,), padding="SAME", key=jr.key(1)),
                         nn.Relu(), nn.AvgPool((2,)), nn.GlobalAvgPool()])
    masks = jnp.arange(4)[None, :] >= jnp.array([4, 3, 2, 2, 1])[:, None]   # lengths
    ys = jax.vmap(lambda x, m: nn.with_inputs(cnn, mask=m)(x))(xs, masks)
    assert ys.shape == (5, 8)
    ```
    """

    if mask is not None:
        mask = jnp.asarray(mask)
        if mask.dtype != jnp.bool_:
            raise TypeError(f"`mask` must be a boolean array, got dtype {mask.dtype}.")

    def bind(node):
        if isinstance(node, Aggregate):
            return eqx.tree_at(lambda n: n.pattern, node, pattern, is_leaf=lambda z: z is None)
        return node

    if pattern is not None:
        model = jax.tree_util.tree_map(bind, model, is_leaf=lambda n: isinstance(n, Aggregate))
    if mask is not None:
        model, _ = _bind_mask(model, mask)
    return model


def _bind_mask(node: Any, mask: Array | None) -> tuple[Any, Array | None]:
    """`node` with `mask` (over the positions of its input) on its masked layers, and the mask
    over the positions of its output."""
    if isinstance(node, Sequential):
        layers = []
        for layer in node.layers:
            layer, mask = _bind_mask(layer, mask)
            layers.append(layer)
        return eqx.tree_at(lambda s: s.layers, node, tuple(layers)), mask
    if isinstance(node, AbstractMaskedLayer):
        node = eqx.tree_at(lambda n: n.mask, node, mask, is_leaf=lambda z: z is None)
        return node, None if mask is None else node.output_mask(mask)
    if isinstance(node, Flatten):
        return node, None
    kinds = (Sequential, AbstractMaskedLayer)

    def inner(child):
        return _bind_mask(child, mask)[0] if isinstance(child, kinds) else child

    children = jax.tree_util.tree_map(inner, node, is_leaf=lambda n: isinstance(n, kinds))
    return children, mask


# Kernel rules -------------------------------------------------------------------------------------
# Kernel rule of `Aggregate` (graph message passing).


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
    """Kernel rule of [`eqntk.nn.Aggregate`][] (the map is in its docstring), with each
    example's own adjacency; it needs the full spatial covariance."""

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

        return k.map_covariances(
            lambda a: apply(a, m1, m2, 2),
            cov1_fn=lambda a: apply(a, m1, m1, 1),
            cov2_fn=lambda a: apply(a, m2, m2, 1),
        )
