"""Bad inputs and numerical edge cases of `eqntk.dynamics`: each gives a clear error or a
correct answer."""

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import lineax as lx
import numpy as np
import pytest

from eqntk import dynamics


MSE = lambda f, y: 0.5 * jnp.mean((f - y) ** 2)
ERRORS = (eqx.EquinoxRuntimeError, jax.errors.JaxRuntimeError)


def _kernel(key, n=6, d=3):
    x = jr.normal(key, (n, d))
    return x @ x.T + 0.1 * jnp.eye(n)


def _with_eigenvalues(key, evals):
    q, _ = jnp.linalg.qr(jr.normal(key, (len(evals), len(evals))))
    k = (q * jnp.asarray(evals)[None]) @ q.T
    return 0.5 * (k + k.T), q


def test_nan_targets_are_named(getkey):
    k, y = _kernel(getkey()), jr.normal(getkey(), (6, 2))
    bad = y.at[2, 1].set(jnp.nan)
    for fn in (dynamics.gp_inference, dynamics.marginal_log_likelihood):
        with pytest.raises(eqx.EquinoxRuntimeError, match="`y_train` holds a non-finite"):
            fn(k, bad)
    with pytest.raises(eqx.EquinoxRuntimeError, match="`y_train` holds a non-finite"):
        dynamics.gradient_descent_mse(k, bad)
    # Traced, under jit.
    with pytest.raises(ERRORS, match="`y_train` holds a non-finite"):
        jax.jit(lambda y: dynamics.gp_inference(k, y)(k, get="nngp").mean)(bad)


def test_nan_kernel_is_named(getkey):
    k, y = _kernel(getkey()), jr.normal(getkey(), (6, 2))
    bad = k.at[1, 1].set(jnp.nan)
    with pytest.raises(eqx.EquinoxRuntimeError, match="`k_train_train` holds a non-finite"):
        dynamics.gp_inference(bad, y)
    with pytest.raises(eqx.EquinoxRuntimeError, match="`k_train_train` holds a non-finite"):
        dynamics.marginal_log_likelihood(bad, y)


def test_ill_conditioned_solve_is_an_error(getkey):
    # Condition number ~1e17: beyond float64, the Cholesky factor may still exist (this seed
    # gives one that does) but K^-1 y is garbage (|K^-1 y| ~ 1e16, training fit off by O(1)).
    evals = jnp.array([1.0, 0.5, 0.3, 0.2, 0.1, 1e-17])
    k, _ = _with_eigenvalues(jr.key(4), evals)
    y = jr.normal(jr.key(14), (6, 2))
    assert jnp.all(jnp.isfinite(jnp.linalg.cholesky(k)))  # the seed's point
    with pytest.raises(eqx.EquinoxRuntimeError, match="diag_reg"):
        dynamics.gp_inference(k, y)
    # A positive `diag_reg` makes it solvable, and the fit then holds to the tolerance.
    predictor = dynamics.gp_inference(k, y, diag_reg=1e-6)
    assert jnp.all(jnp.isfinite(predictor(k, get="nngp").mean))


def test_iterative_solver_on_an_indefinite_kernel_is_an_error(getkey):
    # CG converges (residual ~1e-12) on this indefinite kernel: only the definiteness checks
    # catch it. y along the negative eigenvector makes y^T K^-1 y < 0.
    k, q = _with_eigenvalues(getkey(), jnp.array([-0.5, 1.0, 2.0, 3.0, 4.0, 5.0]))
    y = q[:, :1] + 0.01 * jr.normal(getkey(), (6, 1))
    assert jnp.all(jnp.diagonal(k) > 0)  # a diagonal check alone would not see it
    solver = lx.CG(rtol=1e-10, atol=1e-10)
    with pytest.raises(eqx.EquinoxRuntimeError, match="not positive definite"):
        dynamics.gp_inference(k, y, solver=solver)
    # A negative diagonal entry is caught whatever the targets.
    with pytest.raises(eqx.EquinoxRuntimeError, match="not positive definite"):
        dynamics.gp_inference(_kernel(getkey()) - 3 * jnp.eye(6), y, solver=solver)
    # An unconverged iterative solve is an error too.
    with pytest.raises(eqx.EquinoxRuntimeError, match="did not converge|inaccurate"):
        dynamics.gp_inference(
            _kernel(getkey(), n=12, d=12),
            jr.normal(getkey(), (12, 1)),
            solver=lx.CG(rtol=1e-12, atol=1e-12, max_steps=2),
        )


def test_cg_on_a_good_kernel_passes_the_checks(getkey):
    k, y = _kernel(getkey()), jr.normal(getkey(), (6, 2))
    cg = dynamics.gp_inference(k, y, solver=lx.CG(rtol=1e-10, atol=1e-10))(k, get="nngp")
    # The fit on the training set is K K^-1 y = y, to CG's tolerance (times cond(K) ~ 1e3).
    np.testing.assert_allclose(cg.mean, y, atol=1e-6)


def test_mse_infinite_time_keeps_the_null_space(getkey):
    # A repeated training point with different labels: K is singular (eigenvalue ~1e-15),
    # and gradient flow cannot fit both labels. The null direction (e0 - e6)/sqrt(2) keeps
    # its initial value; the rest of the residual is fitted.
    x = jr.normal(getkey(), (6, 3))
    x = jnp.concatenate([x, x[:1]])
    k = x @ x.T
    y = jr.normal(getkey(), (7, 2))
    y = y.at[6].set(y[0] + 1.0)
    f0 = jnp.full((7, 2), 0.5)
    predictor = dynamics.gradient_descent_mse(k, y)
    limit = predictor(None, fx_train_0=f0).fx_train
    at_inf = predictor(jnp.inf, fx_train_0=f0).fx_train
    evals, evecs = jnp.linalg.eigh(k)
    null = evecs[:, jnp.abs(evals) < 1e-10 * evals[-1]]
    assert null.shape[1] == 4  # rank 3 of 7 points
    expected = y + null @ (null.T @ (f0 - y))
    # Rounding of the eigenvectors (~1e-15 relative) only.
    np.testing.assert_allclose(limit, expected, atol=1e-10)
    np.testing.assert_allclose(at_inf, expected, atol=1e-10)
    # A long but finite time approaches the same limit.
    np.testing.assert_allclose(predictor(1e6, fx_train_0=f0).fx_train, expected, atol=1e-8)


def test_ode_nan_loss_from_the_start(getkey):
    k, y = _kernel(getkey()), jr.normal(getkey(), (6, 2))
    loss = lambda f, y: jnp.nan * jnp.sum(f)
    with pytest.raises(eqx.EquinoxRuntimeError, match="cannot start"):
        dynamics.gradient_descent(loss, k, y)(1.0)
    momentum = dynamics.gradient_descent(loss, k, y, momentum=0.9)
    with pytest.raises(eqx.EquinoxRuntimeError, match="cannot start"):
        momentum(1.0)
    backsolve = dynamics.gradient_descent(loss, k, y, adjoint=dfx.BacksolveAdjoint())
    with pytest.raises(eqx.EquinoxRuntimeError, match="cannot start"):
        backsolve(1.0)


def test_ode_nan_loss_later_stops_early(getkey):
    k, y = _kernel(getkey()), jnp.ones((6, 2))
    # Finite until an output passes 0.5 (from 0 towards 1), then NaN: the value, while the
    # gradient stays finite, so only the check of accepted states can see it.
    loss = lambda f, y: MSE(f, y) + jnp.where(jnp.max(f) > 0.5, jnp.nan, 0.0)
    predictor = dynamics.gradient_descent(loss, k, y, max_steps=1000)
    with pytest.raises(eqx.EquinoxRuntimeError, match="became non-finite"):
        predictor(100.0)
    # Before the threshold is reached, the solve is the MSE one.
    np.testing.assert_allclose(
        predictor(0.01).fx_train, dynamics.gradient_descent_mse(k, y)(0.01).fx_train, rtol=1e-6
    )


def test_ode_infinite_time_is_rejected(getkey):
    k, y = _kernel(getkey()), jr.normal(getkey(), (6, 2))
    predictor = dynamics.gradient_descent(MSE, k, y)
    with pytest.raises(ValueError, match="`t` must be finite non-negative times, got inf"):
        predictor(jnp.inf)
    # An array of times is traced (a runtime check).
    with pytest.raises(ERRORS, match="`t` must be finite"):
        predictor(np.array([1.0, np.inf]))
    with pytest.raises(ERRORS, match="`t` must be finite"):
        jax.jit(lambda t: predictor(t).fx_train)(jnp.array([1.0, jnp.inf]))


def test_ode_non_psd_kernel_is_rejected(getkey):
    k, y = _kernel(getkey()), jr.normal(getkey(), (6, 2))
    with pytest.raises(eqx.EquinoxRuntimeError, match="not positive semi-definite"):
        dynamics.gradient_descent(MSE, k - 3 * jnp.eye(6), y)
    # A larger kernel with one negative eigenvalue of a tenth of the largest, in a random
    # direction: found by the few Lanczos steps of the check.
    x = jr.normal(getkey(), (40, 8))
    k = x @ x.T
    v = jr.normal(getkey(), (40,))
    v = v / jnp.linalg.norm(v)
    lam = jnp.linalg.eigvalsh(k)[-1]
    bad = k - (v @ k @ v + 0.1 * lam) * jnp.outer(v, v)
    assert jnp.linalg.eigvalsh(bad)[0] < -0.05 * lam  # the premise
    with pytest.raises(eqx.EquinoxRuntimeError, match="not positive semi-definite"):
        dynamics.gradient_descent(MSE, bad, jr.normal(getkey(), (40, 2)))
    # A singular PSD kernel (rounding below zero) is accepted.
    x = jr.normal(getkey(), (6, 2))
    dynamics.gradient_descent(MSE, x @ x.T, y)


def test_one_dimensional_targets(getkey):
    k, y2 = _kernel(getkey(), n=7), jr.normal(getkey(), (7, 1))
    y = y2[:, 0]
    k_td, k_tt = k[:3], k[:3, :3]
    gp = dynamics.gp_inference(k, y, diag_reg=1e-3)(k_td, k_tt, get="nngp")
    gp2 = dynamics.gp_inference(k, y2, diag_reg=1e-3)(k_td, k_tt, get="nngp")
    assert gp.mean.shape == (3,) and gp.cov.shape == (3, 3)
    # Same arithmetic as one column: equal up to rounding.
    np.testing.assert_allclose(gp.mean, gp2.mean[:, 0], rtol=1e-12)
    np.testing.assert_allclose(gp.cov, gp2.cov, rtol=1e-12)
    mll, mll2 = (dynamics.marginal_log_likelihood(k, t) for t in (y, y2))
    np.testing.assert_allclose(mll, mll2, rtol=1e-12)

    times = jnp.array([0.5, 2.0])
    mse = dynamics.gradient_descent_mse(k, y)(times, 0.0, jnp.zeros(3), k_td)
    mse2 = dynamics.gradient_descent_mse(k, y2)(times, 0.0, jnp.zeros((3, 1)), k_td)
    assert mse.fx_train.shape == (2, 7) and mse.fx_test.shape == (2, 3)
    np.testing.assert_allclose(mse.fx_train, mse2.fx_train[..., 0], rtol=1e-12)
    np.testing.assert_allclose(mse.fx_test, mse2.fx_test[..., 0], rtol=1e-12)

    ode = dynamics.gradient_descent(MSE, k, y)(times, 0.0, jnp.zeros(3), k_td)
    assert ode.fx_train.shape == (2, 7) and ode.fx_test.shape == (2, 3)
    # The ODE solve (rtol 1.4e-8) against the closed form.
    np.testing.assert_allclose(ode.fx_train, mse.fx_train, rtol=1e-6, atol=1e-9)

    kernel_fn = lambda x1, x2=None, get=None: _linear_kernels(x1, x2)
    x_train, x_test = jr.normal(getkey(), (7, 3)), jr.normal(getkey(), (3, 3))
    ens = dynamics.gradient_descent_mse_ensemble(kernel_fn, x_train, y, diag_reg=1e-3)
    ens2 = dynamics.gradient_descent_mse_ensemble(kernel_fn, x_train, y2, diag_reg=1e-3)
    for t in (None, times):
        out, out2 = ens(t, x_test, get="ntk"), ens2(t, x_test, get="ntk")
        assert out.mean.shape == out2.mean.shape[:-1]
        np.testing.assert_allclose(out.mean, out2.mean[..., 0], rtol=1e-10)
    assert ens(None, None, get="nngp").mean.shape == (7,)


def _linear_kernels(x1, x2):
    import collections

    x2 = x1 if x2 is None else x2
    nngp = x1 @ x2.T / x1.shape[1] + 0.1
    Pair = collections.namedtuple("Pair", ["nngp", "ntk"])
    return Pair(nngp, 2 * nngp)
