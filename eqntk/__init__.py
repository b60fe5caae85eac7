"""eqntk: fast and easy infinite-width neural networks, built the Equinox way."""

import importlib
import importlib.metadata
import typing


if typing.TYPE_CHECKING:
    from . import (
        batching as batching,
        dynamics as dynamics,
        empirical as empirical,
        features as features,
        limits as limits,
        nn as nn,
    )
    from ._compilation_cache import enable_compilation_cache as enable_compilation_cache
    from .batching import batch as batch
    from .empirical import (
        empirical_kernel as empirical_kernel,
        empirical_ntk_vp as empirical_ntk_vp,
        linearize as linearize,
        monte_carlo_kernel as monte_carlo_kernel,
        taylor_expand as taylor_expand,
    )
    from .limits import Kernel as Kernel, limit as limit


__version__ = importlib.metadata.version("eqntk")

# The subpackages, and the names re-exported from them, load on first use (PEP 562): the
# `eqntk` command line then answers `--help` without importing JAX.
_SUBPACKAGES = ("batching", "dynamics", "empirical", "features", "limits", "nn")
_REEXPORTS = {
    "batch": "batching",
    "enable_compilation_cache": "_compilation_cache",
    "empirical_kernel": "empirical",
    "empirical_ntk_vp": "empirical",
    "linearize": "empirical",
    "monte_carlo_kernel": "empirical",
    "taylor_expand": "empirical",
    "Kernel": "limits",
    "limit": "limits",
}


def __getattr__(name: str) -> typing.Any:
    if name in _SUBPACKAGES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _REEXPORTS:
        value = getattr(importlib.import_module(f"{__name__}.{_REEXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_SUBPACKAGES, *_REEXPORTS})
