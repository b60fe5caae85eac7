"""`gradient_descent_mse`: closed-form gradient-flow dynamics of the MSE loss."""

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from .._callable import AbstractCallable
from ._common import (
    Axes,
    Layout,
    check_finite,
    nonnegative,
    test_problem,
    training_problem,
)
from ._eigen import Eigen
from ._trajectory import Trajectory


def as_times(
    t: Any, dtype: Any, finite: bool = False
) -> tuple[Float[Array, " t"], tuple[int, ...]]:
    """Times of any shape, flattened, checked to be non-negative (and finite, with `finite`);
    and their shape. Concrete times are checked at once, traced ones through `eqx.error_if`."""
    expected = "finite non-negative" if finite else "non-negative (`inf` included)"
    try:
        concrete = np.asarray(t)
    except jax.errors.TracerArrayConversionError:
        concrete = None
    if concrete is not None:
        if not np.issubdtype(concrete.dtype, np.number):
            raise TypeError(
                f"`t` must be a number or an array of times, got dtype {concrete.dtype}."
            )
        bad = np.isnan(concrete) | (concrete < 0) | (finite & np.isinf(concrete))
        if np.any(bad):
            raise ValueError(f"`t` must be {expected} times, got {concrete[bad].ravel()[0]}.")
    t = jnp.asarray(t)
    if not jnp.issubdtype(t.dtype, jnp.number):
        raise TypeError(f"`t` must be a number or an array of times, got dtype {t.dtype}.")
    t = t.astype(dtype)
    bad = jnp.isnan(t) | (t < 0) | (finite & jnp.isinf(t))
    t = eqx.error_if(t, jnp.any(bad), f"`t` must be {expected} times.")
    return t.reshape(-1), t.shape


class MSEPredictor(AbstractCallable):
    """The closed-form MSE training dynamics on a training set, as returned by
    [`eqntk.dynamics.gradient_descent_mse`][].

    It holds the eigendecomposition of the regularised train-train kernel, computed once and
    reused for every call (any times, initial outputs and test set).
    """

    eigen: Eigen
    y: Float[Array, "p c"]
    learning_rate: Float[Array, ""]
    layout: Layout

    @eqx.filter_jit
    def __call__(
        self,
        t: Float[ArrayLike, "*times"] | None = None,
        fx_train_0: Float[ArrayLike, "..."] = 0.0,
        fx_test_0: Float[ArrayLike, "..."] | None = None,
        k_test_train: Float[ArrayLike, "..."] | None = None,
    ) -> Trajectory:
        """The outputs at time(s) `t` of gradient flow on $L = \\frac{1}{2n}\\|f - y\\|^2$.

        With $A = k + \\lambda I = V \\Lambda V^\\top$, $n$ = `y_train.size`, $\\eta$ the learning
        rate and $E(t) = e^{-\\eta t A / n}$:

        - $f_\\text{train}(t) = y + E(t) (f_0 - y)$;
        - $f_\\text{test}(t) = f_{\\text{test},0} + k_{td} A^{-1} (I - E(t)) (y - f_0)$;
        - $t$ = `None` (or `inf`) is $t = \\infty$: $f_\\text{train} = y + P_0 (f_0 - y)$,
          $f_\\text{test} = f_{\\text{test},0} + k_{td} A^{+} (y - f_0)$.

        **Null space.** Eigenvalues of $A$ within $100 P \\epsilon \\lambda_\\max$ of zero
        (a singular kernel, e.g. a repeated training input, with `diag_reg=0`) are taken as
        zero: their eigen-directions do not move at any time, so the training outputs keep
        their initial values there ($P_0$ is the projection on that null space) and $A^{+}$
        is the pseudo-inverse. With $P_0 = 0$ this is $f_\\text{train}(\\infty) = y$.

        **Arguments:**

        - `t`: a time or an array of non-negative times of any shape (continuous steps, in
          units of the learning rate; `inf` allowed), or `None` for infinite time.
        - `fx_train_0`: the outputs on the training set at $t = 0$, shape of `y_train` (or
          broadcastable to it).
        - `fx_test_0`: the outputs on the test set at $t = 0$, or `None` for no test set.
        - `k_test_train`: the test-train kernel `(M, N)`, needed with `fx_test_0`.

        **Returns:**

        A [`eqntk.dynamics.Trajectory`][] with `fx_train` (and `fx_test`), with leading axes
        `t.shape`.
        """
        dtype = self.y.dtype
        f0 = self.layout.check("fx_train_0", fx_train_0)
        f0 = self.layout.to_matrix(check_finite("fx_train_0", f0)).astype(dtype)
        residual = self.y - f0
        n = self.y.size  # the MSE normalisation: the number of training outputs
        if t is None:
            # y + P_0 (f_0 - y): exactly y when the null space is empty.
            tau, t_shape = None, ()
            fx_train = self.y[None] - self.eigen.apply(self.eigen.null(), residual)
        else:
            tau, t_shape = as_times(t, dtype)
            tau = tau * self.learning_rate
            fx_train = f0[None] - self.eigen.apply(self.eigen.expm1(tau, n), residual)
        fx_train = self.layout.from_matrix(fx_train).reshape(t_shape + self.layout.shape)
        if fx_test_0 is None:
            return Trajectory(fx_train)
        test, k_td, g0 = test_problem(self.layout, fx_test_0, k_test_train)
        g0 = check_finite("fx_test_0", g0).astype(dtype)
        coef = self.eigen.inverse() if tau is None else self.eigen.growth(tau, n)
        fx_test = g0[None] + self.eigen.apply(coef, residual, k_td.astype(dtype))
        fx_test = test.from_matrix(fx_test).reshape(t_shape + test.shape)
        return Trajectory(fx_train, fx_test)


@eqx.filter_jit
def gradient_descent_mse(
    k_train_train: Float[ArrayLike, "..."],
    y_train: Float[ArrayLike, "..."],
    learning_rate: float | Float[ArrayLike, ""] = 1.0,
    diag_reg: float | Float[ArrayLike, ""] = 0.0,
    diag_reg_absolute_scale: bool = False,
    trace_axes: Axes = (-1,),
) -> MSEPredictor:
    """Closed-form continuous-time gradient descent on the MSE loss, as in neural-tangents.

    An infinitely wide network trained by gradient flow is its linearisation, whose outputs
    follow $df/dt = -\\frac{\\eta}{n} k (f - y)$ on the training set (loss
    $\\frac{1}{2n}\\|f - y\\|^2$, $n$ = `y_train.size`, $k$ the NTK; with the NNGP this is the
    dynamics of training the readout layer only). The solution is a matrix exponential, computed
    here through one eigendecomposition of $k + \\lambda I$ that the returned predictor reuses
    for every time.

    **Arguments:**

    - `k_train_train`: the train-train kernel `(N, N)` (in general the non-trace axes of
      `y_train` interleaved).
    - `y_train`: the training targets, e.g. `(N, K)`, or `(N,)` (then outputs are 1-D).
    - `learning_rate`: $\\eta \\geq 0$; times are in units of it (only $\\eta t$ matters).
    - `diag_reg`, `diag_reg_absolute_scale`: the diagonal regulariser $\\lambda$ added to the
      kernel, as in [`eqntk.dynamics.gp_inference`][].
    - `trace_axes`: the output axes over which the kernel is the identity.

    **Returns:**

    A [`eqntk.dynamics.MSEPredictor`][], called as
    `predictor(t, fx_train_0=0., fx_test_0=None, k_test_train=None)`. Singular kernels are
    allowed: their null space keeps its initial outputs (see `MSEPredictor.__call__`).
    Non-finite targets, kernels or initial outputs, and a kernel with an eigenvalue below
    $-100 P \\epsilon \\lambda_\\max$ (not positive semi-definite), raise errors.

    **Example:**

    ```python
    import jax.numpy as jnp
    import jax.random as jr
    from eqntk.dynamics import gradient_descent_mse

    x = jr.normal(jr.key(0), (8, 3))
    k = x @ x.T + jnp.eye(8)
    y = jr.normal(jr.key(1), (8, 2))
    out = gradient_descent_mse(k, y)(jnp.array([0.0, 10.0, 100.0]), fx_train_0=0.0)
    assert out.fx_train.shape == (3, 8, 2)
    ```
    """
    a, y, layout = training_problem(
        k_train_train, y_train, diag_reg, diag_reg_absolute_scale, trace_axes
    )
    eigen = Eigen("k_train_train", a)
    lr = nonnegative("learning_rate", learning_rate, a.dtype)
    return MSEPredictor(eigen, y, lr, layout)
