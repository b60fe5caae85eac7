"""Kernel rules of `LayerNorm` and `Dropout` (also `equinox.nn.Dropout`)."""

import equinox as eqx
import jax
import jax.core
import jax.numpy as jnp
from jaxtyping import Array

from ..nn import Dropout, LayerNorm
from ..nn._hyperparameters import hyperparameter
from ._elementwise import require_gaussian
from ._kernel import Kernel
from ._registry import AbstractRule, Requirements, register
from ._spatial import cross_variances, self_variances, variances


@register(LayerNorm)
class LayerNormRule(AbstractRule[LayerNorm]):
    """Kernel rule of [`eqntk.nn.LayerNorm`][]: each covariance divided by the square roots of
    the two examples' variances, averaged over the normalised positions (plus `eps`).

    Only the variances of single positions are used, so the rule works in both spatial
    layouts.
    """

    def requirements(self, layer: LayerNorm, wanted: Requirements) -> Requirements:
        return wanted

    def __call__(self, layer: LayerNorm, k: Kernel, wanted: Requirements) -> Kernel:
        require_gaussian(k, layer)
        mean_axes = tuple(1 + a for a in layer.spatial_axes(k.spatial_ndim))
        eps = k.cast(layer.eps)

        def normaliser(cov):
            var = variances(cov, k) + eps
            return jnp.mean(var, axis=mean_axes, keepdims=True) if mean_axes else var

        v1 = normaliser(k.cov1)
        v2 = normaliser(k.cov2_or_cov1)
        q11, q22 = cross_variances(v1, v2, k.diagonal_spatial)
        norm12 = jnp.sqrt(q11 * q22)
        c11, c22 = self_variances(v1, k.diagonal_spatial)
        cov2 = None
        if k.cov2 is not None:
            d11, d22 = self_variances(v2, k.diagonal_spatial)
            cov2 = k.cov2 / jnp.sqrt(d11 * d22)
        return k.replace(
            nngp=k.nngp / norm12,
            ntk=None if k.ntk is None else k.ntk / norm12,
            cov1=k.cov1 / jnp.sqrt(c11 * c22),
            cov2=cov2,
        )


def dropout_kernel(k: Kernel, keep_rate: Array | float, name: str = "keep_rate") -> Kernel:
    """The kernel after dropout in training mode, as neural-tangents defines it.

    Masks of different examples are independent, so only the entries that pair a unit with
    itself are scaled, by $1/\\text{keep\\_rate}$: `cov1`/`cov2` on their spatial diagonal, and
    `nngp`/`ntk` on the batch and spatial diagonal when `x2` is `None`. `keep_rate` must be in
    `(0, 1]` (checked at trace time when concrete, else with `eqx.error_if`; `name` is what the
    error calls it).
    """
    rate = k.cast(keep_rate)
    message = (
        f"Dropout in training mode needs `{name}` (the probability of keeping a unit) in (0, 1]"
    )
    if isinstance(rate, jax.core.Tracer):
        rate = eqx.error_if(rate, ~((rate > 0) & (rate <= 1)), message + "; got a value outside.")
    elif not 0 < rate <= 1:
        raise ValueError(f"{message}, got {float(rate)}.")
    factor = 1 / rate
    nngp, ntk = k.nngp, k.ntk
    if k.x1_is_x2:
        nngp = _scale_diagonal(nngp, factor, k, n_lead=2)
        ntk = None if ntk is None else _scale_diagonal(ntk, factor, k, n_lead=2)
    cov1 = _scale_diagonal(k.cov1, factor, k, n_lead=1)
    cov2 = None if k.cov2 is None else _scale_diagonal(k.cov2, factor, k, n_lead=1)
    return k.replace(nngp=nngp, ntk=ntk, cov1=cov1, cov2=cov2, is_gaussian=False)


def _scale_diagonal(a: Array, factor: Array, k: Kernel, n_lead: int) -> Array:
    """Multiply by `factor` the entries of `a` that pair a unit with itself.

    With two leading (batch) axes those are the entries of the same example; in the full
    spatial layout, also of the same position (`i == i'` for every spatial pair).
    """
    pairs = [(0, 1)] if n_lead == 2 else []
    if not k.diagonal_spatial:
        pairs += [(n_lead + 2 * d, n_lead + 2 * d + 1) for d in range(k.spatial_ndim)]
    same = jnp.ones((1,) * a.ndim, bool)
    for p, q in pairs:
        shape = [1] * a.ndim
        shape[p] = shape[q] = a.shape[p]
        same = same & jnp.eye(a.shape[p], dtype=bool).reshape(shape)
    return jnp.where(same, a * factor, a)


@register(Dropout)
class DropoutRule(AbstractRule[Dropout]):
    """Kernel rule of [`eqntk.nn.Dropout`][]: [`dropout_kernel`] in training mode, the identity
    with `inference=True`."""

    def requirements(self, layer: Dropout, wanted: Requirements) -> Requirements:
        return wanted

    def __call__(self, layer: Dropout, k: Kernel, wanted: Requirements) -> Kernel:
        return k if layer.inference else dropout_kernel(k, layer.keep_rate)


@register(eqx.nn.Dropout)
class EquinoxDropoutRule(AbstractRule[eqx.nn.Dropout]):
    """Kernel rule of `equinox.nn.Dropout`, whose `p` is the probability of dropping a unit:
    the rule of [`eqntk.nn.Dropout`][] with `keep_rate = 1 - p`."""

    def requirements(self, layer: eqx.nn.Dropout, wanted: Requirements) -> Requirements:
        return wanted

    def __call__(self, layer: eqx.nn.Dropout, k: Kernel, wanted: Requirements) -> Kernel:
        p = layer.p
        if not isinstance(p, jax.core.Tracer):
            # Static checks first: `p=1` drops every unit (no limit), `p` outside [0, 1) is not a
            # probability; both would otherwise give infinite or negative variances.
            p = hyperparameter("p", p)
            if not 0 <= p <= 1:
                raise ValueError(
                    f"`equinox.nn.Dropout` needs its drop probability `p` in [0, 1], "
                    f"got {float(p)}."
                )
            if p == 1 and not layer.inference:
                raise ValueError(
                    "`equinox.nn.Dropout(p=1.0)` in training mode drops every unit: the rescaling "
                    "1/(1 - p) has no infinite-width limit. Use `p` in [0, 1), or "
                    "`inference=True` to turn dropout off."
                )
        if layer.inference:
            return k
        return dropout_kernel(k, 1 - jnp.asarray(p), name="1 - p")
