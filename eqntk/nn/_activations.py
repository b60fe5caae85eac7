"""Elementwise nonlinearities with closed-form kernels: the ReLU family and `Erf`."""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from ._hyperparameters import frozen, hyperparameter


class ABRelu(eqx.Module):
    """The two-slope ReLU $\\phi(x) = a \\min(x, 0) + b \\max(x, 0)$.

    Special cases: `Relu` ($a=0, b=1$), `LeakyRelu` ($a=\\alpha, b=1$), `Abs` ($a=-1, b=1$),
    the identity ($a=b=1$).

    Kernel rule, with $\\rho = \\mathcal{K}_{12}/\\sqrt{\\mathcal{K}_{11}\\mathcal{K}_{22}}$ and
    $\\theta = \\arccos\\rho$ (the arc-cosine kernels of Cho & Saul 2009):
    $\\mathcal{K}' = \\frac{(a-b)^2}{2\\pi}\\sqrt{\\mathcal{K}_{11}\\mathcal{K}_{22}}
    (\\sin\\theta + (\\pi-\\theta)\\cos\\theta) + ab\\,\\mathcal{K}_{12}$ and
    $\\Theta' = \\Theta \\left(\\frac{(a-b)^2}{2\\pi}(\\pi - \\theta) + ab\\right)$.
    """

    a: Float[Array, ""]
    b: Float[Array, ""]

    def __init__(self, a: ArrayLike, b: ArrayLike):
        """**Arguments:**

        - `a`: the slope for negative inputs.
        - `b`: the slope for positive inputs.

        **Example:**

        ```python
        import jax.numpy as jnp
        from eqntk import nn

        assert nn.ABRelu(-0.5, 2.0)(jnp.array([-2.0, 3.0])).tolist() == [1.0, 6.0]
        ```
        """
        self.a = hyperparameter("a", a)
        self.b = hyperparameter("b", b)

    def __call__(self, x: Float[Array, "*shape"], *, key: PRNGKeyArray | None = None
                 ) -> Float[Array, "*shape"]:
        """Apply the nonlinearity elementwise to one example `x` of any shape."""
        return _abrelu(x, frozen(self.a), frozen(self.b))


class Relu(eqx.Module):
    """The rectifier $\\phi(x) = \\max(x, 0)$; its kernel is the arc-cosine kernel (see
    [`eqntk.nn.ABRelu`][] with $a=0, b=1$).

    **Example:**

    ```python
    import jax.numpy as jnp
    from eqntk import nn

    assert nn.Relu()(jnp.array([-1.0, 2.0])).tolist() == [0.0, 2.0]
    ```
    """

    def __call__(self, x: Float[Array, "*shape"], *, key: PRNGKeyArray | None = None
                 ) -> Float[Array, "*shape"]:
        """Apply the nonlinearity elementwise to one example `x` of any shape."""
        return jax.nn.relu(x)


class LeakyRelu(eqx.Module):
    """The leaky rectifier: $x$ for $x > 0$, otherwise $\\alpha x$ (see [`eqntk.nn.ABRelu`][]
    with $a=\\alpha, b=1$)."""

    alpha: Float[Array, ""]

    def __init__(self, alpha: ArrayLike = 0.01):
        """**Arguments:**

        - `alpha`: the slope for negative inputs.

        **Example:**

        ```python
        import jax.numpy as jnp
        from eqntk import nn

        assert nn.LeakyRelu(0.5)(jnp.array([-2.0, 2.0])).tolist() == [-1.0, 2.0]
        ```
        """
        self.alpha = hyperparameter("alpha", alpha)

    def __call__(self, x: Float[Array, "*shape"], *, key: PRNGKeyArray | None = None
                 ) -> Float[Array, "*shape"]:
        """Apply the nonlinearity elementwise to one example `x` of any shape."""
        return _abrelu(x, frozen(self.alpha), 1.0)


class Abs(eqx.Module):
    """The absolute value $\\phi(x) = |x|$ (see [`eqntk.nn.ABRelu`][] with $a=-1, b=1$).

    **Example:**

    ```python
    import jax.numpy as jnp
    from eqntk import nn

    assert nn.Abs()(jnp.array([-1.5, 2.0])).tolist() == [1.5, 2.0]
    ```
    """

    def __call__(self, x: Float[Array, "*shape"], *, key: PRNGKeyArray | None = None
                 ) -> Float[Array, "*shape"]:
        """Apply the nonlinearity elementwise to one example `x` of any shape."""
        return jnp.abs(x)


class Erf(eqx.Module):
    """The scaled error function $\\phi(x) = a\\,\\mathrm{erf}(b x) + c$.

    Kernel rule (Williams 1997): with $\\tilde q_{ij} = 2 b^2 \\mathcal{K}_{ij}$,
    $\\mathcal{K}' = \\frac{2a^2}{\\pi}\\arcsin\\frac{\\tilde q_{12}}
    {\\sqrt{(1+\\tilde q_{11})(1+\\tilde q_{22})}} + c^2$ and
    $\\Theta' = \\Theta\\,\\frac{4a^2b^2}{\\pi}
    \\left((1+\\tilde q_{11})(1+\\tilde q_{22}) - \\tilde q_{12}^2\\right)^{-1/2}$.
    """

    a: Float[Array, ""]
    b: Float[Array, ""]
    c: Float[Array, ""]

    def __init__(self, a: ArrayLike = 1.0, b: ArrayLike = 1.0, c: ArrayLike = 0.0):
        """**Arguments:**

        - `a`: the output scale.
        - `b`: the input scale.
        - `c`: the output shift.

        **Example:**

        ```python
        import jax.numpy as jnp
        from eqntk import nn

        assert nn.Erf(a=2.0, c=1.0)(jnp.zeros(3)).tolist() == [1.0, 1.0, 1.0]
        ```
        """
        self.a = hyperparameter("a", a)
        self.b = hyperparameter("b", b)
        self.c = hyperparameter("c", c)

    def __call__(self, x: Float[Array, "*shape"], *, key: PRNGKeyArray | None = None
                 ) -> Float[Array, "*shape"]:
        """Apply the nonlinearity elementwise to one example `x` of any shape."""
        return frozen(self.a) * jax.scipy.special.erf(frozen(self.b) * x) + frozen(self.c)


def _abrelu(x: Array, a: ArrayLike, b: ArrayLike) -> Array:
    return a * jnp.minimum(x, 0) + b * jnp.maximum(x, 0)
