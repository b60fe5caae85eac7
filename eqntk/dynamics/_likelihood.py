"""`marginal_log_likelihood`: the evidence of a Gaussian-process model, for fitting it."""

import equinox as eqx
import jax.numpy as jnp
import lineax as lx
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from ._common import Axes, training_problem
from ._solve import Factorisation


@eqx.filter_jit
def marginal_log_likelihood(
    k_train_train: Float[ArrayLike, "..."],
    y_train: Float[ArrayLike, "..."],
    diag_reg: float | Float[ArrayLike, ""] = 0.0,
    diag_reg_absolute_scale: bool = False,
    trace_axes: Axes = (-1,),
) -> Float[Array, ""]:
    """The log marginal likelihood of the targets under the Gaussian process with this kernel.

    With $A = k + \\lambda I$ (the regulariser as in [`eqntk.dynamics.gp_inference`][]; with
    `diag_reg_absolute_scale`, $\\lambda$ is the variance of Gaussian observation noise) and the
    targets' $C$ trace-axis columns $y_c \\in \\mathbb{R}^P$ independent,
    $$\\log p(y) = -\\tfrac12 \\sum_c y_c^\\top A^{-1} y_c - \\tfrac{C}{2} \\log\\det A
    - \\tfrac{PC}{2} \\log 2\\pi.$$
    One lineax Cholesky factorisation of $A$ gives both the solve and the log-determinant; the
    result is differentiable with respect to the kernel (and so, through
    [`eqntk.limit`][], the network's `W_std`, `b_std`, ...), the targets and `diag_reg`, so
    that they can be fitted by gradient ascent.

    **Arguments:**

    - `k_train_train`: the train-train kernel `(N, N)` (NNGP for the Bayesian network).
    - `y_train`: the training targets, e.g. `(N, K)`.
    - `diag_reg`, `diag_reg_absolute_scale`: the diagonal regulariser.
    - `trace_axes`: the output axes over which the kernel is the identity.

    **Returns:**

    $\\log p(y)$, a 0-d array. Non-finite targets or kernels, a kernel that is not positive
    definite and an inaccurate solve raise errors, as in [`eqntk.dynamics.gp_inference`][].

    **Example:**

    ```python
    import jax
    import jax.numpy as jnp
    from eqntk.dynamics import marginal_log_likelihood

    k = jnp.array([[2.0, 0.5], [0.5, 1.0]])
    y = jnp.array([[1.0], [-1.0]])
    noise_grad = jax.grad(lambda s: marginal_log_likelihood(k, y, s, True))(0.1)
    assert jnp.isfinite(noise_grad)
    ```
    """
    a, y, _ = training_problem(
        k_train_train, y_train, diag_reg, diag_reg_absolute_scale, trace_axes
    )
    factor = Factorisation("k_train_train", a, lx.Cholesky())
    p, c = y.shape
    fit = jnp.sum(y * factor.solve_targets(y))
    return -0.5 * fit - 0.5 * c * factor.logdet() - 0.5 * p * c * np.log(2 * np.pi)
