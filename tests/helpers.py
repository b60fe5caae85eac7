"""Shared test helpers: tree comparison and Monte Carlo kernels of finite eqntk networks."""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from eqntk.limits._spatial import gram


def tree_allclose(a: Any, b: Any, rtol: float = 1e-6, atol: float = 0.0) -> bool:
    """Whether two PyTrees have the same structure and allclose leaves."""
    leaves_a, tree_a = jax.tree_util.tree_flatten(a)
    leaves_b, tree_b = jax.tree_util.tree_flatten(b)
    if tree_a != tree_b:
        return False
    return all(np.allclose(x, y, rtol=rtol, atol=atol) for x, y in zip(leaves_a, leaves_b))


def _sample_kernels(model: Any, x1: jax.Array, x2: jax.Array, with_ntk: bool):
    """Empirical NNGP and NTK of one finite network, averaged over its output channels.

    Layout as `eqntk.Kernel` (full spatial layout, interleaved pairs).
    """
    f1 = jax.vmap(model)(x1)
    f2 = jax.vmap(model)(x2)
    nngp = gram(f1, f2, diagonal_spatial=False)
    if not with_ntk:
        return nngp, None
    params, static = eqx.partition(model, eqx.is_inexact_array)

    def per_example(p, x):
        return eqx.combine(p, static)(x)

    def jacobian(x):
        # Leaves of shape (C, *spatial, *param_shape), flattened to (C, *spatial, P).
        jac = jax.jacrev(per_example)(params, x)
        out_ndim = f1.ndim - 1
        leaves = [
            leaf.reshape(leaf.shape[:out_ndim] + (-1,)) for leaf in jax.tree_util.tree_leaves(jac)
        ]
        return jnp.concatenate(leaves, axis=-1)

    j1 = jax.vmap(jacobian)(x1)  # (N1, C, *spatial, P)
    j2 = jax.vmap(jacobian)(x2)
    n = f1.ndim - 2
    letters = "ijklmnop"[: 2 * n]
    s1, s2 = letters[:n], letters[n:]
    pairs = "".join(a + b for a, b in zip(s1, s2))
    ntk = jnp.einsum(f"Yc{s1}P,Zc{s2}P->YZ{pairs}", j1, j2) / f1.shape[1]
    return nngp, ntk


def mc_kernels(
    make_model: Callable[[jax.Array], Any],
    key: jax.Array,
    x1: jax.Array,
    x2: jax.Array | None = None,
    n_samples: int = 64,
    with_ntk: bool = True,
    batch: int = 8,
) -> tuple[jax.Array, jax.Array | None]:
    """Monte Carlo NNGP and NTK: averages over `n_samples` finite networks `make_model(key)`.

    The NNGP estimate is the mean over samples and output channels of `f(x1)_c f(x2)_c`; the
    NTK estimate is the mean of the empirical NTK (explicit Jacobian products, so keep the
    networks small enough for `jax.jacrev`).
    """
    x2 = x1 if x2 is None else x2
    if n_samples % batch:
        raise ValueError(f"`n_samples` ({n_samples}) must be a multiple of `batch` ({batch}).")

    @eqx.filter_jit
    def chunk(keys):
        def one(k):
            return _sample_kernels(make_model(k), x1, x2, with_ntk)

        nngp, ntk = jax.vmap(one)(keys)
        return nngp.sum(0), None if ntk is None else ntk.sum(0)

    nngp_total, ntk_total = 0.0, 0.0
    for keys in jr.split(key, n_samples).reshape(n_samples // batch, batch):
        nngp, ntk = chunk(keys)
        nngp_total = nngp_total + nngp
        if ntk is not None:
            ntk_total = ntk_total + ntk
    nngp_mean = nngp_total / n_samples
    return nngp_mean, (ntk_total / n_samples if with_ntk else None)


def relative_error(estimate: jax.Array, exact: jax.Array) -> float:
    """Frobenius-norm relative error `||estimate - exact|| / ||exact||`."""
    return float(jnp.linalg.norm(estimate - exact) / jnp.linalg.norm(exact))


def assert_kernel_ignores_masked_values(kernel_fn: Any, x: jax.Array, mask: jax.Array, key) -> None:
    """Large noise at the masked positions of `x` (N, C, *spatial) leaves the kernel of `x`
    against its first two examples unchanged."""
    noise = jnp.where(mask[:, None], 100 * jr.normal(key, x.shape), 0.0)
    a = kernel_fn(x, x[:2], mask1=mask, mask2=mask[:2])
    b = kernel_fn(x + noise, x[:2], mask1=mask, mask2=mask[:2])
    np.testing.assert_allclose(a.nngp, b.nngp, rtol=1e-12)
    np.testing.assert_allclose(a.ntk, b.ntk, rtol=1e-12)
