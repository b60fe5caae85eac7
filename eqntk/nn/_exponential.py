"""Exponential nonlinearities with closed-form kernels: `Exp`, `Gaussian`, `ExpNormalized`."""

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from ..limits._elementwise import AbstractElementwiseRule, map_entries, require_gaussian
from ..limits._kernel import Kernel
from ..limits._math import correlation
from ..limits._registry import Requirements, register
from ._elementwise import kernel_only
from ._hyperparameters import frozen, hyperparameter


class Exp(eqx.Module):
    """The exponential $\\phi(x) = a\\,e^{b x}$.

    Kernel rule (the log-normal moments), with $S = \\mathcal{K}_{11} + \\mathcal{K}_{22}$:
    $\\mathcal{K}' = a^2 \\exp\\left(b^2 (S/2 + \\mathcal{K}_{12})\\right)$ and
    $\\Theta' = b^2 \\mathcal{K}'\\, \\Theta$.
    """

    a: Float[Array, ""]
    b: Float[Array, ""]

    def __init__(self, a: ArrayLike = 1.0, b: ArrayLike = 1.0):
        """**Arguments:**

        - `a`: the output scale.
        - `b`: the input scale.

        **Example:**

        ```python
        import jax.numpy as jnp
        from eqntk import nn

        assert nn.Exp(a=2.0)(jnp.zeros(2)).tolist() == [2.0, 2.0]
        ```
        """
        self.a = hyperparameter("a", a)
        self.b = hyperparameter("b", b)

    def __call__(
        self, x: Float[Array, "*shape"], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, "*shape"]:
        """Apply the nonlinearity elementwise to one example `x` of any shape."""
        return frozen(self.a) * jnp.exp(frozen(self.b) * x)


class Gaussian(eqx.Module):
    """The Gaussian bump $\\phi(x) = a\\,e^{b x^2}$.

    Kernel rule (a Gaussian integral), with $q_{ij} = \\mathcal{K}_{ij}$ and
    $\\Delta = \\sqrt{(1 - 2b q_{11})(1 - 2b q_{22}) - 4b^2 q_{12}^2}$:
    $\\mathcal{K}' = a^2/\\Delta$ and $\\Theta' = \\Theta\\, 4a^2b^2\\mathcal{K}_{12}/\\Delta^3$.
    For $b \\leq 0$ it is finite everywhere; for $b > 0$ only where $4b\\mathcal{K}_{ii} < 1$
    (otherwise $E[\\phi(u)^2]$ is infinite).
    """

    a: Float[Array, ""]
    b: Float[Array, ""]

    def __init__(self, a: ArrayLike = 1.0, b: ArrayLike = -1.0):
        """**Arguments:**

        - `a`: the output scale.
        - `b`: the coefficient of $x^2$ in the exponent (negative for a bump).

        **Example:**

        ```python
        import jax.numpy as jnp
        from eqntk import nn

        assert nn.Gaussian(a=3.0)(jnp.zeros(2)).tolist() == [3.0, 3.0]
        ```
        """
        self.a = hyperparameter("a", a)
        self.b = hyperparameter("b", b)

    def __call__(
        self, x: Float[Array, "*shape"], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, "*shape"]:
        """Apply the nonlinearity elementwise to one example `x` of any shape."""
        return frozen(self.a) * jnp.exp(frozen(self.b) * x**2)


class ExpNormalized(eqx.Module):
    """The normalised exponential kernel of Shankar et al. 2020 ("Neural kernels without
    tangents"), a kernel with no finite network: calling the layer raises an error.

    Kernel rule, with $n = \\sqrt{\\mathcal{K}_{11}\\mathcal{K}_{22}}$ and the correlation
    $\\rho = \\mathcal{K}_{12}/n$ (clipped to $[-1, 1]$ when `do_clip`; 0 where $n = 0$):
    $\\mathcal{K}' = n\\, e^{\\gamma(\\rho + s)}$ and
    $\\Theta' = \\gamma\\, e^{\\gamma(\\rho + s)}\\,\\Theta$, with $s$ the `shift`.
    """

    gamma: Float[Array, ""]
    shift: Float[Array, ""]
    do_clip: bool = eqx.field(static=True)

    def __init__(self, gamma: ArrayLike = 1.0, shift: ArrayLike = -1.0, do_clip: bool = False):
        """**Arguments:**

        - `gamma`: the scale of the correlation in the exponent.
        - `shift`: added to the correlation before the exponential.
        - `do_clip`: whether to clip the correlation to $[-1, 1]$ (it can leave that range by
          rounding).

        **Example:**

        ```python
        import jax.numpy as jnp
        import jax.random as jr
        import eqntk
        from eqntk import nn

        x = jnp.array([[1.0, 0.0], [0.6, 0.8]])
        model = nn.Sequential([nn.Dense(2, 1, key=jr.key(0)), nn.ExpNormalized()])
        k = eqntk.limit(model)(x)
        assert abs(k.nngp[0, 0] - 0.5) < 1e-6
        ```
        """
        self.gamma = hyperparameter("gamma", gamma)
        self.shift = hyperparameter("shift", shift)
        self.do_clip = do_clip

    def __call__(
        self, x: Float[Array, "*shape"], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, "*shape"]:
        """Raise an error: this layer only has a kernel, no finite forward pass."""
        return kernel_only(self, x)


# Kernel rules -------------------------------------------------------------------------------------
# Kernel rules of the exponential nonlinearities: `Exp`, `Gaussian`, `ExpNormalized`.


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
