"""Hyperparameters (`W_std`, `b_std`, activation constants) as array leaves of layers."""

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float


def hyperparameter(name: str, value: ArrayLike, *, nonnegative: bool = False) -> Float[Array, ""]:
    """Convert a scalar hyperparameter to a 0-d floating array, checking it where it is concrete.

    Hyperparameters are array leaves so that kernels can be differentiated and vmapped with
    respect to them. Under `jax.vmap` or `jit` the value is a tracer and cannot be checked here.
    """
    if isinstance(value, jax.core.Tracer):
        array = value
    else:
        concrete = np.asarray(value)
        if concrete.shape != ():
            raise ValueError(f"`{name}` must be a scalar, got shape {concrete.shape}.")
        if not np.isfinite(concrete):
            raise ValueError(f"`{name}` must be finite, got {concrete}.")
        if nonnegative and concrete < 0:
            raise ValueError(f"`{name}` must be non-negative, got {concrete}.")
        array = jnp.asarray(value)
    if array.shape != ():
        raise ValueError(f"`{name}` must be a scalar, got shape {array.shape}.")
    if not jnp.issubdtype(array.dtype, jnp.floating):
        array = array.astype(jnp.result_type(float))
    return array


def frozen(value: Array | None) -> Array | None:
    """A hyperparameter as the finite forward pass sees it: constant under training.

    The finite network uses its hyperparameters through `jax.lax.stop_gradient`, so that a
    gradient-based optimiser (e.g. optax's `sgd` or `adam`) sees a zero gradient for them and
    leaves them unchanged, while the kernel rules of `limit` use them directly and can be
    differentiated with respect to them.
    """
    return None if value is None else jax.lax.stop_gradient(value)
