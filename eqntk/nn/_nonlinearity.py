"""The base of the layers that apply a scalar nonlinearity to each entry of an example."""

import abc

import equinox as eqx
from jaxtyping import Array, Float, PRNGKeyArray


class AbstractNonlinearity(eqx.Module):
    """A scalar nonlinearity $\\phi$ applied to every entry of one example of any shape
    (positions and channels alike). Its kernel rule is an elementwise one: each output
    covariance entry depends only on the matching input entries."""

    @abc.abstractmethod
    def phi(self, x: Array) -> Array:
        """The nonlinearity $\\phi$, on an array of any shape."""

    def __call__(
        self, x: Float[Array, "*shape"], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, "*shape"]:
        """Apply the nonlinearity elementwise to one example `x` of any shape.

        **Arguments:**

        - `x`: one example.
        - `key`: unused (accepted for a uniform layer interface).

        **Returns:**

        $\\phi(x)$, of the shape of `x`.
        """
        return self.phi(x)
