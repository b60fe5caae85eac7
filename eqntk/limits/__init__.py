"""The `limit` transform, the `Kernel`, and the registry of kernel rules.

Importing this package registers the rules of every layer in [`eqntk.nn`][].
"""

from . import (
    _activations as _activations,
    _attention as _attention,
    _branching as _branching,
    _conv as _conv,
    _dense as _dense,
    _equinox_layers as _equinox_layers,
    _exponential as _exponential,
    _graph as _graph,
    _normalization as _normalization,
    _polynomial as _polynomial,
    _pooling as _pooling,
    _program as _program,
    _quadrature as _quadrature,
    _repeat as _repeat,
    _reshape as _reshape,
    _structure as _structure,
    _trigonometric as _trigonometric,
)
from ._kernel import Kernel as Kernel
from ._limit import KernelFn as KernelFn, limit as limit
from ._registry import (
    AbstractRule as AbstractRule,
    Requirements as Requirements,
    apply as apply,
    register as register,
    requirements as requirements,
    rule_for as rule_for,
)
