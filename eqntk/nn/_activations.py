"""Elementwise nonlinearities with closed-form kernels: the ReLU family, `Erf`, `Gelu`, `Sign`."""

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
    do_stabilize: bool = eqx.field(static=True)

    def __init__(self, a: ArrayLike, b: ArrayLike, do_stabilize: bool = False):
        """**Arguments:**

        - `a`: the slope for negative inputs.
        - `b`: the slope for positive inputs.
        - `do_stabilize`: for very deep networks: the kernel rule divides the covariances by
          their largest entry before the map and multiplies the result back, which keeps the
          intermediate products in floating-point range. The map is positively homogeneous,
          so the result is the same up to rounding (the finite network is unaffected).
          eqntk's maps never multiply two variances together (they scale by reciprocal
          square roots of each), so deep float32 networks stay accurate without it as long
          as the kernel itself is representable (variances up to about 1e38); past that
          range no rescaling of one layer helps and the kernel overflows to `inf`.

        **Example:**

        ```python
        import jax.numpy as jnp
        from eqntk import nn

        assert nn.ABRelu(-0.5, 2.0)(jnp.array([-2.0, 3.0])).tolist() == [1.0, 6.0]
        ```
        """
        self.a = hyperparameter("a", a)
        self.b = hyperparameter("b", b)
        self.do_stabilize = do_stabilize

    def __call__(
        self, x: Float[Array, "*shape"], *, key: PRNGKeyArray | None = None
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

    do_stabilize: bool = eqx.field(static=True)

    def __init__(self, do_stabilize: bool = False):
        """**Arguments:**

        - `do_stabilize`: see [`eqntk.nn.ABRelu`][]; for very deep networks.
        """
        self.do_stabilize = do_stabilize

    def __call__(
        self, x: Float[Array, "*shape"], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, "*shape"]:
        """Apply the nonlinearity elementwise to one example `x` of any shape."""
        return jax.nn.relu(x)


class LeakyRelu(eqx.Module):
    """The leaky rectifier: $x$ for $x > 0$, otherwise $\\alpha x$ (see [`eqntk.nn.ABRelu`][]
    with $a=\\alpha, b=1$)."""

    alpha: Float[Array, ""]
    do_stabilize: bool = eqx.field(static=True)

    def __init__(self, alpha: ArrayLike = 0.01, do_stabilize: bool = False):
        """**Arguments:**

        - `alpha`: the slope for negative inputs.
        - `do_stabilize`: see [`eqntk.nn.ABRelu`][]; for very deep networks.

        **Example:**

        ```python
        import jax.numpy as jnp
        from eqntk import nn

        assert nn.LeakyRelu(0.5)(jnp.array([-2.0, 2.0])).tolist() == [-1.0, 2.0]
        ```
        """
        self.alpha = hyperparameter("alpha", alpha)
        self.do_stabilize = do_stabilize

    def __call__(
        self, x: Float[Array, "*shape"], *, key: PRNGKeyArray | None = None
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

    do_stabilize: bool = eqx.field(static=True)

    def __init__(self, do_stabilize: bool = False):
        """**Arguments:**

        - `do_stabilize`: see [`eqntk.nn.ABRelu`][]; for very deep networks.
        """
        self.do_stabilize = do_stabilize

    def __call__(
        self, x: Float[Array, "*shape"], *, key: PRNGKeyArray | None = None
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

    def __call__(
        self, x: Float[Array, "*shape"], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, "*shape"]:
        """Apply the nonlinearity elementwise to one example `x` of any shape."""
        return frozen(self.a) * jax.scipy.special.erf(frozen(self.b) * x) + frozen(self.c)


# The constant of `SigmoidLike`, chosen (by neural-tangents) to minimise the squared distance
# between the function and the logistic sigmoid on [-5, 5].
SIGMOID_LIKE_SCALE = 2.4020563531719796


class SigmoidLike(eqx.Module):
    """A sigmoid made of the error function, $\\phi(x) = \\mathrm{erf}(x / 2.40206)/2 + 1/2$.

    Its kernel is that of [`eqntk.nn.Erf`][] with $a = 1/2$, $b = 1/2.4020563531719796$,
    $c = 1/2$ (neural-tangents' `Sigmoid_like`).

    **Example:**

    ```python
    import jax.numpy as jnp
    from eqntk import nn

    assert nn.SigmoidLike()(jnp.zeros(2)).tolist() == [0.5, 0.5]
    ```
    """

    def __call__(
        self, x: Float[Array, "*shape"], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, "*shape"]:
        """Apply the nonlinearity elementwise to one example `x` of any shape."""
        return 0.5 * jax.scipy.special.erf(x / SIGMOID_LIKE_SCALE) + 0.5


class Gelu(eqx.Module):
    """The Gaussian error linear unit $\\phi(x) = x\\,\\Phi(x)$, $\\Phi$ the standard normal CDF.

    Kernel rule (Tsuchida et al. 2020), writing $q_{ij} = \\mathcal{K}_{ij}$,
    $P = (1+q_{11})(1+q_{22})$, $\\Delta = \\sqrt{P - q_{12}^2}$ and
    $\\alpha = \\arcsin(q_{12}/\\sqrt{P})$:
    $\\mathcal{K}' = \\frac{q_{12}}{4} + \\frac{1}{2\\pi}\\left(q_{12}\\alpha +
    \\frac{q_{12}^2 + q_{11}q_{22}\\Delta^2}{P\\Delta}\\right)$ and
    $\\Theta' = \\Theta\\left(\\frac14 + \\frac{\\alpha}{2\\pi} + \\frac{q_{12}}{2\\pi\\Delta}
    \\left(\\frac{1}{\\Delta^2} + \\frac{1 - q_{11}q_{22}}{P} + 1\\right)\\right)$.
    $\\Delta^2 \\geq 1 + q_{11} + q_{22}$, so the map is smooth everywhere.
    """

    approximate: bool = eqx.field(static=True)

    def __init__(self, approximate: bool = False):
        """**Arguments:**

        - `approximate`: whether the finite network uses the $\\tanh$ approximation of GELU
          (`jax.nn.gelu(x, approximate=True)`). The kernel is always that of the exact GELU
          (as in neural-tangents), so with `approximate=True` the finite network and its
          limit differ slightly (the two functions differ by at most about $10^{-3}$).

        **Example:**

        ```python
        import jax.numpy as jnp
        from eqntk import nn

        assert nn.Gelu()(jnp.array([0.0])).tolist() == [0.0]
        ```
        """
        self.approximate = approximate

    def __call__(
        self, x: Float[Array, "*shape"], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, "*shape"]:
        """Apply the nonlinearity elementwise to one example `x` of any shape."""
        return jax.nn.gelu(x, approximate=self.approximate)


class Sign(eqx.Module):
    """The sign function $\\phi(x) = \\mathrm{sign}(x)$.

    Kernel rule, with $\\rho = \\mathcal{K}_{12}/\\sqrt{\\mathcal{K}_{11}\\mathcal{K}_{22}}$:
    $\\mathcal{K}' = \\frac{2}{\\pi}\\arcsin\\rho$ (0 where a variance is 0). The derivative is 0
    almost everywhere, so $\\Theta' = 0$: the layers below a `Sign` do not train.

    **Example:**

    ```python
    import jax.numpy as jnp
    from eqntk import nn

    assert nn.Sign()(jnp.array([-2.0, 0.0, 3.0])).tolist() == [-1.0, 0.0, 1.0]
    ```
    """

    def __call__(
        self, x: Float[Array, "*shape"], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, "*shape"]:
        """Apply the nonlinearity elementwise to one example `x` of any shape."""
        return jnp.sign(x)


def _abrelu(x: Array, a: ArrayLike, b: ArrayLike) -> Array:
    return jnp.asarray(a * jnp.minimum(x, 0) + b * jnp.maximum(x, 0))
