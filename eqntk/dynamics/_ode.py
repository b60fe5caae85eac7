"""`gradient_descent`: function-space gradient-descent dynamics for any loss, with diffrax."""

from collections.abc import Callable
from typing import Any

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from .._callable import AbstractCallable
from ._common import (
    Axes,
    Layout,
    check_psd,
    layout_of,
    nonnegative,
    square_kernel,
    test_problem,
)
from ._mse import as_times
from ._trajectory import Trajectory


# The default `fn` of diffrax's `SaveAt`: save the state itself.
_SAVE_STATE = dfx.SubSaveAt(t1=True).fn


class _Readout(eqx.Module):
    """Network outputs from saved solver states (see `_Field` for what the states hold)."""

    layout: Layout
    test: Layout | None
    k_td: Float[Array, "m p"] | None
    g0: Float[Array, "m c"] | None
    momentum: bool = eqx.field(static=True)

    def __call__(self, ys, t_shape: tuple[int, ...]) -> Trajectory:
        outputs, velocities = ys if self.momentum else (ys, None)
        n_train = self.layout.n_points

        def read(rows, layout):
            return layout.from_matrix(rows).reshape(t_shape + layout.shape)

        def train(a):
            return read(jnp.swapaxes(a[..., :n_train], -1, -2), self.layout)

        def test(a, offset=None):
            rows = jnp.swapaxes(a[..., n_train:], -1, -2)
            if self.k_td is not None:
                # The integral `G` of the loss gradient: `f_test = f_test_0 - k_td G` (and
                # `q_test = -k_td H` for its velocity `H`).
                rows = -jnp.einsum("mp,tpc->tmc", self.k_td, rows)
                if offset is not None:
                    rows = rows + offset[None]
            return read(rows, self.test)

        fx_test = qx_test = None
        if self.test is not None:
            fx_test = test(outputs, self.g0)
            if self.momentum:
                qx_test = test(velocities)
        qx_train = train(velocities) if self.momentum else None
        return Trajectory(train(outputs), fx_test, qx_train, qx_test)


class _Field(eqx.Module):
    """The vector field of the solve.

    Its state is a `(C, R)` matrix, one column per point: the `N` training outputs, then the
    test outputs when there are at most as many test points as training points, or else the
    integral `G` of the loss gradient, from which the test outputs are
    `f_test = f_test_0 - k_td G` at the saved times (they never feed back into the
    dynamics). Whichever has fewer columns is carried: the solver's work per step (stages,
    error norm, interpolation at saved times) is proportional to the state's size. With
    momentum the state is `(outputs, velocities)`, both laid out alike.

    The layout is what makes the solve fast on CPU: one stacked array is cheaper for the
    solver than several, and the kernel product `g^T W` (with `W = [k; k_td]^T` transposed
    once, before the solve) is a row-major product that XLA:CPU runs 1.7x faster than
    `[k; k_td] g`. Together, on the benchmark problem (500 training and 100 test points, 10
    classes), the solve takes half the time of a `(P, C)` state holding the integral in its
    own array.
    """

    loss: Callable = eqx.field(static=True)
    y_train: Float[Array, "..."]
    layout: Layout
    columns: Float[Array, "p r"]
    integral: bool = eqx.field(static=True)
    momentum_decay: Float[Array, ""] | None

    def _loss_and_grad(self, outputs: Float[Array, "c r"]) -> tuple[Array, Array]:
        loss = lambda f: self.loss(self.layout.from_matrix(f.T), self.y_train)
        return jax.value_and_grad(loss)(outputs[:, : self.layout.n_points])

    def nonfinite(self, state) -> Array:
        """Whether `state`, or the loss or its gradient at its outputs, is NaN or infinite.

        Checked on the initial state and, through a diffrax event, on the state of every
        accepted step: a trial step into a region where the loss is not finite is rejected
        by the step-size controller (its error estimate is infinite) and is no failure, but
        an accepted state where it is not finite cannot be continued from.
        """
        outputs = state if self.momentum_decay is None else state[0]
        value, g = self._loss_and_grad(outputs)
        leaves = jax.tree.leaves(state) + [value, g]
        return ~jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in leaves]))

    def _force(self, outputs: Float[Array, "c r"]) -> Float[Array, "c r"]:
        # `columns` is `k^T` (no test set, or with the integral) or `[k; k_td]^T`.
        _, g = self._loss_and_grad(outputs)
        force = -(g @ self.columns)
        return jnp.concatenate([force, g], axis=1) if self.integral else force

    def __call__(self, tau, state, args):
        if self.momentum_decay is None:
            return self._force(state)
        outputs, velocities = state
        return velocities, self._force(outputs) + self.momentum_decay * velocities


class ODESolution(eqx.Module):
    """The result of an [`eqntk.dynamics.ODEPredictor`][] called with `saveat=`: the outputs
    at the saved times and, with `SaveAt(dense=True)`, outputs at any time in between.

    **Fields:**

    - `ts`: the training times $t$ of the saved outputs, in the order of diffrax (`t0`, the
      requested `ts`, the solver's steps, `t1`); with `steps=True` the unused slots at the end
      are `inf`. `None` when only the dense output was asked for.
    - `outputs`: a [`eqntk.dynamics.Trajectory`][] with a leading axis matching `ts`, or
      `None` with `ts`.
    - `solution`: the diffrax `Solution` itself (its times are $\\tau = \\eta t$, or
      $\\sqrt\\eta\\, t$ with momentum; its states stack the training outputs and either the
      test outputs or, with more test than training points, the integrated loss gradient), for
      `stats` and `result`.
    """

    ts: Float[Array, " saved"] | None
    outputs: Trajectory | None
    solution: dfx.Solution
    scale: Float[Array, ""]
    readout: _Readout

    @eqx.filter_jit
    def evaluate(self, t: Float[ArrayLike, "*times"]) -> Trajectory:
        """The outputs at time(s) `t` from the dense interpolation of the solve.

        **Arguments:**

        - `t`: a time or an array of times of any shape, between 0 and the end time of the
          solve.

        **Returns:**

        A [`eqntk.dynamics.Trajectory`][] with leading axes `t.shape`.

        **Example:**

        ```python
        import diffrax
        import jax.numpy as jnp
        from eqntk.dynamics import gradient_descent

        loss = lambda f, y: 0.5 * jnp.mean((f - y) ** 2)
        ode = gradient_descent(loss, jnp.eye(3) + 1.0, jnp.ones((3, 1)))
        sol = ode(10.0, saveat=diffrax.SaveAt(dense=True))
        assert sol.evaluate(jnp.array([1.0, 2.5])).fx_train.shape == (2, 3, 1)
        ```
        """
        if self.solution.interpolation is None:
            raise ValueError(
                "`evaluate` needs the dense output of the solve: call the predictor with "
                "`saveat=diffrax.SaveAt(..., dense=True)`."
            )
        times, t_shape = as_times(t, self.scale.dtype, finite=True)
        taus = eqx.error_if(
            times * self.scale,
            jnp.any(times * self.scale > self.solution.t1),
            "`t` must not exceed the end time of the solve.",
        )
        return self.readout(jax.vmap(self.solution.evaluate)(taus), t_shape)


def _solver_saveat(saveat: Any, t_end: Array, scale: Array) -> dfx.SaveAt:
    """The user's `SaveAt` (training times) checked and moved to solver time $\\tau$."""
    if not isinstance(saveat, dfx.SaveAt):
        raise TypeError(f"`saveat` must be a `diffrax.SaveAt` or None, got {type(saveat)}.")
    if saveat.subs is None:
        return saveat
    if not isinstance(saveat.subs, dfx.SubSaveAt):
        raise ValueError(
            "`saveat` must save one set of times (`t0`, `t1`, `ts`, `steps`); a PyTree of "
            f"`subs` is not supported, got {saveat.subs!r}."
        )
    if saveat.subs.fn is not _SAVE_STATE:
        raise ValueError(
            "`saveat` must not set `fn`: the solver's states are integrals, not the outputs; "
            "save the outputs and compute statistics from them."
        )
    if saveat.subs.ts is None:
        return saveat
    ts = saveat.subs.ts.astype(scale.dtype)
    ts = eqx.error_if(
        ts, jnp.any((ts < 0) | (ts > t_end)), "`saveat.ts` must lie between 0 and `t`."
    )
    return eqx.tree_at(lambda s: s.subs.ts, saveat, ts * scale)


class ODEPredictor(AbstractCallable):
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

    @eqx.filter_jit
    def __call__(
        self,
        t: Float[ArrayLike, "*times"] | None = None,
        fx_train_0: Float[ArrayLike, "..."] = 0.0,
        fx_test_0: Float[ArrayLike, "..."] | None = None,
        k_test_train: Float[ArrayLike, "..."] | None = None,
        *,
        qx_train_0: Float[ArrayLike, "..."] | None = None,
        qx_test_0: Float[ArrayLike, "..."] | None = None,
        saveat: dfx.SaveAt | None = None,
    ) -> Trajectory | ODESolution:
        """The outputs at time(s) `t`, from one ODE solve that saves at every requested time;
        or, with `saveat`, what it asks for up to the end time `t`.

        **Arguments:**

        - `t`: a time or an array of non-decreasing, finite, non-negative times of any shape
          (continuous steps); `None` for infinite time: the solve runs until the outputs stop
          changing (`diffrax.steady_state_event`), an error if they do not within
          `max_steps`; with `saveat`, the end time of the solve (a scalar). For
          $t = \\infty$ with the MSE, use [`eqntk.dynamics.gradient_descent_mse`][].
        - `fx_train_0`: the outputs on the training set at $t = 0$ (broadcast to the shape of
          `y_train`).
        - `fx_test_0`: the outputs on the test set at $t = 0$, or `None` for no test set.
        - `k_test_train`: the test-train kernel `(M, N)`, needed with `fx_test_0`.
        - `qx_train_0`, `qx_test_0`: with momentum, the velocities of the outputs at $t = 0$
          (as a `Trajectory`'s `qx_train`, `qx_test` give them: derivatives in the solver's
          time $\\sqrt\\eta\\, t$), to resume a solve; `None` for 0.
        - `saveat`: `None` to save at the times `t`; or a `diffrax.SaveAt` with its times in
          the units of `t` (not scaled by the learning rate): `SaveAt(ts=...)` with times in
          $[0, t]$, `SaveAt(t0=True, t1=True)`, `SaveAt(steps=True)` (every solver step; at most
          `max_steps`), and/or `dense=True` for outputs at any time. `fn` and PyTrees of `subs`
          are not supported. Needs a positive learning rate.

        **Returns:**

        Without `saveat`, a [`eqntk.dynamics.Trajectory`][] with leading axes `t.shape` (and
        `qx_train`, `qx_test` with momentum). With `saveat`, an
        [`eqntk.dynamics.ODESolution`][]: `.ts` and `.outputs` (a `Trajectory` with one leading
        axis) at the saved times, and `.evaluate(t)` with `dense=True`.

        **Raises:**

        An error when the loss or its gradient is not finite at the initial outputs, and when
        it (or the outputs) becomes non-finite at an accepted step: the solve stops at that
        step instead of shrinking its steps until `max_steps` (trial steps into a region where
        the loss is not finite are only rejected, as diffrax does). With
        `diffrax.BacksolveAdjoint` or `ImplicitAdjoint`, which take no events, only the
        initial outputs are checked.

        **Example:**

        ```python
        import diffrax
        import jax.numpy as jnp
        from eqntk.dynamics import gradient_descent

        loss = lambda f, y: 0.5 * jnp.mean((f - y) ** 2)
        ode = gradient_descent(loss, jnp.eye(3) + 1.0, jnp.ones((3, 1)), learning_rate=0.5)
        out = ode(jnp.array([1.0, 4.0]))                      # a Trajectory at t = 1, 4
        sol = ode(4.0, saveat=diffrax.SaveAt(t1=True, dense=True))
        assert jnp.allclose(sol.outputs.fx_train[0], out.fx_train[1])
        assert jnp.allclose(sol.evaluate(1.0).fx_train, out.fx_train[0])
        ```
        """
        dtype = self.k.dtype
        f0 = self.layout.to_matrix(self.layout.check("fx_train_0", fx_train_0)).astype(dtype)
        infinite = t is None
        if infinite and saveat is not None:
            raise ValueError("`saveat` needs a finite end time `t`, got `t=None`.")
        times, t_shape = as_times(0.0 if infinite else t, dtype, finite=True)
        scale = self.learning_rate if self.momentum is None else jnp.sqrt(self.learning_rate)
        taus = times * scale
        if infinite:
            # Infinite time: solve until the outputs stop changing (a steady state).
            solver_saveat = dfx.SaveAt(t1=True)
        elif saveat is None:
            solver_saveat = dfx.SaveAt(ts=taus)
        else:
            if t_shape != ():
                raise ValueError(
                    f"With `saveat`, `t` must be the end time of the solve (a scalar), got "
                    f"shape {t_shape}; put the times to save in `saveat` instead."
                )
            # Saved solver times are divided by the scale to give training times.
            scale = eqx.error_if(scale, scale <= 0, "`saveat` needs a positive `learning_rate`.")
            solver_saveat = _solver_saveat(saveat, times[0], scale)
        if self.momentum is None and (qx_train_0 is not None or qx_test_0 is not None):
            raise ValueError(
                "`qx_train_0` and `qx_test_0` are velocities of gradient descent with "
                "momentum; this ODE has no `momentum`."
            )
        if qx_test_0 is not None and fx_test_0 is None:
            raise ValueError("`qx_test_0` (test velocities) needs `fx_test_0` too.")
        v0 = jnp.zeros_like(f0)
        if qx_train_0 is not None:
            v0 = self.layout.to_matrix(self.layout.check("qx_train_0", qx_train_0)).astype(dtype)
        rows, offset, integral = self.k, f0, False
        test = k_td = g0 = None
        if fx_test_0 is not None:
            test, k_td, g0 = test_problem(self.layout, fx_test_0, k_test_train)
            k_td, g0 = k_td.astype(dtype), g0.astype(dtype)
            # The integral form starts from zero velocity of the test outputs; given ones are
            # carried as they are.
            integral = k_td.shape[0] > self.k.shape[0] and qx_test_0 is None
            if integral:
                offset = jnp.concatenate([f0, jnp.zeros_like(f0)])
                v0 = jnp.concatenate([v0, jnp.zeros_like(v0)])
            else:
                rows, offset = jnp.concatenate([self.k, k_td]), jnp.concatenate([f0, g0])
                w0 = jnp.zeros_like(g0)
                if qx_test_0 is not None:
                    w0 = test.to_matrix(test.check("qx_test_0", qx_test_0)).astype(dtype)
                v0 = jnp.concatenate([v0, w0])
        field = _Field(
            loss=self.loss,
            y_train=self.y_train,
            layout=self.layout,
            columns=rows.T,
            integral=integral,
            momentum_decay=None
            if self.momentum is None
            else (self.momentum - 1) / jnp.sqrt(self.learning_rate),
        )
        state = offset.T if self.momentum is None else (offset.T, v0.T)
        bad_start = field.nonfinite(state)
        start_message = (
            "`loss` or its gradient is not finite (NaN or inf) at the initial outputs "
            "(`fx_train_0`, `fx_test_0`, `y_train`): gradient descent cannot start."
        )
        # Backsolve and implicit adjoints do not support events; with them only the initial
        # state is checked. With the event, a bad start stops the solve at its first step.
        event = None
        if isinstance(self.adjoint, dfx.BacksolveAdjoint | dfx.ImplicitAdjoint):
            state = eqx.error_if(state, bad_start, start_message)
        else:
            event = dfx.Event(lambda tau, y, args, **kwargs: field.nonfinite(y))
        if infinite:
            steady = dfx.steady_state_event()
            nonfinite = (lambda tau, y, args, **kwargs: field.nonfinite(y)) if event else None
            event = dfx.Event(steady if nonfinite is None else (nonfinite, steady))
        solution = dfx.diffeqsolve(
            dfx.ODETerm(field),
            self.solver,
            t0=jnp.zeros((), dtype),
            t1=jnp.asarray(jnp.inf, dtype) if infinite else jnp.max(taus),
            dt0=self.dt0,
            y0=state,
            saveat=solver_saveat,
            stepsize_controller=self.stepsize_controller,
            adjoint=self.adjoint,
            max_steps=self.max_steps,
            progress_meter=self.progress_meter,
            event=event,
        )
        # The only event is a non-finite state, loss or gradient: the solve stopped there.
        # (The two checks exclude each other: only one error can be reported.)
        stopped = solution.result == dfx.RESULTS.event_occurred
        if infinite:
            # Reaching the steady state is the expected stop; only the other event is an error.
            mask = solution.event_mask
            stopped = stopped & mask[0] if isinstance(mask, tuple) else jnp.asarray(False)
        solution = eqx.error_if(solution, stopped & bad_start, start_message)
        solution = eqx.error_if(
            solution,
            stopped & ~bad_start,
            "`loss` or its gradient became non-finite (NaN or inf) during gradient descent, "
            "at the outputs of an accepted solver step (or the outputs themselves did): the "
            "solve stopped there. Check `loss` (e.g. a log of a non-positive value) and "
            "`k_train_train`.",
        )
        # The readout needs `k_td` and `f_test_0` only to turn the integral into test outputs.
        readout = _Readout(
            self.layout,
            test,
            k_td if integral else None,
            g0 if integral else None,
            self.momentum is not None,
        )
        if saveat is None:
            return readout(solution.ys, t_shape)
        saved = solution.ts is not None
        return ODESolution(
            ts=solution.ts / scale if saved else None,
            outputs=readout(solution.ys, solution.ts.shape) if saved else None,
            solution=solution,
            scale=scale,
            readout=readout,
        )


def gradient_descent(
    loss: Callable[[Array, Array], Array],
    k_train_train: Float[ArrayLike, "..."],
    y_train: Float[ArrayLike, "..."],
    learning_rate: float | Float[ArrayLike, ""] = 1.0,
    momentum: float | Float[ArrayLike, ""] | None = None,
    trace_axes: Axes = (-1,),
    *,
    solver: dfx.AbstractSolver = dfx.Dopri5(),
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
    - `y_train`: the training targets, e.g. `(N, K)`, or `(N,)` (then `loss` sees 1-D outputs
      and targets, and the outputs are 1-D).
    - `learning_rate`: $\\eta \\geq 0$.
    - `momentum`: $m$, or `None` for plain gradient descent.
    - `trace_axes`: the output axes over which the kernel is the identity.
    - `solver`: a diffrax ODE solver (default `dfx.Dopri5()`, the Dormand–Prince method of
      neural-tangents' `odeint`; on the benchmark problem it needs fewer steps than `Tsit5`).
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
    `predictor(t, fx_train_0=0., fx_test_0=None, k_test_train=None)` for a
    [`eqntk.dynamics.Trajectory`][] at the times `t`, or with `saveat=diffrax.SaveAt(...)`
    (dense output, `t1`, solver steps...) up to the end time `t` for an
    [`eqntk.dynamics.ODESolution`][]. A kernel that is not positive semi-definite (an
    eigenvalue below $-100 P \\epsilon \\max_i k_{ii}$, found by one Cholesky factorisation)
    raises an error here: gradient descent with it diverges.

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
    k = check_psd("k_train_train", square_kernel("k_train_train", k_train_train, layout))
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
