"""Kernel rules of the exponential nonlinearities: `Exp`, `Gaussian`, `ExpNormalized`."""

import equinox as eqx
import jax.numpy as jnp

from ..nn import Exp, ExpNormalized, Gaussian
from ._elementwise import AbstractElementwiseRule, map_entries, require_gaussian
from ._kernel import Kernel
from ._math import correlation
from ._registry import Requirements, register


@register(Exp)
class ExpRule(AbstractElementwiseRule[Exp]):
    """Kernel rule of [`eqntk.nn.Exp`][]."""

    def __call__(self, layer: Exp, k: Kernel, wanted: Requirements) -> Kernel:
        require_gaussian(k, layer)
        a2, b2 = k.cast(layer.a) ** 2, k.cast(layer.b) ** 2

        def fn(q11, q12, q22, ntk):
            nngp = a2 * jnp.exp(b2 * ((q11 + q22) / 2 + q12))
            return nngp, None if ntk is None else ntk * (b2 * nngp)

        return map_entries(k, fn)


@register(Gaussian)
class GaussianRule(AbstractElementwiseRule[Gaussian]):
    """Kernel rule of [`eqntk.nn.Gaussian`][]."""

    def __call__(self, layer: Gaussian, k: Kernel, wanted: Requirements) -> Kernel:
        require_gaussian(k, layer)
        a2, b = k.cast(layer.a) ** 2, k.cast(layer.b)

        def fn(q11, q12, q22, ntk):
            # NaN where 4 b q > 1 for b > 0: E[phi(u)^2] is infinite there.
            inverse = 1 / jnp.sqrt((1 - 2 * b * q11) * (1 - 2 * b * q22) - 4 * b**2 * q12**2)
            nngp = a2 * inverse
            return nngp, None if ntk is None else ntk * (4 * b**2 * q12 * nngp * inverse**2)

        out = map_entries(k, fn)
        variances = [k.cov1] if k.cov2 is None else [k.cov1, k.cov2]
        largest = jnp.max(jnp.stack([jnp.max(v) for v in variances]))
        diverges = (b > 0) & (4 * b * largest >= 1)
        nngp = eqx.error_if(
            out.nngp,
            diverges,
            "nn.Gaussian(b > 0): its kernel is infinite where 4 * b * (input variance) >= 1 "
            "(E[phi(u)^2] diverges); lower `b` or the variance of the layer's input.",
        )
        return out.replace(nngp=nngp)


@register(ExpNormalized)
class ExpNormalizedRule(AbstractElementwiseRule[ExpNormalized]):
    """Kernel rule of [`eqntk.nn.ExpNormalized`][]."""

    def __call__(self, layer: ExpNormalized, k: Kernel, wanted: Requirements) -> Kernel:
        require_gaussian(k, layer)
        gamma, shift = k.cast(layer.gamma), k.cast(layer.shift)

        def fn(q11, q12, q22, ntk):
            norm, rho = correlation(q11, q12, q22, clip=layer.do_clip)
            factor = jnp.exp(gamma * (rho + shift))
            return norm * factor, None if ntk is None else ntk * (gamma * factor)

        return map_entries(k, fn)
