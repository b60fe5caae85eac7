"""Matrix-free kernel operators: kernel-vector products computed tile by tile, never holding
the `(N, N)` kernel, and the preconditioner and log-determinant estimate that go with them."""

import math
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import lineax as lx
from jaxtyping import Array, Float, PRNGKeyArray


class TiledKernelOperator(lx.AbstractLinearOperator):
    """The regularised kernel $A = k(X, X) + \\lambda I$ as a lineax operator whose products
    are computed tile by tile.

    A product $A V$ for $V$ of shape `(N, C)` evaluates `kernel_fn` on one `(T, T)` tile of
    the kernel at a time (`T` = `tile_size`) and accumulates `tile @ V[tile columns]`, so
    peak memory is $O(T^2 + N C)$ whatever $N$; each product costs $N^2$ kernel entries. It
    is symmetric and positive semi-definite by construction (tagged so for lineax's `CG`).

    **Fields:**

    - `kernel_fn`: a function `(x1, x2) -> (n1, n2)` kernel matrix, e.g.
      `lambda a, b: eqntk.limit(model)(a, b, get="nngp")`, or an [`eqntk.limit`][] kernel
      function with `get` given.
    - `tiles`: the inputs, padded to whole tiles: `(n_tiles, T, *features)`.
    - `reg`: the absolute diagonal regulariser $\\lambda$.
    - `n`: the number of inputs $N$; `columns`: $C$; `get`: passed to `kernel_fn` if given.
    """

    kernel_fn: Callable[..., Any]
    tiles: Float[Array, "tiles t ..."]
    reg: Float[Array, ""]
    n: int = eqx.field(static=True)
    columns: int = eqx.field(static=True)
    get: str | None = eqx.field(static=True)

    def __init__(
        self,
        kernel_fn: Callable[..., Any],
        x: Float[Array, "n ..."],
        reg: float | Float[Array, ""] = 0.0,
        *,
        tile_size: int = 512,
        columns: int = 1,
        get: str | None = None,
    ):
        """**Arguments:**

        - `kernel_fn`: the kernel as a function of two batches, see above.
        - `x`: the inputs `(N, ...)`.
        - `reg`: the diagonal regulariser $\\lambda \\geq 0$ (absolute).
        - `tile_size`: the tile side $T$ (memory $O(T^2)$ kernel entries per tile).
        - `columns`: the number of columns $C$ of the vectors it acts on, `(N, C)`.
        - `get`: if not `None`, `kernel_fn` is called as `kernel_fn(x1, x2, get=get)`.

        **Example:**

        ```python
        import jax.numpy as jnp
        import jax.random as jr
        from eqntk.dynamics import TiledKernelOperator

        x = jr.normal(jr.key(0), (10, 3))
        op = TiledKernelOperator(lambda a, b: a @ b.T, x, 0.1, tile_size=4)
        v = jnp.ones((10, 1))
        assert jnp.allclose(op.mv(v), (x @ x.T + 0.1 * jnp.eye(10)) @ v, atol=1e-5)
        ```
        """
        if not isinstance(tile_size, int) or tile_size < 1:
            raise ValueError(f"`tile_size` must be a positive integer, got {tile_size!r}.")
        x = jnp.asarray(x)
        if x.ndim < 2 or x.shape[0] < 1:
            raise ValueError(f"`x` must be a batch of inputs (N, features...), got {x.shape}.")
        n = x.shape[0]
        t = min(tile_size, n)
        pad = -n % t
        # Padding rows repeat the first input (any valid input): their columns of V are zero
        # and their rows of the product are dropped, so they change nothing.
        x = jnp.concatenate([x, jnp.broadcast_to(x[:1], (pad, *x.shape[1:]))])
        self.kernel_fn = kernel_fn
        self.tiles = x.reshape(-1, t, *x.shape[1:])
        self.reg = jnp.asarray(reg, x.dtype)
        self.n = n
        self.columns = columns
        self.get = get

    def tile(self, x1: Array, x2: Array) -> Float[Array, "n1 n2"]:
        """The kernel between two batches, through `kernel_fn`."""
        if self.get is None:
            return self.kernel_fn(x1, x2)
        return self.kernel_fn(x1, x2, get=self.get)

    def _padded(self, v: Array) -> Array:
        n_tiles, t = self.tiles.shape[:2]
        v = jnp.concatenate([v, jnp.zeros((n_tiles * t - self.n, *v.shape[1:]), v.dtype)])
        return v.reshape(n_tiles, t, *v.shape[1:])

    def kernel_mv(self, v: Float[Array, "n c"]) -> Float[Array, "n c"]:
        """$k(X, X) V$ without the regulariser, one tile at a time."""
        vs = self._padded(v)

        def row(xi):
            def body(acc, tile):
                xj, vj = tile
                return acc + self.tile(xi, xj).astype(v.dtype) @ vj, None

            acc = jnp.zeros((xi.shape[0], *v.shape[1:]), v.dtype)
            return jax.lax.scan(body, acc, (self.tiles, vs))[0]

        out = jax.lax.map(row, self.tiles)
        return out.reshape(-1, *v.shape[1:])[: self.n]

    def rows(self, x1: Float[Array, "m ..."]) -> Float[Array, "m n"]:
        """The kernel rows $k(x_1, X)$, one column tile at a time (memory $O(m N)$)."""
        out = jax.lax.map(lambda xj: self.tile(x1, xj), self.tiles)  # (tiles, m, t)
        return jnp.moveaxis(out, 0, 1).reshape(x1.shape[0], -1)[:, : self.n]

    def kernel_diagonal(self) -> Float[Array, " n"]:
        """The diagonal $k(x_i, x_i)$, from the diagonal tiles ($O(N T)$ entries)."""
        out = jax.lax.map(lambda xi: jnp.diagonal(self.tile(xi, xi)), self.tiles)
        return out.reshape(-1)[: self.n]

    def mv(self, vector):
        return self.kernel_mv(vector) + self.reg.astype(vector.dtype) * vector

    def as_matrix(self) -> Float[Array, "n n"]:
        return self.rows(self.tiles.reshape(-1, *self.tiles.shape[2:])[: self.n]) + self.reg * (
            jnp.eye(self.n, dtype=self.tiles.dtype)
        )

    def transpose(self) -> "TiledKernelOperator":
        return self

    def in_structure(self):
        return jax.ShapeDtypeStruct((self.n, self.columns), self.tiles.dtype)

    def out_structure(self):
        return self.in_structure()


# lineax asks every operator these questions; the answers follow from A = k + λI being a
# symmetric positive semi-definite kernel matrix that is never materialised.
@lx.linearise.register(TiledKernelOperator)
def _(operator):
    return operator


@lx.materialise.register(TiledKernelOperator)
def _(operator):
    return operator


@lx.diagonal.register(TiledKernelOperator)
def _(operator):
    return operator.kernel_diagonal() + operator.reg


@lx.tridiagonal.register(TiledKernelOperator)
def _(operator):
    matrix = operator.as_matrix()
    return jnp.diagonal(matrix), jnp.diagonal(matrix, -1), jnp.diagonal(matrix, 1)


@lx.conj.register(TiledKernelOperator)
def _(operator):
    return operator


for _check, _answer in (
    (lx.is_symmetric, True),
    (lx.is_positive_semidefinite, True),
    (lx.is_negative_semidefinite, False),
    (lx.is_diagonal, False),
    (lx.is_tridiagonal, False),
    (lx.has_unit_diagonal, False),
    (lx.is_lower_triangular, False),
    (lx.is_upper_triangular, False),
):
    _check.register(TiledKernelOperator)(lambda operator, _answer=_answer: _answer)


class PivotedCholesky(eqx.Module):
    """A rank-$r$ partial pivoted Cholesky factor $L$ ($k \\approx L^\\top L$) of a tiled
    kernel, and the preconditioner $P = L^\\top L + \\lambda I$ it gives (Gardner et al. 2018).

    Each of the $r$ steps takes the largest remaining diagonal entry as pivot and computes one
    kernel row ($N$ entries): $O(r N)$ kernel entries and $O(r^2 N)$ work in all. Kernels of
    wide networks have fast-decaying spectra, so a rank of a few hundred removes most of the
    ill-conditioning that CG would otherwise pay for.

    **Arguments:**

    - `operator`: a [`eqntk.dynamics.TiledKernelOperator`][] (its regulariser is $\\lambda$).
    - `rank`: the number of pivots $r$.

    **Example:**

    ```python
    import jax.numpy as jnp
    import jax.random as jr
    from eqntk.dynamics import PivotedCholesky, TiledKernelOperator

    x = jr.normal(jr.key(0), (12, 3))
    op = TiledKernelOperator(lambda a, b: a @ b.T, x, 0.1, tile_size=4)
    factor = PivotedCholesky(op, 3).factor          # x x^T has rank 3: exact
    assert jnp.allclose(factor.T @ factor, x @ x.T, atol=1e-4)
    ```
    """

    factor: Float[Array, "r n"]
    reg: Float[Array, ""]
    basis: Float[Array, "n r"]
    singular: Float[Array, " r"]

    def __init__(self, operator: TiledKernelOperator, rank: int):
        flat = operator.tiles.reshape(-1, *operator.tiles.shape[2:])[: operator.n]
        d = operator.kernel_diagonal()
        scale = jnp.max(d)
        factor = jnp.zeros((rank, operator.n), d.dtype)

        def step(i, carry):
            factor, d = carry
            p = jnp.argmax(d)
            row = operator.rows(jax.lax.dynamic_slice_in_dim(flat, p, 1))[0].astype(d.dtype)
            # Rows i, i+1, ... of `factor` are still zero, so the full product is the sum
            # over the i rows already made.
            row = row - factor.T @ factor[:, p]
            pivot = d[p]
            # A pivot at rounding level means the kernel is (numerically) of rank i: stop
            # adding rows rather than divide by a rounding error.
            ok = pivot > 1e3 * jnp.finfo(d.dtype).eps * scale
            new = jnp.where(ok, row / jnp.sqrt(jnp.where(ok, pivot, 1.0)), 0.0)
            d = jnp.maximum(d - new**2, 0.0)
            return factor.at[i].set(new), d

        factor, _ = jax.lax.fori_loop(0, rank, step, (factor, d))
        self.factor = factor
        self.reg = operator.reg.astype(d.dtype)
        # P = λI + U S² U^T from the thin SVD L^T = U S V^T. Applying P^-1 through U (rather
        # than Woodbury's (λI + L L^T)^-1, whose condition number multiplies the rounding
        # error) keeps its error at eps ||P^-1||, which float32 CG needs to converge.
        self.basis, self.singular, _ = jnp.linalg.svd(factor.T, full_matrices=False)

    def _apply(self, v: Array, power: float) -> Array:
        # P^power v = λ^power (v - U U^T v) + U (λ + s²)^power U^T v.
        coeff = self.basis.T @ v
        scale = (self.reg + self.singular**2) ** power - self.reg**power
        return self.reg**power * v + self.basis @ (scale[:, None] * coeff)

    def inverse_mv(self, v: Float[Array, "n c"]) -> Float[Array, "n c"]:
        """$P^{-1} v$."""
        return self._apply(v, -1.0)

    def inverse_sqrt_mv(self, v: Float[Array, "n c"]) -> Float[Array, "n c"]:
        """$P^{-1/2} v$."""
        return self._apply(v, -0.5)

    def logdet(self, n: int) -> Float[Array, ""]:
        """$\\log\\det P = (N - r) \\log\\lambda + \\sum_i \\log(\\lambda + s_i^2)$."""
        rank = self.singular.shape[0]
        return (n - rank) * jnp.log(self.reg) + jnp.sum(jnp.log(self.reg + self.singular**2))

    def operator(self, structure: jax.ShapeDtypeStruct) -> lx.FunctionLinearOperator:
        """$P^{-1}$ as a lineax operator (CG's `preconditioner` option)."""
        return lx.FunctionLinearOperator(
            self.inverse_mv, structure, (lx.symmetric_tag, lx.positive_semidefinite_tag)
        )


def lanczos_logdet(
    mv: Callable[[Array], Array],
    n: int,
    dtype: Any,
    *,
    key: PRNGKeyArray,
    n_probes: int,
    steps: int,
) -> tuple[Float[Array, ""], Float[Array, ""]]:
    """$\\mathrm{tr} \\log M$ for a symmetric positive definite $M$ given by its products:
    stochastic Lanczos quadrature (Ubaru, Chen & Saad 2017) with Rademacher probes.

    Each probe $z$ gives $z^\\top \\log(M) z \\approx \\|z\\|^2 \\sum_i \\tau_i^2 \\log\\theta_i$
    from the Ritz values $\\theta_i$ and first eigenvector components $\\tau_i$ of `steps`
    Lanczos steps; their mean is unbiased for the trace up to the quadrature error.
    All probes run together as the columns of one block (one tiled product per step).

    **Returns:**

    The estimate and its standard error (the probes' standard deviation over
    $\\sqrt{\\text{n\\_probes}}$).
    """
    z = jr.rademacher(key, (n, n_probes), dtype)
    norm = jnp.sqrt(jnp.asarray(n, dtype))
    q = z / norm

    def step(carry, _):
        q, q_prev, beta_prev = carry
        w = mv(q) - beta_prev[None, :] * q_prev
        alpha = jnp.sum(q * w, axis=0)
        w = w - alpha[None, :] * q
        beta = jnp.linalg.norm(w, axis=0)
        # An exhausted Krylov space (beta ~ 0: M acts on z's space as a small matrix) ends
        # the recurrence; the later steps decouple and get weight exactly zero.
        done = beta <= 1e3 * jnp.finfo(dtype).eps * jnp.abs(alpha)
        q_next = jnp.where(done[None, :], 0.0, w / jnp.where(done, 1.0, beta)[None, :])
        return (q_next, q, jnp.where(done, 0.0, beta)), (alpha, jnp.where(done, 0.0, beta))

    init = (q, jnp.zeros_like(q), jnp.zeros((n_probes,), dtype))
    _, (alphas, betas) = jax.lax.scan(step, init, None, length=steps)

    def quadrature(alpha, beta):
        # After a breakdown the remaining alphas are products with the zero vector (0); they
        # form a block decoupled from e1, so any positive value there leaves the result.
        live = jnp.cumprod(jnp.concatenate([jnp.ones((1,), dtype), (beta[:-1] != 0).astype(dtype)]))
        alpha = jnp.where(live > 0, alpha, 1.0)
        t = jnp.diag(alpha) + jnp.diag(beta[:-1], 1) + jnp.diag(beta[:-1], -1)
        theta, vectors = jnp.linalg.eigh(t)
        theta = jnp.maximum(theta, jnp.finfo(dtype).tiny)
        return n * jnp.sum(vectors[0] ** 2 * jnp.log(theta))

    estimates = jax.vmap(quadrature, in_axes=(1, 1))(alphas, betas)
    return jnp.mean(estimates), jnp.std(estimates) / math.sqrt(max(n_probes - 1, 1))
