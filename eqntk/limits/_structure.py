"""Kernel rules of the structural layers: `Sequential`, `Identity`, `Flatten`."""

import equinox as eqx
import jax.numpy as jnp

from ..nn import Flatten, Identity, Sequential
from ._kernel import Kernel
from ._registry import (
    AbstractRule,
    AbstractStreamsRule,
    KernelTree,
    Requirements,
    RequirementsTree,
    apply,
    register,
    requirements,
)


@register(Sequential, eqx.nn.Sequential)
class SequentialRule(AbstractStreamsRule[Sequential | eqx.nn.Sequential]):
    """Kernel rule of [`eqntk.nn.Sequential`][] (and `equinox.nn.Sequential`): the composition
    of the layers' rules."""

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
        for child, child_wanted in zip(layer.layers, reversed(boundaries)):
            k = apply(child, k, child_wanted)
        return k


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
        return k.replace(
            nngp=jnp.mean(k.nngp, axis=axes2),
            ntk=None if k.ntk is None else jnp.mean(k.ntk, axis=axes2),
            cov1=jnp.mean(k.cov1, axis=axes1),
            cov2=None if k.cov2 is None else jnp.mean(k.cov2, axis=axes1),
            shape1=(size1,),
            shape2=(size2,),
            diagonal_spatial=False,
        )
