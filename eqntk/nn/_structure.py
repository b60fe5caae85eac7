"""Structural layers: `Sequential`, `Identity`, `Flatten`."""

from collections.abc import Sequence
from typing import Any

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float, PRNGKeyArray

from ..limits._kernel import Kernel
from ..limits._registry import (
    AbstractRule,
    AbstractStreamsRule,
    KernelTree,
    Requirements,
    RequirementsTree,
    register,
    requirements,
)
from ._folding import apply_in_order


class Sequential(eqx.Module):
    """Layers applied one after the other (serial composition).

    Its limit is the composition of its layers' limits.
    """

    layers: tuple[Any, ...]

    def __init__(self, layers: Sequence[Any]):
        """**Arguments:**

        - `layers`: the layers, applied in order. Each is called as `layer(x, key=key)`.

        **Example:**

        ```python
        import jax.numpy as jnp
        import jax.random as jr
        from eqntk import nn

        k1, k2 = jr.split(jr.key(0))
        model = nn.Sequential([nn.Dense(3, 16, key=k1), nn.Relu(), nn.Dense(16, 2, key=k2)])
        assert model(jnp.ones(3)).shape == (2,)
        ```
        """
        self.layers = tuple(layers)

    def __call__(self, x: Any, *, key: PRNGKeyArray | None = None) -> Any:
        """Apply the layers in order to one example `x` (or a tuple of streams).

        **Arguments:**

        - `x`: one channel-first example.
        - `key`: a `jax.random` key, split between the layers (for `Dropout`), or `None`.

        **Returns:**

        The output of the last layer.
        """
        keys = [None] * len(self.layers) if key is None else jr.split(key, len(self.layers))
        for layer, layer_key in zip(self.layers, keys):
            x = layer(x, key=layer_key)
        return x

    def __getitem__(self, i: int | slice) -> Any:
        """The `i`-th layer, or a `Sequential` of a slice of the layers."""
        if isinstance(i, slice):
            return Sequential(self.layers[i])
        return self.layers[i]

    def __len__(self) -> int:
        """The number of layers."""
        return len(self.layers)


class Identity(eqx.Module):
    """The identity layer (a no-op, e.g. the shortcut of a residual block).

    **Example:**

    ```python
    import jax.numpy as jnp
    from eqntk import nn

    assert (nn.Identity()(jnp.ones(3)) == 1).all()
    ```
    """

    def __call__(self, x: Any, *, key: PRNGKeyArray | None = None) -> Any:
        """Return `x` unchanged."""
        return x


class Flatten(eqx.Module):
    """Flatten one example into a vector of shape `(C * S0 * S1 * ...,)`.

    Its kernel is the mean over positions of the spatial diagonal of the covariance, so a
    network that ends in `Flatten` only ever needs the spatial diagonal (`limit` arranges that).

    **Example:**

    ```python
    import jax.numpy as jnp
    from eqntk import nn

    assert nn.Flatten()(jnp.ones((3, 4, 5))).shape == (60,)
    ```
    """

    def __call__(
        self, x: Float[Array, "c *spatial"], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, " features"]:
        """Flatten one channel-first example `x`."""
        return x.reshape(-1)


# Kernel rules -------------------------------------------------------------------------------------
# Kernel rules of the structural layers: `Sequential`, `Identity`, `Flatten`.


@register(Sequential, eqx.nn.Sequential)
class SequentialRule(AbstractStreamsRule[Sequential | eqx.nn.Sequential]):
    """Kernel rule of [`eqntk.nn.Sequential`][] (and `equinox.nn.Sequential`): the composition
    of the layers' rules. A run of at least four identically built blocks (a deep stack of
    `Dense, Relu`, say) is traced and compiled once, in a `jax.lax.scan`, so that compiling
    the kernel (and its gradient) does not grow with the depth."""

    def requirements(
        self, layer: Sequential | eqx.nn.Sequential, wanted: RequirementsTree
    ) -> RequirementsTree:
        for child in reversed(layer.layers):
            wanted = requirements(child, wanted)
        return wanted

    def __call__(
        self, layer: Sequential | eqx.nn.Sequential, k: KernelTree, wanted: RequirementsTree
    ) -> KernelTree:
        # What each layer must deliver: computed from the top down, applied bottom up.
        boundaries = [wanted]
        for child in reversed(layer.layers[1:]):
            boundaries.append(requirements(child, boundaries[-1]))
        return apply_in_order(layer.layers, k, boundaries[::-1])


@register(Identity, eqx.nn.Identity)
class IdentityRule(AbstractStreamsRule[Identity | eqx.nn.Identity]):
    """Kernel rule of [`eqntk.nn.Identity`][] (and `equinox.nn.Identity`)."""

    def requirements(
        self, layer: Identity | eqx.nn.Identity, wanted: RequirementsTree
    ) -> RequirementsTree:
        return wanted

    def __call__(
        self, layer: Identity | eqx.nn.Identity, k: KernelTree, wanted: RequirementsTree
    ) -> KernelTree:
        return k


@register(Flatten)
class FlattenRule(AbstractRule[Flatten]):
    """Kernel rule of [`eqntk.nn.Flatten`][]: the mean of the spatial diagonal."""

    def requirements(self, layer: Flatten, wanted: Requirements) -> Requirements:
        return Requirements(diagonal_spatial=True)

    def __call__(self, layer: Flatten, k: Kernel, wanted: Requirements) -> Kernel:
        n = k.spatial_ndim
        if n == 0:
            return k
        axes1 = tuple(range(1, 1 + n))
        axes2 = tuple(range(2, 2 + n))
        size1 = 1
        for s in k.shape1:
            size1 *= s
        size2 = 1
        for s in k.shape2:
            size2 *= s
        return k.map_covariances(
            lambda a: jnp.mean(a, axis=axes2),
            cov_fn=lambda a: jnp.mean(a, axis=axes1),
            shape1=(size1,),
            shape2=(size2,),
            diagonal_spatial=False,
            # No positions are left to mask; the masked entries were averaged as zeros.
            mask1=None,
            mask2=None,
        )
