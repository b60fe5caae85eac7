"""`monte_carlo_kernel`: NNGP and NTK estimates from an ensemble of finite networks."""

from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
from jaxtyping import Array, PRNGKeyArray, PyTree

from .._callable import named_tuple
from ._empirical import Implementation, empirical_kernel


def monte_carlo_kernel(
    make_model: Callable[[PRNGKeyArray], Any],
    key: PRNGKeyArray,
    x1: PyTree[Array],
    x2: PyTree[Array] | None = None,
    n_samples: int = 64,
    batch_size: int | None = None,
    get: str | tuple[str, ...] = ("nngp", "ntk"),
    *,
    implementation: Implementation = "auto",
    trace_axes: int | Sequence[int] = (0,),
    diagonal_axes: int | Sequence[int] = (),
    vmap_axes: int = 0,
    filter: Callable[[Any], bool] = eqx.is_inexact_array,
):
    """Monte Carlo estimates of the NNGP and NTK, averaged over randomly initialised networks.

    With networks $f_s$ = `make_model(key_s)` for `n_samples` independent keys, the estimates
    are $\\hat{\\mathcal{K}} = \\frac{1}{S} \\sum_s f_s(x_1) f_s(x_2)^\\top$ and
    $\\hat\\Theta = \\frac{1}{S} \\sum_s \\Theta_s(x_1, x_2)$, each averaged over the output
    channels by the default `trace_axes=(0,)` ([`eqntk.empirical_kernel`][] conventions). For
    wide networks they converge to the kernels of [`eqntk.limit`][] (same layout, directly
    comparable), with an error of order $1/\\sqrt{S \\cdot \\text{channels}}$ plus the
    finite-width corrections; they work for any network, including those without a closed-form
    kernel (max pooling, `jnp.tanh`, attention...).

    The ensemble is built with `eqx.filter_vmap(make_model)` over a batch of `batch_size` keys
    at a time, and a `jax.lax.scan` over the batches accumulates the sums, so memory is bounded
    by one batch of networks however large `n_samples` is.

    **Arguments:**

    - `make_model`: a function of a `jax.random` key returning a network (an Equinox module
      called on ONE example).
    - `key`: the `jax.random` key of the ensemble.
    - `x1`, `x2`: batches of inputs (batch axis `vmap_axes`); `x2=None` means `x2 = x1`.
    - `n_samples`: the number of networks, a multiple of `batch_size`.
    - `batch_size`: how many networks are built and evaluated at once (default: all).
    - `get`: `"nngp"`, `"ntk"` or a tuple of these.
    - `implementation`, `trace_axes`, `diagonal_axes`, `vmap_axes`, `filter`: as in
      [`eqntk.empirical_kernel`][].

    **Returns:**

    The estimates, as [`eqntk.empirical_kernel`][] returns kernels: an array (or PyTree of
    arrays, for PyTree outputs) for a string `get`, a named tuple for a tuple `get`.

    **Example:**

    ```python
    import jax.random as jr
    import eqntk
    from eqntk import nn

    def make_model(key):
        k1, k2 = jr.split(key)
        return nn.Sequential([nn.Dense(3, 256, b_std=0.1, key=k1), nn.Relu(),
                              nn.Dense(256, 4, b_std=0.1, key=k2)])

    x = jr.normal(jr.key(0), (5, 3))
    nngp, ntk = eqntk.monte_carlo_kernel(make_model, jr.key(1), x, n_samples=8, batch_size=4)
    exact = eqntk.limit(make_model(jr.key(2)))(x, get="ntk")
    assert ntk.shape == exact.shape == (5, 5)
    ```
    """
    if not isinstance(n_samples, int) or n_samples < 1:
        raise ValueError(f"`n_samples` must be a positive integer, got {n_samples!r}.")
    batch_size = n_samples if batch_size is None else batch_size
    if not isinstance(batch_size, int) or batch_size < 1 or n_samples % batch_size:
        raise ValueError(
            f"`batch_size` must be a positive integer that divides `n_samples` ({n_samples}), "
            f"got {batch_size!r}."
        )
    names = (get,) if isinstance(get, str) else tuple(get)

    def one(model):
        kernels = empirical_kernel(
            model,
            x1,
            x2,
            names,
            implementation=implementation,
            trace_axes=trace_axes,
            diagonal_axes=diagonal_axes,
            vmap_axes=vmap_axes,
            filter=filter,
        )
        return tuple(kernels)

    def batch_sum(total, keys):
        models = eqx.filter_vmap(make_model)(keys)
        kernels = eqx.filter_vmap(one)(models)
        return jtu.tree_map(lambda t, k: t + k.sum(0), total, kernels), None

    keys = jr.split(key, n_samples)
    keys = keys.reshape(n_samples // batch_size, batch_size, *keys.shape[1:])
    shapes = eqx.filter_eval_shape(lambda k: one(make_model(k)), keys[0, 0])
    zeros = jtu.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    total, _ = jax.lax.scan(batch_sum, zeros, keys)
    means = jtu.tree_map(lambda t: t / n_samples, total)
    if isinstance(get, str):
        return means[0]
    return named_tuple("EmpiricalKernels", names)(*means)
