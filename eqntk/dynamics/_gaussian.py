"""`Gaussian`: the mean and covariance that the inference functions return."""

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float, PRNGKeyArray


class Gaussian(eqx.Module):
    """A Gaussian distribution over the outputs of a network on a set of inputs.

    The covariance is shared by the outputs' trace axes (the kernels act as
    $k \\otimes I_K$): for outputs of shape `(M, K)` the `K` columns are independent, each with
    covariance `cov` of shape `(M, M)`. Leading axes (e.g. times) are batch axes of both.

    **Fields:**

    - `mean`: the mean, shape `(*lead, M, K)` (in general the outputs' shape).
    - `cov`: the covariance over the inputs, `(*lead, M, M)` (in general the non-trace axes,
      interleaved), or `None` when it was not asked for.
    """

    mean: Float[Array, "..."]
    cov: Float[Array, "..."] | None = None

    def sample(self, key: PRNGKeyArray, shape: tuple[int, ...] = ()) -> Float[Array, "..."]:
        """Draw samples of the outputs.

        A sample is $\\mu + V \\sqrt{\\max(\\Lambda, 0)}\\, z$ with $z \\sim N(0, I)$, where
        $V \\Lambda V^\\top$ is the eigendecomposition of the (symmetrised) covariance. Unlike a
        Cholesky factor this also works for the singular covariances that are common here
        (e.g. exactly zero at the training points); eigenvalues below zero are rounding errors
        and are clipped.

        **Arguments:**

        - `key`: a JAX PRNG key.
        - `shape`: the batch shape of the samples.

        **Returns:**

        An array of shape `(*shape, *lead, M, K)`.

        **Example:**

        ```python
        import jax.numpy as jnp
        import jax.random as jr
        from eqntk.dynamics import Gaussian

        g = Gaussian(mean=jnp.zeros((3, 2)), cov=jnp.eye(3))
        assert g.sample(jr.key(0), (5,)).shape == (5, 3, 2)
        ```
        """
        if self.cov is None:
            raise ValueError("`sample` needs the covariance; predict with it (`compute_cov`).")
        lead = self.cov.shape[:-2]
        if (
            self.mean.ndim != len(lead) + 2
            or self.cov.shape[-1] != self.cov.shape[-2]
            or self.mean.shape[:-1] != self.cov.shape[:-1]
        ):
            raise ValueError(
                "`sample` supports means of shape (*lead, M, K) with covariances (*lead, M, M); "
                f"got mean {self.mean.shape} and cov {self.cov.shape}."
            )
        cov = 0.5 * (self.cov + jnp.swapaxes(self.cov, -1, -2))
        evals, evecs = jnp.linalg.eigh(cov)
        root = evecs * jnp.sqrt(jnp.maximum(evals, 0))[..., None, :]
        z = jr.normal(key, shape + self.mean.shape, self.mean.dtype)
        root = jnp.broadcast_to(root, shape + root.shape)
        return jnp.broadcast_to(self.mean, z.shape) + root @ z
