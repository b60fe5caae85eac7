"""Matrix-free GP inference: conjugate gradients on a tiled kernel operator."""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from .._callable import AbstractCallable
from ._gaussian import Gaussian
from ._tiled import PivotedCholesky, TiledKernelOperator, lanczos_logdet


def _targets(y_train: Any) -> tuple[Array, bool]:
    y = jnp.asarray(y_train)
    if y.ndim not in (1, 2):
        raise ValueError(f"`y_train` must have shape (N,) or (N, K), got {y.shape}.")
    y = eqx.error_if(y, ~jnp.all(jnp.isfinite(y)), "`y_train` holds a NaN or an infinity.")
    return (y[:, None], True) if y.ndim == 1 else (y, False)


def _operator(kernel_fn, x_train, y, diag_reg, absolute, tile_size, get) -> TiledKernelOperator:
    x = jnp.asarray(x_train)
    if x.ndim < 2 or x.shape[0] != y.shape[0]:
        raise ValueError(
            f"`x_train` must be a batch of {y.shape[0]} inputs (one per row of `y_train`), "
            f"got shape {x.shape}."
        )
    if not isinstance(diag_reg, jax.Array) and not np.all(np.asarray(diag_reg) >= 0):
        raise ValueError(f"`diag_reg` must be >= 0, got {diag_reg!r}.")
    operator = TiledKernelOperator(
        kernel_fn, x, 0.0, tile_size=tile_size, columns=y.shape[1], get=get
    )
    diagonal = operator.kernel_diagonal()
    diagonal = eqx.error_if(
        diagonal,
        ~jnp.all(jnp.isfinite(diagonal)) | jnp.any(diagonal < 0),
        "`kernel_fn` gave a non-finite or negative diagonal entry k(x, x) on `x_train`.",
    )
    reg = jnp.asarray(diag_reg, diagonal.dtype)
    reg = reg if absolute else reg * jnp.mean(diagonal)
    return eqx.tree_at(lambda o: o.reg, operator, reg)


def _solve(operator, y, rank, rtol, atol, max_steps) -> tuple[Array, PivotedCholesky | None]:
    options = {}
    preconditioner = None
    if rank > 0:
        preconditioner = PivotedCholesky(operator, min(rank, operator.n))
        options["preconditioner"] = preconditioner.operator(operator.in_structure())
    # lineax tests every entry of the residual against atol + rtol |b_i|: targets with
    # entries near zero would never pass. Adding rtol max|b| to atol makes `rtol` a bound on
    # the residual relative to the targets' scale, as users of CG expect.
    scale = atol + rtol * jnp.max(jnp.abs(y))
    solver = lx.CG(rtol=rtol, atol=scale, max_steps=max_steps)
    solution = lx.linear_solve(operator, y, solver, options=options, throw=False)
    alpha = eqx.error_if(
        solution.value,
        (solution.result != lx.RESULTS.successful) | ~jnp.all(jnp.isfinite(solution.value)),
        "Conjugate gradients did not converge on `kernel_fn(x_train, x_train)` + the diagonal "
        "regulariser within `max_steps`: pass a larger `diag_reg`, `rank` or `max_steps`.",
    )
    return alpha, preconditioner


class MatrixFreePredictor(AbstractCallable):
    """The posterior mean of a Gaussian process fitted matrix-free, as returned by
    [`eqntk.dynamics.gp_inference_matrix_free`][].

    **Fields:**

    - `operator`: the [`eqntk.dynamics.TiledKernelOperator`][] of the training inputs.
    - `k_inv_y`: $A^{-1} y$, `(N, K)`.
    """

    operator: TiledKernelOperator
    k_inv_y: Float[Array, "n k"]
    squeeze: bool = eqx.field(static=True)

    @eqx.filter_jit
    def __call__(self, x_test: Float[Array, "m ..."]) -> Gaussian:
        """The posterior mean $k(x_{test}, X) A^{-1} y$, computed tile by tile.

        **Arguments:**

        - `x_test`: test inputs `(M, ...)`, of the training inputs' per-example shape.

        **Returns:**

        A [`eqntk.dynamics.Gaussian`][] with the mean `(M, K)` (or `(M,)` for 1-D targets)
        and `cov=None`.
        """
        x = jnp.asarray(x_test)
        if x.shape[1:] != self.operator.tiles.shape[2:]:
            raise ValueError(
                f"`x_test` must have per-example shape {self.operator.tiles.shape[2:]} like the "
                f"training inputs, got {x.shape}."
            )
        t = self.operator.tiles.shape[1]
        n = x.shape[0]
        pad = -n % t
        xs = jnp.concatenate([x, jnp.broadcast_to(x[:1], (pad, *x.shape[1:]))])
        xs = xs.reshape(-1, t, *x.shape[1:])
        alpha = self.operator._padded(self.k_inv_y)

        def row(xi):
            def body(acc, tile):
                xj, aj = tile
                return acc + self.operator.tile(xi, xj).astype(aj.dtype) @ aj, None

            acc = jnp.zeros((t, alpha.shape[-1]), alpha.dtype)
            return jax.lax.scan(body, acc, (self.operator.tiles, alpha))[0]

        mean = jax.lax.map(row, xs).reshape(-1, alpha.shape[-1])[:n]
        return Gaussian(mean[:, 0] if self.squeeze else mean, None)


@eqx.filter_jit
def gp_inference_matrix_free(
    kernel_fn: Callable[..., Any],
    x_train: Float[ArrayLike, "..."],
    y_train: Float[ArrayLike, "..."],
    diag_reg: float | Float[ArrayLike, ""] = 1e-3,
    diag_reg_absolute_scale: bool = False,
    *,
    get: str | None = None,
    tile_size: int = 512,
    rank: int = 100,
    rtol: float = 1e-6,
    atol: float = 0.0,
    max_steps: int = 1000,
) -> MatrixFreePredictor:
    """Gaussian-process regression with a kernel that is never held in memory.

    The same posterior mean as [`eqntk.dynamics.gp_inference`][],
    $k(x_{test}, X) (k(X, X) + \\lambda I)^{-1} y$, with the solve done by lineax's conjugate
    gradients on a [`eqntk.dynamics.TiledKernelOperator`][] (each product computes the kernel
    tile by tile: memory $O(T^2 + N K)$, time $O(N^2)$ kernel entries per iteration),
    preconditioned by a rank-`rank` partial pivoted Cholesky factor
    ([`eqntk.dynamics.PivotedCholesky`][]; Gardner et al. 2018, "GPyTorch"). This is how
    exact (not approximate) kernel regression reaches $N$ where the
    $N \\times N$ kernel no longer fits: $N = 10^5$ needs 80 GB as a float64 matrix, and
    here a few MB.

    **Arguments:**

    - `kernel_fn`: the kernel as a function of two batches, `kernel_fn(x1, x2) -> (n1, n2)`;
      e.g. an [`eqntk.limit`][] kernel function with `get="nngp"` or `get="ntk"`.
    - `x_train`: the training inputs `(N, ...)`.
    - `y_train`: the targets, `(N, K)` or `(N,)`.
    - `diag_reg`, `diag_reg_absolute_scale`: the regulariser $\\lambda$, as in
      [`eqntk.dynamics.gp_inference`][] (relative to the mean diagonal unless absolute). CG
      needs a positive one: its iterations grow like the square root of the condition number.
    - `get`: passed to `kernel_fn` as `get=get` when not `None`.
    - `tile_size`: the tile side $T$.
    - `rank`: the preconditioner's rank (0 for none).
    - `rtol`, `atol`, `max_steps`: CG stops when every entry of the residual is within
      `atol + rtol * (max|y| + |y_i|)` (and so is its last update); at most `max_steps`
      iterations.

    **Returns:**

    A [`eqntk.dynamics.MatrixFreePredictor`][], called as `predictor(x_test)` for the
    posterior mean (the covariance would need one solve per test point and is not offered).

    **Raises:**

    An error at run time when CG does not converge within `max_steps`, or when the kernel's
    diagonal or the targets are not finite.

    **Example:**

    ```python
    import jax.random as jr
    import eqntk
    from eqntk import nn
    from eqntk.dynamics import gp_inference_matrix_free

    model = nn.Sequential([nn.Dense(2, 8, b_std=0.1, key=jr.key(0)), nn.Relu(),
                           nn.Dense(8, 1, key=jr.key(1))])
    x, y = jr.normal(jr.key(2), (40, 2)), jr.normal(jr.key(3), (40,))
    predictor = gp_inference_matrix_free(eqntk.limit(model), x, y, 1e-2, get="nngp",
                                         tile_size=16, rank=10)
    assert predictor(x[:5]).mean.shape == (5,)
    ```
    """
    y, squeeze = _targets(y_train)
    operator = _operator(kernel_fn, x_train, y, diag_reg, diag_reg_absolute_scale, tile_size, get)
    alpha, _ = _solve(operator, y.astype(operator.tiles.dtype), rank, rtol, atol, max_steps)
    return MatrixFreePredictor(operator, alpha, squeeze)


@eqx.filter_jit
def marginal_log_likelihood_matrix_free(
    kernel_fn: Callable[..., Any],
    x_train: Float[ArrayLike, "..."],
    y_train: Float[ArrayLike, "..."],
    diag_reg: float | Float[ArrayLike, ""] = 1e-3,
    diag_reg_absolute_scale: bool = False,
    *,
    key: PRNGKeyArray,
    get: str | None = None,
    tile_size: int = 512,
    rank: int = 100,
    n_probes: int = 16,
    lanczos_steps: int = 30,
    rtol: float = 1e-6,
    atol: float = 0.0,
    max_steps: int = 1000,
) -> tuple[Float[Array, ""], Float[Array, ""]]:
    """The log marginal likelihood of [`eqntk.dynamics.marginal_log_likelihood`][], matrix-free.

    $\\log p(y) = -\\tfrac12 \\sum_c y_c^\\top A^{-1} y_c - \\tfrac{C}{2} \\log\\det A
    - \\tfrac{NC}{2} \\log 2\\pi$ with $A = k(X, X) + \\lambda I$. The solve is preconditioned
    CG (as in [`eqntk.dynamics.gp_inference_matrix_free`][]); the log-determinant splits as
    $\\log\\det P + \\mathrm{tr} \\log (P^{-1/2} A P^{-1/2})$, the first exact (the pivoted
    Cholesky preconditioner $P$, by the determinant lemma) and the second by stochastic
    Lanczos quadrature with `n_probes` Rademacher probes. The better $P$, the closer
    $P^{-1/2} A P^{-1/2}$ is to $I$ and the smaller the estimate's variance: with a rank
    that captures the kernel's spectrum the error is far below the fit term's.

    **Arguments:**

    - `kernel_fn`, `x_train`, `y_train`, `diag_reg`, `diag_reg_absolute_scale`, `get`,
      `tile_size`, `rank`, `rtol`, `atol`, `max_steps`: as in
      [`eqntk.dynamics.gp_inference_matrix_free`][]; here `diag_reg` must be positive
      (the preconditioner's determinant is taken).
    - `key`: a `jax.random` key for the probes.
    - `n_probes`, `lanczos_steps`: the probes and Lanczos steps of the estimate.

    **Returns:**

    `(log_likelihood, standard_error)`: the estimate and the standard error of its stochastic
    part. Not differentiable (fit hyperparameters on a subset with the dense
    [`eqntk.dynamics.marginal_log_likelihood`][]).

    **Example:**

    ```python
    import jax.random as jr
    from eqntk.dynamics import marginal_log_likelihood_matrix_free

    x, y = jr.normal(jr.key(0), (30, 2)), jr.normal(jr.key(1), (30,))
    value, error = marginal_log_likelihood_matrix_free(
        lambda a, b: a @ b.T / 2 + 1.0, x, y, 0.1, True, key=jr.key(2), tile_size=8, rank=5
    )
    assert error < 1.0
    ```
    """
    if rank < 1:
        raise ValueError(f"`rank` must be >= 1 (the preconditioner), got {rank!r}.")
    y, _ = _targets(y_train)
    operator = _operator(kernel_fn, x_train, y, diag_reg, diag_reg_absolute_scale, tile_size, get)
    y = y.astype(operator.tiles.dtype)
    operator = eqx.error_if(
        operator, operator.reg <= 0, "`diag_reg` must be positive for the log-determinant."
    )
    alpha, preconditioner = _solve(operator, y, rank, rtol, atol, max_steps)
    assert preconditioner is not None
    n, c = y.shape

    def whitened(v):
        # P^-1/2 A P^-1/2 v, on a block of probe columns.
        w = preconditioner.inverse_sqrt_mv(v)
        w = operator.kernel_mv(w) + operator.reg * w
        return preconditioner.inverse_sqrt_mv(w)

    rest, error = lanczos_logdet(
        whitened, n, y.dtype, key=key, n_probes=n_probes, steps=lanczos_steps
    )
    logdet = preconditioner.logdet(n) + rest
    value = -0.5 * jnp.sum(y * alpha) - 0.5 * c * logdet - 0.5 * n * c * np.log(2 * np.pi)
    return value, 0.5 * c * error
