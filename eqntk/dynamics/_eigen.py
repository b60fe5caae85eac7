"""Functions of a regularised kernel matrix, through one eigendecomposition."""

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float


class Eigen(eqx.Module):
    """$A = V \\Lambda V^\\top$ for a regularised kernel $A = k + \\lambda I$.

    Every closed-form MSE quantity is $V g(\\Lambda) V^\\top$ applied to a matrix, for some
    function $g$ of the eigenvalues and the time; the decomposition is computed once and serves
    every time and right-hand side.

    **Null space.** Eigenvalues within `tol` = $100 P \\epsilon \\max_i |\\lambda_i|$ of zero
    are rounding errors of a singular kernel (e.g. one with a repeated input): their directions
    are the null space of $A$, and they do not move at any time, $t = \\infty$ included
    ($e^{-\\lambda t}$ is 1 there and $(1 - e^{-\\lambda t})/\\lambda$ is 0: a pseudo-inverse).
    An eigenvalue below $-$`tol` means a kernel that is not positive semi-definite: an error.
    """

    evals: Float[Array, " p"]
    evecs: Float[Array, "p p"]
    tol: Float[Array, ""]

    def __init__(self, name: str, a: Float[Array, "p p"]):
        evals, evecs = jnp.linalg.eigh(a)
        # Rounding alone stays within a few ulps of the largest eigenvalue per dimension.
        self.tol = 100 * a.shape[0] * jnp.finfo(a.dtype).eps * jnp.max(jnp.abs(evals))
        self.evals = eqx.error_if(
            evals,
            ~jnp.all(jnp.isfinite(evals)) | (evals[0] < -self.tol),
            f"`{name}` (+ the diagonal regulariser) is not positive semi-definite.",
        )
        self.evecs = evecs

    @property
    def positive(self) -> Bool[Array, " p"]:
        """The directions that move: eigenvalues above `tol`."""
        return self.evals > self.tol

    @property
    def clipped(self) -> Float[Array, " p"]:
        """The eigenvalues, with those of the null space set to zero."""
        return jnp.where(self.positive, self.evals, 0)

    def _exponent(self, tau: Float[Array, " t"], n: int) -> Float[Array, "t p"]:
        # $\\lambda_i \\tau / n$, 0 on the null space even at $\\tau = \\infty$ (no 0 * inf).
        positive = self.positive[None]
        return jnp.where(positive, self.clipped[None] * jnp.where(positive, tau[:, None], 0) / n, 0)

    def decay(self, tau: Float[Array, " t"], n: int) -> Float[Array, "t p"]:
        """$e^{-\\lambda_i \\tau / n}$ per time and eigenvalue (1 on the null space)."""
        return jnp.exp(-self._exponent(tau, n))

    def expm1(self, tau: Float[Array, " t"], n: int) -> Float[Array, "t p"]:
        """$e^{-\\lambda_i \\tau / n} - 1$, accurate for small arguments (0 on the null space)."""
        return jnp.expm1(-self._exponent(tau, n))

    def growth(self, tau: Float[Array, " t"], n: int) -> Float[Array, "t p"]:
        """$(1 - e^{-\\lambda_i \\tau / n}) / \\lambda_i$, and 0 on the null space.

        It is $A^{-1}(I - e^{-\\tau A / n})$ in the eigenbasis: the integrated response of the
        dynamics, which tends to $A^{-1}$ (on the positive eigenspace) as $\\tau \\to \\infty$.
        """
        safe = jnp.where(self.positive, self.evals, 1)[None]
        return jnp.where(self.positive[None], -self.expm1(tau, n) / safe, 0)

    def null(self) -> Float[Array, "1 p"]:
        """1 on the null space and 0 off it: `1 + expm1` at $\\tau = \\infty$."""
        return (~self.positive).astype(self.evals.dtype)[None]

    def inverse(self) -> Float[Array, "1 p"]:
        """$1 / \\lambda_i$ (0 on the null space): `growth` at $\\tau = \\infty$."""
        return jnp.where(self.positive, 1 / jnp.where(self.positive, self.evals, 1), 0)[None]

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
