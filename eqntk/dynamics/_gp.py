"""`gp_inference`: exact posterior of the NNGP, NTK and NTKGP Gaussian processes."""

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from .._callable import AbstractCallable, check_get as _check_get, named_tuple
from ._common import (
    Axes,
    KernelLike,
    Layout,
    check_finite,
    cov_from_matrix,
    kernel_to_matrix,
    layout_of,
    nonnegative,
    pick,
    regularised,
    square_kernel,
    test_points,
)
from ._gaussian import Gaussian
from ._solve import Factorisation


GP_NAMES = ("nngp", "ntk", "ntkgp")


def check_get(get: Any, allowed: tuple[str, ...]) -> tuple[str, ...]:
    """`get` as a tuple of names among `allowed` (`None` means `("nngp", "ntk")`)."""
    names = _check_get(get, allowed, none_means=("nngp", "ntk"), what="prediction")
    assert names is not None
    return names


def by_get(get: Any, names: tuple[str, ...], results: dict[str, Gaussian]) -> Any:
    """One result for a string `get`, a named tuple for a tuple of names."""
    if isinstance(get, str):
        return results[get]
    return named_tuple("Gaussians", names)(*(results[g] for g in names))


class GPPredictor(AbstractCallable):
    """The posterior of a Gaussian process on a training set, as returned by
    [`eqntk.dynamics.gp_inference`][].

    It holds the factorised train-train kernels, so every call (any test set, any `get`)
    reuses one factorisation per kernel. It is an `eqx.Module`: pass it through `jit` and
    `vmap` like any PyTree.
    """

    factors: dict[str, Factorisation]
    kernels: dict[str, Float[Array, "p p"]]
    k_inv_y: dict[str, Float[Array, "p c"]]
    y: Float[Array, "p c"]
    layout: Layout
    shared: bool = eqx.field(static=True)

    def _name(self, name: str) -> str:
        return "k" if self.shared else name

    def _factor(self, name: str) -> Factorisation:
        if self._name(name) not in self.factors:
            raise ValueError(
                f"This prediction needs the {name!r} train-train kernel, but `k_train_train` "
                "did not contain it."
            )
        return self.factors[self._name(name)]

    @eqx.filter_jit
    def __call__(
        self,
        k_test_train: KernelLike | None = None,
        k_test_test: KernelLike | None = None,
        get: str | tuple[str, ...] | None = None,
    ) -> Any:
        """The posterior mean (and covariance) on a test set.

        With $A = k_{dd} + \\lambda I$ ($k$ = $\\mathcal{K}$ for `"nngp"`, $\\Theta$ for
        `"ntk"` and `"ntkgp"`), $d$ the training and $t$ the test inputs:

        - `"nngp"`: mean $\\mathcal{K}_{td} A^{-1} y$, covariance
          $\\mathcal{K}_{tt} - \\mathcal{K}_{td} A^{-1} \\mathcal{K}_{dt}$ (the Bayesian
          posterior of the infinitely wide network);
        - `"ntk"`: mean $\\Theta_{td} A^{-1} y$, covariance
          $\\mathcal{K}_{tt} + T \\mathcal{K}_{dd} T^\\top - (T \\mathcal{K}_{dt} + h.c.)$ with
          $T = \\Theta_{td} A^{-1}$ (an infinite ensemble of infinitely wide networks trained
          to convergence by gradient flow on the MSE);
        - `"ntkgp"`: the `"nngp"` formulas with $\\Theta$ everywhere (the posterior of the GP
          whose covariance is the NTK).

        **Arguments:**

        - `k_test_train`: the test-train kernel(s), `(M, N)` (in general the non-trace axes of
          test and training outputs interleaved): an array, or an [`eqntk.Kernel`][] / named
          tuple holding the kernels that `get` needs (the `"ntk"` covariance needs both the
          NTK and the NNGP). `None` predicts on the training set itself, where the posterior is
          $N(y, 0)$.
        - `k_test_test`: the test-test kernel(s) `(M, M)`, needed for the covariance (the NNGP
          for `"nngp"` and `"ntk"`, the NTK for `"ntkgp"`); `None` for the mean only.
        - `get`: `"nngp"`, `"ntk"`, `"ntkgp"`, or a tuple of them; `None` is
          `("nngp", "ntk")`.

        **Returns:**

        A [`eqntk.dynamics.Gaussian`][] for a string `get` (its `cov` is `None` without
        `k_test_test`), or a named tuple of them, one field per name in `get`.
        """
        names = check_get(get, GP_NAMES)
        results = {g: self._predict(g, k_test_train, k_test_test) for g in names}
        return by_get(get, names, results)

    def _predict(self, g: str, k_test_train: Any, k_test_test: Any) -> Gaussian:
        k = "nngp" if g == "nngp" else "ntk"
        prior = "ntk" if g == "ntkgp" else "nngp"
        factor = self._factor(k)
        if k_test_train is None:
            cov = None if k_test_test is None else jnp.zeros_like(self.kernels[self._name(k)])
            if cov is not None:
                cov = cov_from_matrix(cov, self.layout.points_shape)
            return Gaussian(self.layout.from_matrix(self.y), cov)
        points = test_points("k_test_train", pick(k_test_train, k, "k_test_train"), self.layout)
        train = self.layout.points_shape

        def td(name):
            return kernel_to_matrix(
                "k_test_train", pick(k_test_train, name, "k_test_train"), points, train
            )

        k_td = td(k)
        mean = self.layout.with_points(points).from_matrix(k_td @ self.k_inv_y[self._name(k)])
        if k_test_test is None:
            return Gaussian(mean, None)
        k_tt = kernel_to_matrix(
            "k_test_test", pick(k_test_test, prior, "k_test_test"), points, points
        )
        if g == "ntk":
            nngp_td = td("nngp")
            m = k_td.shape[0]
            # One solve for both right-hand sides: T^T = A^-1 Θ_dt and A^-1 K_dt.
            both = factor.solve(jnp.concatenate([k_td.T, nngp_td.T], axis=1))
            t_transposed, k_inv_nngp_dt = both[:, :m], both[:, m:]
            nngp_dd = self.kernels.get(self._name("nngp"))
            if nngp_dd is None:
                raise ValueError(
                    "The 'ntk' covariance needs the 'nngp' train-train kernel, but "
                    "`k_train_train` did not contain it."
                )
            cross = k_td @ k_inv_nngp_dt
            cov = k_tt + t_transposed.T @ nngp_dd @ t_transposed - cross - cross.T
        else:  # "nngp", "ntkgp": the prior is the kernel solved with.
            cov = k_tt - factor.inverse_gram(k_td)
        return Gaussian(mean, cov_from_matrix(cov, points))


@eqx.filter_jit
def gp_inference(
    k_train_train: KernelLike,
    y_train: Float[ArrayLike, "..."],
    diag_reg: float | Float[ArrayLike, ""] = 0.0,
    diag_reg_absolute_scale: bool = False,
    trace_axes: Axes = (-1,),
    *,
    solver: lx.AbstractLinearSolver = lx.Cholesky(),
    get: str | tuple[str, ...] | None = None,
) -> GPPredictor:
    """Exact Gaussian-process inference with the NNGP or the NTK, as in neural-tangents.

    The train-train kernels are regularised, $A = k_{dd} + \\lambda I$ with $\\lambda$ =
    `diag_reg` (times $\\mathrm{tr}(k_{dd})/N$ unless `diag_reg_absolute_scale`), and
    factorised once with `solver`; $A^{-1} y$ is computed here too. The returned predictor
    gives the posterior mean and covariance on any test set (see
    [`eqntk.dynamics.GPPredictor.__call__`][] for the formulas).

    **Arguments:**

    - `k_train_train`: the train-train kernel `(N, N)` (with `trace_axes` absent: in general
      the non-trace axes of `y_train` interleaved): an array (used as every kernel), or an
      [`eqntk.Kernel`][] / the named tuple from `kernel_fn(x, None, get=("nngp", "ntk"))`.
      The kernels that `get` needs are factorised.
    - `y_train`: the training targets, e.g. `(N, K)`, or `(N,)` for one output per point
      (`trace_axes` is then ignored and the predicted means are 1-D too).
    - `diag_reg`: the diagonal regulariser, $\\geq 0$ (a positive value makes a singular kernel
      solvable and models observation noise).
    - `diag_reg_absolute_scale`: `True` for $\\lambda$ = `diag_reg`; `False` (default) for
      $\\lambda$ = `diag_reg` $\\cdot \\mathrm{tr}(k_{dd})/N$.
    - `trace_axes`: the axes of the outputs over which the kernel is the identity (the kernels
      act as $k \\otimes I$ on them); `(-1,)` for `(N, K)` targets.
    - `solver`: any lineax solver for symmetric positive definite systems: `lx.Cholesky()`
      (default, exact), `lx.CG(rtol, atol)` (iterative, for large problems), ...
    - `get`: the predictions that will be asked of the predictor (`"nngp"`, `"ntk"`,
      `"ntkgp"` or a tuple); only the kernels they solve with are factorised. `None`
      factorises every kernel in `k_train_train`.

    **Returns:**

    A [`eqntk.dynamics.GPPredictor`][], called as
    `predictor(k_test_train, k_test_test=None, get=None)`.

    **Raises:**

    An error (at once, or at run time under `jit`) that names the culprit when `y_train` or
    `k_train_train` holds a NaN or an infinity; when the regularised kernel is not positive
    definite (a failed Cholesky factorisation; with other solvers, a non-positive diagonal
    entry or $y^\\top A^{-1} y < 0$); and when the solve is inaccurate: a residual
    $\\|A A^{-1} y - y\\|$ beyond $\\epsilon^{1/4} \\|y\\|$ (or ten times an iterative
    solver's `rtol`/`atol`), which means a kernel too ill-conditioned for its dtype; a
    positive `diag_reg` is then the remedy.

    **Example:**

    ```python
    import jax.numpy as jnp
    import jax.random as jr
    from eqntk.dynamics import gp_inference

    x = jr.normal(jr.key(0), (6, 3))
    k = x @ x.T + 0.1 * jnp.eye(6)            # any kernel
    y = jr.normal(jr.key(1), (6, 2))
    posterior = gp_inference(k, y, diag_reg=1e-3)(k[:2], k[:2, :2], get="nngp")
    assert posterior.mean.shape == (2, 2) and posterior.cov.shape == (2, 2)
    ```
    """
    y = jnp.asarray(y_train)
    layout = layout_of(y, trace_axes)
    y = check_finite("y_train", y)
    shared = isinstance(k_train_train, jax.Array | np.ndarray)
    if shared:
        names = ("k",)
    elif get is None:
        names = ("nngp", "ntk")
    else:
        wanted = check_get(get, GP_NAMES)
        solved = {"ntk" if g == "ntkgp" else g for g in wanted}
        names = tuple(n for n in ("nngp", "ntk") if n in solved)
    factors, kernels, k_inv_y = {}, {}, {}
    for name in names:
        value = k_train_train if shared else getattr(k_train_train, name, None)
        if value is None:
            continue
        k = square_kernel("k_train_train", value, layout)
        reg = nonnegative("diag_reg", diag_reg, k.dtype)
        factor = Factorisation(
            "k_train_train", regularised(k, reg, diag_reg_absolute_scale), solver
        )
        y_matrix = layout.to_matrix(y).astype(k.dtype)
        factors[name], kernels[name], k_inv_y[name] = factor, k, factor.solve_targets(y_matrix)
    # The NTK covariance also needs the (unfactorised) NNGP.
    nngp = None if shared else getattr(k_train_train, "nngp", None)
    if "nngp" not in kernels and nngp is not None:
        kernels["nngp"] = square_kernel("k_train_train", nngp, layout)
    if not factors:
        raise ValueError(
            "`k_train_train` must be an array or hold an 'nngp' or 'ntk' kernel, got "
            f"{type(k_train_train).__name__} without either."
        )
    dtype = next(iter(kernels.values())).dtype
    return GPPredictor(factors, kernels, k_inv_y, layout.to_matrix(y).astype(dtype), layout, shared)
