"""`gradient_descent`: function-space gradient-descent dynamics for any loss, with diffrax."""

from collections.abc import Callable

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from ._common import (
    Axes,
    Layout,
    kernel_to_matrix,
    layout_of,
    nonnegative,
    square_kernel,
    test_points,
)
from ._mse import as_times
from ._trajectory import Trajectory


class ODEPredictor(eqx.Module):
    """Gradient-descent dynamics in function space on a training set, as returned by
    [`eqntk.dynamics.gradient_descent`][]."""

    loss: Callable = eqx.field(static=True)
    k: Float[Array, "p p"]
    y_train: Float[Array, "..."]
    learning_rate: Float[Array, ""]
    momentum: Float[Array, ""] | None
    layout: Layout
    solver: dfx.AbstractSolver
    stepsize_controller: dfx.AbstractStepSizeController
    adjoint: dfx.AbstractAdjoint
    progress_meter: dfx.AbstractProgressMeter
    dt0: float | None = eqx.field(static=True)
    max_steps: int | None = eqx.field(static=True)

    def _grad(self, f: Float[Array, "p c"]) -> Float[Array, "p c"]:
        loss = lambda f: self.loss(self.layout.from_matrix(f), self.y_train)
        return jax.grad(loss)(f)

    def _field(self, tau, state, args):
        # The test outputs never feed back into the dynamics: they are linear functionals
        # `f_test = f_test_0 - k_td G` of the integrated loss gradient `G` (and `q_test =
        # -k_td H` with momentum), so the solve carries (N, K) integrals instead of test
        # outputs and applies `k_td` once, at the saved times.
        g = self._grad(state["f"])
        if self.momentum is None:
            out = {"f": -self.k @ g}
            if "G" in state:
                out["G"] = g
            return out
        c = (self.momentum - 1) / jnp.sqrt(self.learning_rate)
        out = {"f": state["q"], "q": -self.k @ g + c * state["q"]}
        if "P" in state:
            out["P"], out["H"] = state["H"], g + c * state["H"]
        return out

    @eqx.filter_jit
    def __call__(
        self,
        t: Float[ArrayLike, "*times"],
        fx_train_0: Float[ArrayLike, "..."] = 0.0,
        fx_test_0: Float[ArrayLike, "..."] | None = None,
        k_test_train: Float[ArrayLike, "..."] | None = None,
    ) -> Trajectory:
        """The outputs at time(s) `t`, from one ODE solve that saves at every requested time.

        **Arguments:**

        - `t`: a time or an array of non-decreasing times of any shape (continuous steps).
        - `fx_train_0`: the outputs on the training set at $t = 0$ (broadcast to the shape of
          `y_train`).
        - `fx_test_0`: the outputs on the test set at $t = 0$, or `None` for no test set.
        - `k_test_train`: the test-train kernel `(M, N)`, needed with `fx_test_0`.

        **Returns:**

        A [`eqntk.dynamics.Trajectory`][] with leading axes `t.shape` (and `qx_train`,
        `qx_test` with momentum).
        """
        dtype = self.k.dtype
        f0 = self.layout.to_matrix(self.layout.check("fx_train_0", fx_train_0)).astype(dtype)
        times, t_shape = as_times(t, dtype)
        scale = self.learning_rate if self.momentum is None else jnp.sqrt(self.learning_rate)
        taus = times * scale
        zeros = jnp.zeros_like(f0)
        state = {"f": f0} if self.momentum is None else {"f": f0, "q": zeros}
        test = None
        if fx_test_0 is not None:
            if k_test_train is None:
                raise ValueError(
                    "`k_test_train` is needed to predict the test outputs `fx_test_0`."
                )
            points = test_points("k_test_train", k_test_train, self.layout)
            test = self.layout.with_points(points)
            k_td = kernel_to_matrix(
                "k_test_train", k_test_train, points, self.layout.points_shape
            ).astype(dtype)
            g0 = test.to_matrix(test.check("fx_test_0", fx_test_0)).astype(dtype)
            state.update({"G": zeros} if self.momentum is None else {"P": zeros, "H": zeros})
        solution = dfx.diffeqsolve(
            dfx.ODETerm(self._field),
            self.solver,
            t0=jnp.zeros((), dtype),
            t1=jnp.max(taus),
            dt0=self.dt0,
            y0=state,
            saveat=dfx.SaveAt(ts=taus),
            stepsize_controller=self.stepsize_controller,
            adjoint=self.adjoint,
            max_steps=self.max_steps,
            progress_meter=self.progress_meter,
        )
        ys = solution.ys

        def train(a):
            return self.layout.from_matrix(a).reshape(t_shape + self.layout.shape)

        def on_test(a):
            return test.from_matrix(a).reshape(t_shape + test.shape)

        fx_test = qx_test = None
        if test is not None:
            integral = ys["G"] if self.momentum is None else ys["P"]
            fx_test = on_test(g0[None] - jnp.einsum("mp,tpc->tmc", k_td, integral))
            if self.momentum is not None:
                qx_test = on_test(-jnp.einsum("mp,tpc->tmc", k_td, ys["H"]))
        qx_train = None if self.momentum is None else train(ys["q"])
        return Trajectory(train(ys["f"]), fx_test, qx_train, qx_test)


def gradient_descent(
    loss: Callable[[Array, Array], Array],
    k_train_train: Float[ArrayLike, "..."],
    y_train: Float[ArrayLike, "..."],
    learning_rate: float | Float[ArrayLike, ""] = 1.0,
    momentum: float | Float[ArrayLike, ""] | None = None,
    trace_axes: Axes = (-1,),
    *,
    solver: dfx.AbstractSolver = dfx.Tsit5(),
    stepsize_controller: dfx.AbstractStepSizeController | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    dt0: float | None = None,
    max_steps: int | None = 16384,
    adjoint: dfx.AbstractAdjoint = dfx.RecursiveCheckpointAdjoint(),
    progress_meter: dfx.AbstractProgressMeter = dfx.NoProgressMeter(),
) -> ODEPredictor:
    """Gradient-descent training of an infinitely wide network on any loss, as an ODE in
    function space solved with diffrax, as in neural-tangents.

    An infinitely wide network trains as its linearisation, so its training outputs follow
    $\\frac{df}{d\\tau} = -k \\nabla_f L(f, y)$ with $\\tau = \\eta t$ ($k$ the NTK), and test
    outputs $\\frac{df_\\text{test}}{d\\tau} = -k_{td} \\nabla_f L(f, y)$. With momentum $m$,
    as neural-tangents, $\\tau = \\sqrt{\\eta}\\, t$ and
    $\\frac{df}{d\\tau} = q$,
    $\\frac{dq}{d\\tau} = -k \\nabla_f L(f) + \\frac{m - 1}{\\sqrt\\eta} q$, $q(0) = 0$
    (the same with $k_{td}$ on the test set). For the MSE loss this reproduces
    [`eqntk.dynamics.gradient_descent_mse`][].

    **Arguments:**

    - `loss`: `loss(fx, y_train) -> scalar`, differentiable in `fx`, e.g.
      `lambda f, y: -jnp.mean(y * jax.nn.log_softmax(f))` (cross-entropy, a mean over all
      entries as in neural-tangents) or `lambda f, y: 0.5 * jnp.mean((f - y) ** 2)`.
    - `k_train_train`: the train-train NTK `(N, N)` (in general the non-trace axes of `y_train`
      interleaved).
    - `y_train`: the training targets, e.g. `(N, K)`.
    - `learning_rate`: $\\eta \\geq 0$.
    - `momentum`: $m$, or `None` for plain gradient descent.
    - `trace_axes`: the output axes over which the kernel is the identity.
    - `solver`: a diffrax ODE solver (default `dfx.Tsit5()`).
    - `stepsize_controller`: a diffrax step-size controller; default
      `dfx.PIDController(rtol, atol)`.
    - `rtol`, `atol`: tolerances of the default controller; default $1.4 \\cdot 10^{-8}$ (that
      of neural-tangents) or, if larger, $10\\epsilon$ of the kernel's dtype ($1.2 \\cdot 10^{-6}$
      in float32, where tighter tolerances are below the rounding error).
    - `dt0`: the initial step, or `None` to let the controller choose.
    - `max_steps`: the most steps of one solve.
    - `adjoint`: how to differentiate the solve (default: backpropagation through it with
      recursive checkpointing).
    - `progress_meter`: e.g. `dfx.TqdmProgressMeter()` for long solves.

    **Returns:**

    An [`eqntk.dynamics.ODEPredictor`][], called as
    `predictor(t, fx_train_0=0., fx_test_0=None, k_test_train=None)`.

    **Example:**

    ```python
    import jax
    import jax.numpy as jnp
    import jax.random as jr
    from eqntk.dynamics import gradient_descent

    x = jr.normal(jr.key(0), (8, 3))
    k = x @ x.T + jnp.eye(8)
    y = jax.nn.one_hot(jnp.arange(8) % 2, 2)
    loss = lambda f, y: -jnp.mean(y * jax.nn.log_softmax(f))
    out = gradient_descent(loss, k, y, learning_rate=1.0)(jnp.array([1.0, 10.0]))
    assert out.fx_train.shape == (2, 8, 2)
    ```
    """
    y = jnp.asarray(y_train)
    layout = layout_of(y, trace_axes)
    k = square_kernel("k_train_train", k_train_train, layout)
    if stepsize_controller is None:
        floor = 10 * float(jnp.finfo(k.dtype).eps)
        stepsize_controller = dfx.PIDController(
            rtol=max(1.4e-8, floor) if rtol is None else rtol,
            atol=max(1.4e-8, floor) if atol is None else atol,
        )
    elif rtol is not None or atol is not None:
        raise ValueError("Pass `rtol` and `atol` to your `stepsize_controller` instead.")
    return ODEPredictor(
        loss=loss,
        k=k,
        y_train=y.astype(k.dtype),
        learning_rate=nonnegative("learning_rate", learning_rate, k.dtype),
        momentum=None if momentum is None else nonnegative("momentum", momentum, k.dtype),
        layout=layout,
        solver=solver,
        stepsize_controller=stepsize_controller,
        adjoint=adjoint,
        progress_meter=progress_meter,
        dt0=dt0,
        max_steps=max_steps,
    )
