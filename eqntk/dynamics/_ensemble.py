"""`gradient_descent_mse_ensemble`: the distribution of an infinite ensemble trained on MSE."""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from .._callable import AbstractCallable
from ._common import (
    Axes,
    cov_from_matrix,
    kernel_to_matrix,
    layout_of,
    nonnegative,
    regularised,
    square_kernel,
)
from ._eigen import Eigen
from ._gaussian import Gaussian
from ._gp import by_get, check_get, gp_inference
from ._mse import as_times


def needed_kernels(names: tuple[str, ...], compute_cov: bool) -> tuple[str, ...]:
    """The kernels that predictions `names` need: the NTK covariance also needs the NNGP."""
    nngp = "nngp" in names or ("ntk" in names and compute_cov)
    return (("nngp",) if nngp else ()) + (("ntk",) if "ntk" in names else ())


class EnsemblePredictor(AbstractCallable):
    """The outputs of an infinite ensemble of infinitely wide networks trained on the MSE, as
    returned by [`eqntk.dynamics.gradient_descent_mse_ensemble`][]."""

    kernel_fn: Callable
    x_train: Float[Array, "n ..."]
    y_train: Float[Array, "n ..."]
    learning_rate: Float[Array, ""]
    diag_reg: Float[Array, ""]
    diag_reg_absolute_scale: bool = eqx.field(static=True)
    trace_axes: tuple[int, ...] = eqx.field(static=True)

    def __call__(
        self,
        t: Float[ArrayLike, "*times"] | None = None,
        x_test: Float[Array, "m ..."] | None = None,
        get: str | tuple[str, ...] | None = None,
        compute_cov: bool = False,
    ) -> Any:
        """The mean (and covariance) of the ensemble's outputs at time(s) `t`.

        With $k$ = $\\mathcal{K}$ for `"nngp"` and $\\Theta$ for `"ntk"`,
        $A = k_{dd} + \\lambda I$, $n$ = `y_train.size` and $E(s) = e^{-\\eta s A / n}$
        (evaluated in the eigenbasis of $A$, negative eigenvalues clipped to zero):

        - mean: $k_{td} A^{-1} (I - E(t))\\, y$;
        - `"nngp"` covariance:
          $\\mathcal{K}_{tt} - \\mathcal{K}_{td} A^{-1} (I - E(2t)) \\mathcal{K}_{dt}$;
        - `"ntk"` covariance: $\\mathcal{K}_{tt} + T \\mathcal{K}_{dd} T^\\top -
          (T \\mathcal{K}_{dt} + h.c.)$ with $T = \\Theta_{td} A^{-1} (I - E(t))$.

        On the training set (`x_test=None`) the mean is $(I - E(t))\\, y$, the `"nngp"`
        covariance $A E(2t)$ and the `"ntk"` covariance $E(t) \\mathcal{K}_{dd} E(t)$. At
        $t = \\infty$ (`t=None`) this is [`eqntk.dynamics.gp_inference`][] (solved by Cholesky
        instead of an eigendecomposition).

        **Arguments:**

        - `t`: a time or an array of times (continuous steps), or `None` for infinite time.
        - `x_test`: the test inputs, or `None` for predictions on the training inputs.
        - `get`: `"nngp"`, `"ntk"` or a tuple of both; `None` is `("nngp", "ntk")`.
        - `compute_cov`: whether to compute the covariance too.

        **Returns:**

        A [`eqntk.dynamics.Gaussian`][] for a string `get` (leading axes `t.shape`; `cov` is
        `None` unless `compute_cov`), or a named tuple of them, one per name in `get`.
        """
        names = check_get(get, ("nngp", "ntk"))
        needed = needed_kernels(names, compute_cov)
        layout = layout_of(self.y_train, self.trace_axes)
        k_dd = self.kernel_fn(self.x_train, None, get=needed)
        if x_test is None:
            k_td = nngp_tt = None
        else:
            k_td = self.kernel_fn(x_test, self.x_train, get=needed)
            nngp_tt = self.kernel_fn(x_test, None, get="nngp") if compute_cov else None
        if t is None:
            if x_test is None:
                cov = jnp.zeros(2 * layout.points_shape) if compute_cov else None
                mean = self.y_train.astype(getattr(k_dd, needed[0]).dtype)
                return by_get(get, names, {g: Gaussian(mean, cov) for g in names})
            predictor = gp_inference(
                k_dd,
                self.y_train,
                self.diag_reg,
                self.diag_reg_absolute_scale,
                self.trace_axes,
                get=names,
            )
            return predictor(k_td, nngp_tt, get)
        setting = (self.y_train, self.learning_rate, self.diag_reg, self.diag_reg_absolute_scale)
        results = {
            g: _finite_time(g, t, layout, setting, k_dd, k_td, nngp_tt, compute_cov) for g in names
        }
        return by_get(get, names, results)


def gradient_descent_mse_ensemble(
    kernel_fn: Callable,
    x_train: Float[Array, "n ..."],
    y_train: Float[ArrayLike, "n ..."],
    learning_rate: float | Float[ArrayLike, ""] = 1.0,
    diag_reg: float | Float[ArrayLike, ""] = 0.0,
    diag_reg_absolute_scale: bool = False,
    trace_axes: Axes = (-1,),
) -> EnsemblePredictor:
    """The mean and covariance of an infinite ensemble of infinitely wide networks trained by
    gradient flow on the MSE loss, as in neural-tangents.

    Over random initialisations, an infinitely wide network's outputs at time $t$ of training
    on $\\frac{1}{2n}\\|f - y\\|^2$ are Gaussian; this gives their mean and covariance on test
    inputs (formulas in [`eqntk.dynamics.EnsemblePredictor.__call__`][]). Only the kernels the
    requested predictions need are computed: the NTK for `"ntk"` means, the NNGP too for
    `"ntk"` covariances, the test-test NNGP only with `compute_cov`.

    **Arguments:**

    - `kernel_fn`: a kernel function `kernel_fn(x1, x2=None, get=...)` that returns kernels
      with fields `nngp` / `ntk` for a tuple `get`, e.g. `eqntk.limit(model)`.
    - `x_train`: the training inputs, batched.
    - `y_train`: the training targets, e.g. `(N, K)`.
    - `learning_rate`: $\\eta \\geq 0$; times are in units of it.
    - `diag_reg`, `diag_reg_absolute_scale`: the diagonal regulariser, as in
      [`eqntk.dynamics.gp_inference`][].
    - `trace_axes`: the output axes over which the kernel is the identity.

    **Returns:**

    A [`eqntk.dynamics.EnsemblePredictor`][], called as
    `predictor(t=None, x_test=None, get=None, compute_cov=False)`.

    **Example:**

    ```python
    import jax.numpy as jnp
    import jax.random as jr
    import eqntk
    from eqntk import nn
    from eqntk.dynamics import gradient_descent_mse_ensemble

    model = nn.Sequential([nn.Dense(3, 8, b_std=0.1, key=jr.key(0)), nn.Relu(),
                           nn.Dense(8, 1, b_std=0.1, key=jr.key(1))])
    x_train, x_test = jr.normal(jr.key(2), (6, 3)), jr.normal(jr.key(3), (2, 3))
    y_train = jr.normal(jr.key(4), (6, 1))
    predict = gradient_descent_mse_ensemble(eqntk.limit(model), x_train, y_train, diag_reg=1e-4)
    out = predict(jnp.array([1.0, 10.0]), x_test, get="ntk", compute_cov=True)
    assert out.mean.shape == (2, 2, 1) and out.cov.shape == (2, 2, 2)
    ```
    """
    y = jnp.asarray(y_train)
    layout = layout_of(y, trace_axes)
    n_x = getattr(x_train, "shape", (None,))[0]
    if len(layout.points_shape) == 1 and n_x != layout.points_shape[0]:
        raise ValueError(
            f"`y_train` must have one row per example of `x_train` ({n_x}), got shape {y.shape}."
        )
    dtype = jnp.result_type(float)
    return EnsemblePredictor(
        kernel_fn,
        x_train,
        y,
        nonnegative("learning_rate", learning_rate, dtype),
        nonnegative("diag_reg", diag_reg, dtype),
        diag_reg_absolute_scale,
        layout.trace_axes,
    )


@eqx.filter_jit
def _finite_time(g, t, layout, setting, k_dd, k_td, nngp_tt, compute_cov) -> Gaussian:
    """The prediction `g` at finite times: the formulas of `EnsemblePredictor.__call__`."""
    y_train, learning_rate, diag_reg, diag_reg_absolute_scale = setting
    train = layout.points_shape
    kernel = square_kernel("kernel_fn(x_train, None)", getattr(k_dd, g), layout)
    dtype = kernel.dtype
    eigen = Eigen(
        "kernel_fn(x_train, None)",
        regularised(kernel, diag_reg.astype(dtype), diag_reg_absolute_scale),
    )
    tau, t_shape = as_times(t, dtype)
    tau = tau * learning_rate.astype(dtype)
    n = y_train.size
    y = layout.to_matrix(y_train).astype(dtype)
    v = eigen.evecs
    kv = None  # the test-train kernel times the eigenvectors, when there is a test set
    if k_td is None:
        points, out = train, layout
        mean = -eigen.apply(eigen.expm1(tau, n), y)
    else:
        td = getattr(k_td, g)
        points = tuple(td.shape[0::2])
        out = layout.with_points(points)
        k_td_g = kernel_to_matrix("kernel_fn(x_test, x_train)", td, points, train)
        kv = k_td_g @ v
        mean = jnp.einsum("mj,tj,jr->tmr", kv, eigen.growth(tau, n), v.T @ y)
    mean = out.from_matrix(mean).reshape(t_shape + out.shape)
    if not compute_cov:
        return Gaussian(mean, None)
    nngp_dd = (
        kernel if g == "nngp" else square_kernel("kernel_fn(x_train, None)", k_dd.nngp, layout)
    )
    if k_td is None:
        if g == "nngp":
            coef = eigen.clipped[None] * eigen.decay(2 * tau, n)
            cov = jnp.einsum("ij,tj,kj->tik", v, coef, v)
        else:
            e = jnp.einsum("ij,tj,kj->tik", v, eigen.decay(tau, n), v)
            cov = jnp.einsum("tij,jk,tkl->til", e, nngp_dd, e)
    else:
        assert kv is not None  # made with `mean` above
        k_tt = kernel_to_matrix("kernel_fn(x_test, None)", nngp_tt, points, points)
        if g == "nngp":
            cov = k_tt[None] - jnp.einsum("mj,tj,lj->tml", kv, eigen.growth(2 * tau, n), kv)
        else:
            nngp_td = kernel_to_matrix("kernel_fn(x_test, x_train)", k_td.nngp, points, train)
            # T = Θ_td A^-1 (I - E(t)), one (M, N) matrix per time.
            t_mat = jnp.einsum("mj,tj,kj->tmk", kv, eigen.growth(tau, n), v)
            cross = jnp.einsum("tmk,lk->tml", t_mat, nngp_td)
            cov = k_tt[None] + jnp.einsum("tmj,jk,tlk->tml", t_mat, nngp_dd, t_mat)
            cov = cov - cross - jnp.swapaxes(cross, 1, 2)
    cov = cov_from_matrix(cov, points)
    return Gaussian(mean, cov.reshape(t_shape + cov.shape[1:]))
