"""Kernel rule of `Repeat`: the layers' rules in a `jax.lax.scan`, traced and compiled once."""

import equinox as eqx
import jax

from ..nn import Repeat
from ._registry import (
    AbstractStreamsRule,
    KernelTree,
    RequirementsTree,
    apply,
    register,
    requirements,
)


def _metadata(k) -> object:
    """What a scan carry must keep from step to step: the tree structure and static fields."""
    return jax.tree_util.tree_structure(k)


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

    The first layer is applied on its own, because it may change the kernel's metadata (e.g.
    `Sequential([Dense, Relu])` after an input that is not Gaussian); the other `n - 1` layers
    run in a `jax.lax.scan`, which needs every step to map a kernel to one with the same
    metadata (shapes, spatial layout, Gaussianity).
    """

    def requirements(self, layer: Repeat, wanted: RequirementsTree) -> RequirementsTree:
        return _carried(layer, wanted)

    def __call__(self, layer: Repeat, k: KernelTree, wanted: RequirementsTree) -> KernelTree:
        carried = _carried(layer, wanted)
        # Every step delivers the layout the next step needs; `apply` conforms the result of
        # the last step to `wanted`.
        k = apply(layer.layer(0), k, carried)
        if layer.n == 1:
            return k
        params, static = eqx.partition(layer.layers, eqx.is_array)
        rest = jax.tree_util.tree_map(lambda leaf: leaf[1:], params)

        def step(k, layer_params):
            out = apply(eqx.combine(layer_params, static), k, carried)
            if _metadata(out) != _metadata(k):
                raise ValueError(
                    f"`Repeat` runs its layers in a `jax.lax.scan`, which needs each layer to "
                    f"map a kernel to one with the same metadata; the layer maps "
                    f"{_describe(k)} to {_describe(out)}. Use `Sequential` for layers that "
                    f"change shapes or layouts."
                )
            return out, None

        k, _ = jax.lax.scan(step, k, rest, length=layer.n - 1)
        return k


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
