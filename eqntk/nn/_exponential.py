"""Exponential nonlinearities with closed-form kernels: `Exp`, `Gaussian`, `ExpNormalized`."""

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

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
