"""`monte_carlo_kernel`: NNGP and NTK estimates from an ensemble of finite networks."""

import math
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
    n_samples: int | Sequence[int] = 64,
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
    - `n_samples`: the number of networks, a multiple of `batch_size`; or a sequence of
      numbers, for the estimates at each (sharing their samples: the estimate at `n` averages
      the first `n` networks of the largest count).
    - `batch_size`: how many networks are built and evaluated at once (default: all, or the
      greatest common divisor of several counts).
    - `get`: `"nngp"`, `"ntk"` or a tuple of these.
    - `implementation`, `trace_axes`, `diagonal_axes`, `vmap_axes`, `filter`: as in
      [`eqntk.empirical_kernel`][].

    **Returns:**

    The estimates, as [`eqntk.empirical_kernel`][] returns kernels: an array (or PyTree of
    arrays, for PyTree outputs) for a string `get`, a named tuple for a tuple `get`; for a
    sequence `n_samples`, a tuple of these, one per count.

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
    counts = (n_samples,) if isinstance(n_samples, int) else tuple(n_samples)
    if not counts or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in counts):
        raise ValueError(
            f"`n_samples` must be a positive integer or a sequence of them, got {n_samples!r}."
        )
    n_max = max(counts)
    if batch_size is None:
        batch_size = n_max if isinstance(n_samples, int) else math.gcd(*counts)
    if not isinstance(batch_size, int) or batch_size < 1 or any(n % batch_size for n in counts):
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

    keys = jr.split(key, n_max)
    keys = keys.reshape(n_max // batch_size, batch_size, *keys.shape[1:])
    shapes = eqx.filter_eval_shape(lambda k: one(make_model(k)), keys[0, 0])
    total = jtu.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    # Several sample counts share their samples: the estimate at `n` uses the first `n`
    # networks, and the sums run once up to the largest count.
    estimates, done = {}, 0
    for n in sorted(set(counts)):
        total, _ = jax.lax.scan(batch_sum, total, keys[done // batch_size : n // batch_size])
        done = n
        means = jtu.tree_map(lambda t: t / n, total)
        estimates[n] = (
            means[0] if isinstance(get, str) else named_tuple("EmpiricalKernels", names)(*means)
        )
    if isinstance(n_samples, int):
        return estimates[n_samples]
    return tuple(estimates[n] for n in counts)
