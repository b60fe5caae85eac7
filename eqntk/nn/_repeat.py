"""`Repeat`: a deep stack of identically built layers, compiled once with `jax.lax.scan`."""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.random as jr
from jaxtyping import PRNGKeyArray

from ..limits._registry import (
    AbstractStreamsRule,
    KernelTree,
    RequirementsTree,
    apply,
    register,
    requirements,
)
from ._folding import apply_stacked


class Repeat(eqx.Module):
    """`n` layers built by the same function, applied one after the other.

    The layers have independent parameters, stored stacked: every array leaf of `layers` has a
    leading axis of length `n`. Both the finite forward pass and the kernel rule run the stack
    with `jax.lax.scan`, so the compile time does not grow with the depth. Its result is the
    same as `Sequential([make_layer(k) for k in jax.random.split(key, n)])`.

    The layer must keep the shape of its input (e.g. `Sequential([Relu(), Dense(w, w)])`, or
    a residual block). In the limit, its kernel rule must map a kernel to one with the same
    metadata (shapes, layout, Gaussianity): the rule raises an error otherwise.
    """

    layers: Any
    n: int = eqx.field(static=True)

    def __init__(self, make_layer: Callable[[PRNGKeyArray], Any], n: int, *, key: PRNGKeyArray):
        """**Arguments:**

        - `make_layer`: a function from a `jax.random` key to a layer. It is called once under
          `eqx.filter_vmap` over `n` keys, so it must build layers of one structure and use
          the key only for the random parameters.
        - `n`: the number of layers, at least 1.
        - `key`: a `jax.random` key, split into one key per layer.

        **Example:**

        ```python
        import jax.numpy as jnp
        import jax.random as jr
        import eqntk
        from eqntk import nn

        def block(key):
            return nn.Sequential([nn.Relu(), nn.Dense(16, 16, W_std=1.5, b_std=0.1, key=key)])

        model = nn.Sequential([nn.Dense(3, 16, key=jr.key(0)),
                               nn.Repeat(block, 100, key=jr.key(1))])
        assert model(jnp.ones(3)).shape == (16,)
        assert eqntk.limit(model)(jnp.ones((2, 3)), get="nngp").shape == (2, 2)
        ```
        """
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"`Repeat` needs a positive integer `n`, got {n!r}.")
        self.n = n
        self.layers = eqx.filter_vmap(make_layer)(jr.split(key, n))

    def layer(self, i: int) -> Any:
        """The `i`-th layer (a module without the stacked axis).

        **Arguments:**

        - `i`: the index of the layer, `0 <= i < n`.

        **Returns:**

        The layer, as `make_layer` built it.
        """
        if not 0 <= i < self.n:
            raise IndexError(f"`Repeat` has {self.n} layers, got index {i}.")
        return jax.tree_util.tree_map(
            lambda leaf: leaf[i] if eqx.is_array(leaf) else leaf, self.layers
        )

    def __call__(self, x: Any, *, key: PRNGKeyArray | None = None) -> Any:
        """Apply the `n` layers in order to one example `x` (or a tuple of streams).

        **Arguments:**

        - `x`: one channel-first example.
        - `key`: a `jax.random` key, split between the layers (for `Dropout`), or `None`.

        **Returns:**

        The output of the last layer, of the shape of `x`.
        """
        params, static = eqx.partition(self.layers, eqx.is_array)
        keys = None if key is None else jr.split(key, self.n)

        def step(x, inputs):
            layer_params, layer_key = inputs
            return eqx.combine(layer_params, static)(x, key=layer_key), None

        x, _ = jax.lax.scan(step, x, (params, keys), length=self.n)
        return x


def repeat(make_layer: Callable[[PRNGKeyArray], Any], n: int, *, key: PRNGKeyArray) -> Repeat:
    """Stack `n` layers built by `make_layer`, to be applied in order (see [`eqntk.nn.Repeat`][]).

    **Arguments:**

    - `make_layer`: a function from a `jax.random` key to a layer that keeps its input's shape.
    - `n`: the number of layers.
    - `key`: a `jax.random` key.

    **Returns:**

    A [`eqntk.nn.Repeat`][].

    **Example:**

    ```python
    import jax.random as jr
    from eqntk import nn

    deep = nn.repeat(lambda k: nn.Sequential([nn.Dense(8, 8, key=k), nn.Erf()]), 1000,
                     key=jr.key(0))
    assert deep.n == 1000
    ```
    """
    return Repeat(make_layer, n, key=key)


# Kernel rules -------------------------------------------------------------------------------------
# Kernel rule of `Repeat`: the layers' rules in a `jax.lax.scan`, traced and compiled once.


def _describe(k) -> str:
    if isinstance(k, tuple):
        return "(" + ", ".join(_describe(ki) for ki in k) + ")"
    return (
        f"Kernel(shape1={k.shape1}, shape2={k.shape2}, diagonal_spatial={k.diagonal_spatial}, "
        f"is_gaussian={k.is_gaussian}, ntk={'None' if k.ntk is None else 'array'})"
    )


@register(Repeat)
class RepeatRule(AbstractStreamsRule[Repeat]):
    """Kernel rule of [`eqntk.nn.Repeat`][]: the layer's rule applied `n` times, in a scan.

    The first layers (two at most) are applied on their own while they change the kernel's
    metadata (e.g. `Sequential([Dense, Relu])` after an input that is not Gaussian); the others
    run in a `jax.lax.scan`, which needs every step to map a kernel to one with the same
    metadata (shapes, dtypes, spatial layout, Gaussianity): an error says so otherwise.
    """

    def requirements(self, layer: Repeat, wanted: RequirementsTree) -> RequirementsTree:
        return _carried(layer, wanted)

    def __call__(self, layer: Repeat, k: KernelTree, wanted: RequirementsTree) -> KernelTree:
        carried = _carried(layer, wanted)
        params, static = eqx.partition(layer.layers, eqx.is_array)
        # Every step delivers the layout the next step needs; `apply` conforms the result of
        # the last step to `wanted`.
        return apply_stacked(
            lambda child, k: apply(child, k, carried),
            static,
            params,
            layer.n,
            k,
            unfoldable=_unfoldable,
        )


def _unfoldable(before: KernelTree, after: KernelTree) -> ValueError:
    return ValueError(
        f"`Repeat` runs its layers in a `jax.lax.scan`, which needs each layer to map a kernel "
        f"to one with the same metadata; the layer maps {_describe(before)} to "
        f"{_describe(after)}. Use `Sequential` for layers that change shapes or layouts."
    )


def _carried(layer: Repeat, wanted: RequirementsTree) -> RequirementsTree:
    """The requirements on the kernel between two layers of the stack.

    The last layer must deliver `wanted`; each layer then needs of its input what it needs of
    its output, so that one layout serves every step of the scan.
    """
    child = layer.layer(0)
    carried = requirements(child, wanted)
    if requirements(child, carried) != carried:
        raise ValueError(
            f"`Repeat` needs its layer to ask of its input kernel what it asks of its output, "
            f"so that one kernel layout serves every step; the layer needs {carried} of its "
            f"input to deliver {wanted}, but {requirements(child, carried)} to deliver "
            f"{carried}. Use `Sequential` for this layer."
        )
    return carried
