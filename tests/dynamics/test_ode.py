"""`gradient_descent` with a user `diffrax.SaveAt`: dense output, end time, solver steps."""

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eqntk import dynamics

from .helpers import problem


MSE = lambda f, y: 0.5 * jnp.mean((f - y) ** 2)
CE = lambda f, y: -jnp.mean(jax.nn.softmax(y) * jax.nn.log_softmax(f))


@pytest.mark.parametrize("momentum", [None, 0.9])
def test_dense_output_matches_saved_times(getkey, momentum):
    parts, y, f = problem(getkey())
    tdd, ttd, _ = parts["ntk"]
    f0, g0 = f[:7], f[7:]
    ode = dynamics.gradient_descent(CE, tdd, y, 0.7, momentum)
    t = jnp.array([[0.0, 0.5], [3.0, 8.0]])
    saved = ode(t, f0, g0, ttd)
    solution = ode(8.0, f0, g0, ttd, saveat=dfx.SaveAt(dense=True))
    assert solution.ts is None and solution.outputs is None
    dense = solution.evaluate(t)
    # The same steps (same end time), and diffrax saves `ts` by the same interpolation.
    for field in ("fx_train", "fx_test", "qx_train", "qx_test"):
        want, got = getattr(saved, field), getattr(dense, field)
        assert (want is None) == (momentum is None and field.startswith("q"))
        if want is not None:
            assert got.shape == want.shape
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_t1_and_ts_match_saved_times(getkey):
    parts, y, f = problem(getkey())
    tdd, ttd, _ = parts["ntk"]
    f0, g0 = f[:7], f[7:]
    ode = dynamics.gradient_descent(CE, tdd, y, 0.5)
    t = jnp.array([0.0, 2.0, 5.0])
    saved = ode(t, f0, g0, ttd)
    last = ode(5.0, f0, g0, ttd, saveat=dfx.SaveAt(t1=True))
    np.testing.assert_allclose(last.ts, [5.0], rtol=1e-12)
    np.testing.assert_allclose(last.outputs.fx_train[0], saved.fx_train[-1], rtol=1e-12)
    np.testing.assert_allclose(last.outputs.fx_test[0], saved.fx_test[-1], rtol=1e-12)
    both = ode(5.0, f0, g0, ttd, saveat=dfx.SaveAt(t0=True, ts=jnp.array([2.0])))
    np.testing.assert_allclose(both.ts, [0.0, 2.0], rtol=1e-12)
    np.testing.assert_allclose(both.outputs.fx_test, saved.fx_test[:2], rtol=1e-10)


def test_steps(getkey):
    parts, y, f = problem(getkey())
    tdd = parts["ntk"][0]
    ode = dynamics.gradient_descent(MSE, tdd, y, 0.5, max_steps=256)
    solution = ode(6.0, f[:7], saveat=dfx.SaveAt(steps=True))
    assert solution.ts.shape == (256,)
    done = jnp.isfinite(solution.ts)
    n = int(done.sum())
    ts = solution.ts[:n]
    assert 1 < n < 256 and bool(jnp.all(~done[n:])) and bool(jnp.all(jnp.diff(ts) > 0))
    np.testing.assert_allclose(ts[-1], 6.0, rtol=1e-12)
    exact = dynamics.gradient_descent_mse(tdd, y, 0.5)(ts, f[:7])
    # Tolerance as in the closed-form comparison of the `t=` outputs.
    np.testing.assert_allclose(solution.outputs.fx_train[:n], exact.fx_train, atol=1e-7)


def test_jit_vmap_grad(getkey):
    parts, y, f = problem(getkey())
    tdd = parts["ntk"][0]
    f0 = f[:7]

    def dense_loss(lr):
        solution = dynamics.gradient_descent(MSE, tdd, y, lr)(
            2.0, f0, saveat=dfx.SaveAt(dense=True)
        )
        return MSE(solution.evaluate(1.5).fx_train, y)

    def exact_loss(lr):
        return MSE(dynamics.gradient_descent_mse(tdd, y, lr)(1.5, f0).fx_train, y)

    lrs = jnp.array([0.2, 1.0, 3.0])
    values, grads = jax.jit(jax.vmap(jax.value_and_grad(dense_loss)))(lrs)
    want, want_grads = jax.vmap(jax.value_and_grad(exact_loss))(lrs)
    np.testing.assert_allclose(values, want, rtol=1e-6)
    np.testing.assert_allclose(grads, want_grads, rtol=1e-5)


def test_bad_saveat(getkey):
    parts, y, f = problem(getkey())
    tdd = parts["ntk"][0]
    ode = dynamics.gradient_descent(MSE, tdd, y, 0.5)
    # The runtime type check of the test suite answers first; without it, eqntk's own check.
    with pytest.raises(TypeError, match=r"(?s)saveat.*SaveAt"):
        ode(1.0, saveat=jnp.array([1.0]))
    with pytest.raises(ValueError, match=r"`t` must be the end time of the solve .* shape \(2,\)"):
        ode(jnp.array([1.0, 2.0]), saveat=dfx.SaveAt(t1=True))
    with pytest.raises(ValueError, match="must not set `fn`"):
        ode(1.0, saveat=dfx.SaveAt(t1=True, fn=lambda t, y, args: y["f"]))
    with pytest.raises(ValueError, match="a PyTree of `subs` is not supported"):
        subs = (dfx.SubSaveAt(t0=True), dfx.SubSaveAt(t1=True))
        ode(1.0, saveat=dfx.SaveAt(subs=subs))
    with pytest.raises(ValueError, match="`evaluate` needs the dense output"):
        ode(1.0, saveat=dfx.SaveAt(t1=True)).evaluate(0.5)
    with pytest.raises(eqx.EquinoxRuntimeError, match=r"`saveat.ts` must lie between 0 and `t`"):
        ode(1.0, saveat=dfx.SaveAt(ts=jnp.array([0.5, 2.0])))
    with pytest.raises(eqx.EquinoxRuntimeError, match="must not exceed the end time"):
        ode(1.0, saveat=dfx.SaveAt(dense=True)).evaluate(jnp.array([0.5, 1.5]))
    with pytest.raises(eqx.EquinoxRuntimeError, match="needs a positive `learning_rate`"):
        dynamics.gradient_descent(MSE, tdd, y, 0.0)(1.0, saveat=dfx.SaveAt(t1=True))


# 3 test points (carried as outputs) and 9 (carried as an integral until velocities are given).
@pytest.mark.parametrize("m", [3, 9])
def test_momentum_resumes_from_outputs_and_velocities(getkey, m):
    """Solving to t = 1, then from that state (outputs and velocities) for 1.5 more, gives
    the solve to t = 2.5: the state is complete."""
    parts, y, f = problem(getkey(), n=4, m=m)
    tdd, ttd, _ = parts["ntk"]
    f0, g0 = f[:4], f[4:]
    ode = dynamics.gradient_descent(CE, tdd, y, 0.7, 0.9)
    whole = ode(2.5, f0, g0, ttd)
    half = ode(1.0, f0, g0, ttd)
    assert float(jnp.abs(half.qx_train).max()) > 1e-2  # a real velocity to resume from
    resumed = ode(
        1.5, half.fx_train, half.fx_test, ttd, qx_train_0=half.qx_train, qx_test_0=half.qx_test
    )
    for field in ("fx_train", "fx_test", "qx_train", "qx_test"):
        # Two adaptive solves against one: agreement to the solver's tolerance.
        np.testing.assert_allclose(
            getattr(resumed, field), getattr(whole, field), rtol=1e-5, atol=1e-6
        )
    with pytest.raises(ValueError, match="no `momentum`"):
        dynamics.gradient_descent(CE, tdd, y, 0.7)(1.0, f0, qx_train_0=f0)
