"""Hyperparameters (`W_std`, `b_std`, activation constants) as array leaves of layers."""

from typing import Any, overload

import jax
import jax.core
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float


# `value: Any`: these helpers check what arrives themselves (a string, a complex number...).
def hyperparameter(name: str, value: Any, *, nonnegative: bool = False) -> Float[Array, ""]:
    """Convert a scalar hyperparameter to a 0-d floating array, checking it where it is concrete.

    Hyperparameters are array leaves so that kernels can be differentiated and vmapped with
    respect to them. Under `jax.vmap` or `jit` the value is a tracer: only its shape and dtype
    can be checked here.
    """
    array = real_array(name, value, "a real number")
    if array.shape != ():
        raise ValueError(f"`{name}` must be a scalar, got shape {array.shape}.")
    if not isinstance(value, jax.core.Tracer) and nonnegative and np.asarray(value) < 0:
        raise ValueError(f"`{name}` must be non-negative, got {value!r}.")
    return array


def real_array(name: str, value: Any, expected: str = "a real array") -> Array:
    """Convert `value` to a floating array, raising an error naming `name` unless it holds real
    numbers (integers or floats; not booleans, complex numbers or strings) that are finite.

    Integers become floats of the default precision. Tracers are checked for their dtype only.
    """
    if isinstance(value, jax.core.Tracer):
        dtype = value.dtype
    else:
        try:
            dtype = np.asarray(value).dtype
        except (TypeError, ValueError):
            dtype = np.dtype(object)
    if dtype.kind == "c":
        raise TypeError(
            f"`{name}` must be {expected}, got the complex value {value!r} (its imaginary part "
            f"would be lost)."
        )
    if dtype.kind not in "iuf" and not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"`{name}` must be {expected}, got {value!r} (dtype {dtype}).")
    # Checked on the concrete value: inside `jit`, even `jnp.asarray(1.0)` is traced.
    if not isinstance(value, jax.core.Tracer) and not np.isfinite(np.asarray(value)).all():
        raise ValueError(f"`{name}` must be finite, got {value!r}.")
    array = value if isinstance(value, jax.core.Tracer) else jnp.asarray(value)
    if not jnp.issubdtype(array.dtype, jnp.floating):
        array = array.astype(jnp.result_type(float))
    return array


@overload
def frozen(value: Array) -> Array: ...
@overload
def frozen(value: None) -> None: ...
def frozen(value: Array | None) -> Array | None:
    """A hyperparameter as the finite forward pass sees it: constant under training.

    The finite network uses its hyperparameters through `jax.lax.stop_gradient`, so that a
    gradient-based optimiser (e.g. optax's `sgd` or `adam`) sees a zero gradient for them and
    leaves them unchanged, while the kernel rules of `limit` use them directly and can be
    differentiated with respect to them.
    """
    return None if value is None else jax.lax.stop_gradient(value)
