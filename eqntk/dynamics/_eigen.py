"""Functions of a regularised kernel matrix, through one eigendecomposition."""

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float


class Eigen(eqx.Module):
    """$A = V \\Lambda V^\\top$ for a regularised kernel $A = k + \\lambda I$.

    Every closed-form MSE quantity is $V g(\\Lambda) V^\\top$ applied to a matrix, for some
    function $g$ of the eigenvalues and the time; the decomposition is computed once and serves
    every time and right-hand side. As in neural-tangents, eigenvalues below zero (rounding
    errors of a positive semi-definite kernel) are clipped to zero, and directions with a zero
    eigenvalue do not move.
    """

    evals: Float[Array, " p"]
    evecs: Float[Array, "p p"]

    def __init__(self, name: str, a: Float[Array, "p p"]):
        evals, evecs = jnp.linalg.eigh(a)
        # A clearly negative eigenvalue means a kernel that is not positive semi-definite;
        # rounding alone stays within a few ulps of the largest eigenvalue per dimension.
        tol = 100 * a.shape[0] * jnp.finfo(a.dtype).eps * jnp.max(jnp.abs(evals))
        self.evals = eqx.error_if(
            evals,
            ~jnp.all(jnp.isfinite(evals)) | (evals[0] < -tol),
            f"`{name}` (+ the diagonal regulariser) is not positive semi-definite.",
        )
        self.evecs = evecs

    @property
    def clipped(self) -> Float[Array, " p"]:
        return jnp.maximum(self.evals, 0)

    def decay(self, tau: Float[Array, " t"], n: int) -> Float[Array, "t p"]:
        """$e^{-\\lambda_i \\tau / n}$ per time and eigenvalue."""
        return jnp.exp(-self.clipped[None] * tau[:, None] / n)

    def expm1(self, tau: Float[Array, " t"], n: int) -> Float[Array, "t p"]:
        """$e^{-\\lambda_i \\tau / n} - 1$, accurate for small arguments."""
        return jnp.expm1(-self.clipped[None] * tau[:, None] / n)

    def growth(self, tau: Float[Array, " t"], n: int) -> Float[Array, "t p"]:
        """$(1 - e^{-\\lambda_i \\tau / n}) / \\lambda_i$, and 0 where $\\lambda_i \\leq 0$.

        It is $A^{-1}(I - e^{-\\tau A / n})$ in the eigenbasis: the integrated response of the
        dynamics, which tends to $A^{-1}$ (on the positive eigenspace) as $\\tau \\to \\infty$.
        """
        positive = (self.evals > 0)[None]
        safe = jnp.where(positive, self.evals[None], 1)
        return jnp.where(positive, -self.expm1(tau, n) / safe, 0)

    def inverse(self) -> Float[Array, "1 p"]:
        """$1 / \\lambda_i$ (0 where $\\lambda_i \\leq 0$): `growth` at $\\tau = \\infty$."""
        positive = self.evals > 0
        return jnp.where(positive, 1 / jnp.where(positive, self.evals, 1), 0)[None]

    def apply(
        self,
        coef: Float[Array, "t p"],
        rhs: Float[Array, "p r"],
        rows: Float[Array, "m p"] | None = None,
    ) -> Float[Array, "t m r"]:
        """`rows` $V \\,\\mathrm{diag}(g_t)\\, V^\\top$ `rhs` for every row $g_t$ of `coef`
        (`rows` = $I$ when `None`). One `einsum`, so that its optimiser picks the cheapest
        order: with a test set smaller than times x columns, `rows` $V$ first."""
        projected = self.evecs.T @ rhs
        if rows is None:
            return jnp.einsum("ij,tj,jr->tir", self.evecs, coef, projected)
        return jnp.einsum("mi,ij,tj,jr->tmr", rows, self.evecs, coef, projected)
