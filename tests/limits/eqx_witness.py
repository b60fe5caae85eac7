"""Monte Carlo witnesses for the limits of Equinox modules: the NTK with each layer's learning
rate divided by its fan-in (the normalisation of `eqntk.limits._equinox_layers`)."""

import math
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu

import eqntk
from tests.helpers import mc_kernels


_AFFINE = (eqx.nn.Linear, eqx.nn.Conv, eqx.nn.ConvTranspose)


def _fan_in(layer: Any) -> int:
    if isinstance(layer, eqx.nn.Linear):
        return 1 if layer.in_features == "scalar" else layer.in_features
    return (layer.in_channels // layer.groups) * math.prod(layer.kernel_size)


def _factors(model: Any) -> Any:
    """The model's tree with each array replaced by its learning-rate factor (0: frozen)."""

    def factor(node):
        if isinstance(node, _AFFINE):
            f = 1.0 / _fan_in(node)
            return jtu.tree_map(lambda a: f if eqx.is_inexact_array(a) else a, node)
        if isinstance(node, eqx.nn.PReLU):
            return jtu.tree_map(lambda a: 0.0 if eqx.is_inexact_array(a) else a, node)
        return 1.0 if eqx.is_inexact_array(node) else node

    return jtu.tree_map(factor, model, is_leaf=lambda m: isinstance(m, (*_AFFINE, eqx.nn.PReLU)))


class LrScaled(eqx.Module):
    """`model` reparameterised so that its plain empirical NTK is the fan-in-normalised one:
    each parameter `a` with factor `r` is stored as `a / sqrt(r)` and used as `sqrt(r) * a`
    (a frozen parameter, `r = 0`, passes through `stop_gradient`)."""

    model: Any
    factors: tuple[float, ...] = eqx.field(static=True)

    def __init__(self, model: Any):
        leaves, treedef = jtu.tree_flatten(model)
        factor_leaves = treedef.flatten_up_to(_factors(model))
        factors = []
        new = []
        for a, r in zip(leaves, factor_leaves):
            if eqx.is_inexact_array(a):
                r = float(r)
                factors.append(r)
                new.append(a / math.sqrt(r) if r > 0 else a)
            else:
                factors.append(-1.0)
                new.append(a)
        self.model = jtu.tree_unflatten(treedef, new)
        self.factors = tuple(factors)

    def __call__(self, x, *, key=None):
        leaves, treedef = jtu.tree_flatten(self.model)
        used = []
        for a, r in zip(leaves, self.factors):
            if r > 0:
                a = a * math.sqrt(r)
            elif r == 0:
                a = jax.lax.stop_gradient(a)
            used.append(a)
        return jtu.tree_unflatten(treedef, used)(x)


def mc_tolerance(scale: jax.Array, n_samples: int, n_draws: int, width: int) -> jax.Array:
    """Entrywise tolerance: 5 standard deviations of a mean of `n_draws` products (each with
    standard deviation at most `sqrt(2) scale`) plus the O(1/sqrt(width)) fluctuation of the
    shared hidden layers averaged over `n_samples` networks, plus an O(1/width) bias."""
    sampling = math.sqrt(2 / n_draws) + math.sqrt(2 / (width * n_samples))
    return (5 * sampling + 4 / width) * scale


def check_against_monte_carlo(
    make, x1, x2, key, n_samples: int, width: int, with_ntk: bool = True, kernel_fn=None
) -> None:
    """Assert that `eqntk.limit` of `make(key)` agrees with the Monte Carlo NNGP and NTK."""
    model = make(jr.key(0))
    kernel_fn = eqntk.limit(model) if kernel_fn is None else kernel_fn
    k = kernel_fn(x1, x2)
    nngp_mc, ntk_mc = mc_kernels(
        lambda kk: LrScaled(make(kk)), key, x1, x2, n_samples=n_samples, with_ntk=with_ntk
    )
    out = jax.eval_shape(jax.vmap(model), x1)
    d_out = out.shape[1] if out.ndim > 1 else 1
    n_draws = n_samples * d_out
    scale = jnp.sqrt(jnp.max(jnp.abs(k.cov1)) * jnp.max(jnp.abs(k.cov2_or_cov1)))
    err = jnp.max(jnp.abs(nngp_mc - k.nngp))
    tol = mc_tolerance(scale, n_samples, n_draws, width)
    assert err < tol, ("nngp", float(err), float(tol))
    if with_ntk:
        ntk_scale = jnp.max(jnp.abs(k.ntk))
        err = jnp.max(jnp.abs(ntk_mc - k.ntk))
        tol = mc_tolerance(ntk_scale, n_samples, n_draws, width)
        assert err < tol, ("ntk", float(err), float(tol))
