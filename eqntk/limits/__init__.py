"""The `limit` transform, the `Kernel`, and the registry of kernel rules.

The kernel rules of eqntk's layers live beside the layers, in [`eqntk.nn`][]: defining a layer
class registers its rule.
"""

# The rules of eqntk's layers (and of the `equinox.nn` containers) are registered where the
# layers are defined; importing `eqntk.nn` here makes them available to `limit` whichever of the
# two packages is imported first.
from .. import nn as _nn  # noqa: E402, F401
from ._kernel import Kernel as Kernel
from ._limit import KernelFn as KernelFn, limit as limit
from ._registry import (
    AbstractRule as AbstractRule,
    AbstractStreamsRule as AbstractStreamsRule,
    Requirements as Requirements,
    apply as apply,
    register as register,
    requirements as requirements,
    rule_for as rule_for,
)
