import collections

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eqntk import dynamics

from .helpers import problem


Pair = collections.namedtuple("Pair", ["nngp", "ntk"])
MSE = lambda f, y: 0.5 * jnp.mean((f - y) ** 2)


def test_infinite_time_is_gp_inference(getkey):
    parts, y, f = problem(getkey())
    tdd, ttd, _ = parts["ntk"]
    f0, g0 = f[:7], f[7:]
    out = dynamics.gradient_descent_mse(tdd, y, 0.5, diag_reg=1e-3)(None, f0, g0, ttd)
    gp = dynamics.gp_inference(tdd, y - f0, 1e-3)(ttd, get="ntk")
    np.testing.assert_array_equal(out.fx_train, y)
    np.testing.assert_allclose(out.fx_test, g0 + gp.mean, rtol=1e-9)
    # ... and the limit of long finite times.
    late = dynamics.gradient_descent_mse(tdd, y, 0.5, diag_reg=1e-3)(1e7, f0, g0, ttd)
    np.testing.assert_allclose(late.fx_test, out.fx_test, rtol=1e-8)


def test_closed_form_is_the_matrix_exponential(getkey):
    parts, y, f = problem(getkey())
    tdd, ttd, _ = parts["ntk"]
    f0 = f[:7]
    t = jnp.array([0.0, 0.3, 4.0])
    out = dynamics.gradient_descent_mse(tdd, y, 2.0)(t, f0)
    n = y.size
    for i, ti in enumerate(t):
        e = jax.scipy.linalg.expm(-2.0 * ti * tdd / n)
        np.testing.assert_allclose(out.fx_train[i], y + e @ (f0 - y), rtol=1e-9, atol=1e-12)


# 3 test points: the solver carries the test outputs; 12 (more than the 7 training points):
# it carries the integral of the loss gradient instead. Both must give the same dynamics.
@pytest.mark.parametrize("n_test", [3, 12])
@pytest.mark.parametrize("momentum", [None, 0.9])
def test_ode_matches_closed_form_mse(getkey, momentum, n_test):
    parts, y, f = problem(getkey(), m=n_test)
    tdd, ttd, _ = parts["ntk"]
    f0, g0 = f[:7], f[7:]
    t = jnp.linspace(0.0, 40.0, 9)
    ode = dynamics.gradient_descent(MSE, tdd, y, 0.7, momentum)(t, f0, g0, ttd)
    if momentum is None:
        exact = dynamics.gradient_descent_mse(tdd, y, 0.7)(t, f0, g0, ttd)
    else:
        # Heavy-ball flow on a quadratic: a linear ODE z' = A z in z = (f - y, f_test, q,
        # q_test), solved by expm.
        n, p = y.size, tdd.shape[0]
        c = (momentum - 1) / jnp.sqrt(0.7)
        force = jnp.concatenate([-tdd / n, -ttd / n])
        force = jnp.concatenate([force, jnp.zeros((p + n_test, n_test))], axis=1)
        eye = jnp.eye(p + n_test)
        a = jnp.block([[jnp.zeros_like(eye), eye], [force, c * eye]])
        z0 = jnp.concatenate([f0 - y, g0, jnp.zeros_like(f0), jnp.zeros_like(g0)])
        zs = jnp.stack([jax.scipy.linalg.expm(a * jnp.sqrt(0.7) * ti) @ z0 for ti in t])
        fs, qs = zs[:, : p + n_test], zs[:, p + n_test :]
        exact = dynamics.Trajectory(fs[:, :p] + y[None], fs[:, p:], qs[:, :p], qs[:, p:])
    # Tolerance: the solver's rtol = atol = 1.4e-8 per step on O(1) outputs, accumulated over
    # up to ~150 steps (with momentum): about 2e-6.
    for field in ("fx_train", "fx_test", "qx_train", "qx_test"):
        want, got = getattr(exact, field), getattr(ode, field)
        assert (want is None) == (got is None) == (momentum is None and field[0] == "q")
        if want is not None:
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=2e-6)


@pytest.mark.parametrize("n_test", [3, 12])
def test_ode_test_outputs_follow_their_own_ode(getkey, n_test):
    # With more test than training points the solver carries the integral of the loss
    # gradient instead of the test outputs; check both against a solve that integrates the
    # test outputs directly (cross-entropy, a nonlinear loss).
    parts, _, f = problem(getkey(), m=n_test)
    tdd, ttd, _ = parts["ntk"]
    labels = jax.nn.one_hot(jnp.arange(7) % 3, 3)
    f0, g0 = jnp.tile(f[:7, :1], (1, 3)), jnp.tile(f[7:, :1], (1, 3))
    ce = lambda f, y: -jnp.mean(y * jax.nn.log_softmax(f))
    t = jnp.array([1.0, 5.0])
    out = dynamics.gradient_descent(ce, tdd, labels, 1.0)(t, f0, g0, ttd)
    grad = jax.grad(ce)

    def step(state, _):
        ft, gt = state
        d = grad(ft, labels)
        return (ft - 1e-3 * tdd @ d, gt - 1e-3 * ttd @ d), None

    # Euler with dt = 1e-3 to t = 1: first-order error ~ dt.
    (ft, gt), _ = jax.lax.scan(step, (f0, g0), None, length=1000)
    np.testing.assert_allclose(out.fx_train[0], ft, atol=1e-3)
    np.testing.assert_allclose(out.fx_test[0], gt, atol=1e-3)


def test_ode_is_differentiable(getkey):
    parts, y, f = problem(getkey())
    tdd = parts["ntk"][0]

    def final_loss(lr, f0):
        out = dynamics.gradient_descent(MSE, tdd, y, lr)(jnp.array(2.0), f0)
        return MSE(out.fx_train, y)

    def exact_loss(lr, f0):
        return MSE(dynamics.gradient_descent_mse(tdd, y, lr)(2.0, f0).fx_train, y)

    g = jax.grad(final_loss, argnums=(0, 1))(0.5, f[:7])
    want = jax.grad(exact_loss, argnums=(0, 1))(0.5, f[:7])
    np.testing.assert_allclose(g[0], want[0], rtol=1e-5)
    np.testing.assert_allclose(g[1], want[1], rtol=1e-5, atol=1e-9)


def test_vmap_over_learning_rates_and_targets(getkey):
    parts, y, f = problem(getkey())
    tdd, ttd, _ = parts["ntk"]
    lrs = jnp.array([0.1, 1.0, 3.0])
    ys = jnp.stack([y, 2 * y, -y])

    @jax.jit
    @jax.vmap
    def run(lr, yy):
        return dynamics.gradient_descent_mse(tdd, yy, lr)(jnp.array([1.0, 2.0]), 0.0).fx_train

    got = run(lrs, ys)
    for i in range(3):
        want = dynamics.gradient_descent_mse(tdd, ys[i], lrs[i])(jnp.array([1.0, 2.0]), 0.0)
        np.testing.assert_allclose(got[i], want.fx_train, rtol=1e-10)


def test_trace_axes_empty_is_the_kronecker_kernel(getkey):
    parts, y, f = problem(getkey(), k=2)
    tdd, ttd, _ = parts["ntk"]
    # trace_axes=() with the kernel Θ ⊗ I, in the interleaved layout (N, N, K, K).
    full_dd = jnp.einsum("ab,ij->aibj", tdd, jnp.eye(2)).transpose(0, 2, 1, 3)
    full_td = jnp.einsum("ab,ij->aibj", ttd, jnp.eye(2)).transpose(0, 2, 1, 3)
    t = jnp.array([0.5, 3.0])
    want = dynamics.gradient_descent_mse(tdd, y)(t, f[:7], f[7:], ttd)
    got = dynamics.gradient_descent_mse(full_dd, y, trace_axes=())(t, f[:7], f[7:], full_td)
    np.testing.assert_allclose(got.fx_train, want.fx_train, rtol=1e-9)
    np.testing.assert_allclose(got.fx_test, want.fx_test, rtol=1e-9)


def test_ensemble_computes_only_needed_kernels(getkey):
    parts, y, _ = problem(getkey())
    x_train, x_test = jnp.zeros((7, 1)), jnp.ones((3, 1))
    calls = []

    def kernel_fn(x1, x2=None, get=None):
        calls.append((x1 is x_train, x2 is None, get))
        which = 0 if x1 is x_train else (1 if x2 is not None else 2)
        if isinstance(get, str):
            return parts[get][which]
        return collections.namedtuple("K", get)(*(parts[g][which] for g in get))

    predict = dynamics.gradient_descent_mse_ensemble(kernel_fn, x_train, y, diag_reg=1e-3)
    out = predict(jnp.array([1.0, 10.0]), x_test, get="ntk")
    assert calls == [(True, True, ("ntk",)), (False, False, ("ntk",))]
    gd = dynamics.gradient_descent_mse(parts["ntk"][0], y, diag_reg=1e-3)
    np.testing.assert_allclose(
        out.mean, gd(jnp.array([1.0, 10.0]), 0.0, 0.0, parts["ntk"][1]).fx_test, rtol=1e-9
    )
    calls.clear()
    predict(None, x_test, get="ntk", compute_cov=True)
    assert calls == [
        (True, True, ("nngp", "ntk")),
        (False, False, ("nngp", "ntk")),
        (False, True, "nngp"),
    ]


def test_max_learning_rate_is_the_stability_edge(getkey):
    parts, y, _ = problem(getkey())
    tdd = parts["ntk"][0]
    lr = dynamics.max_learning_rate(tdd, y.size)
    # One discrete GD step on 0.5*mean((f - y)^2) multiplies the residual by I - lr Θ / n.
    step = jnp.eye(7) - lr * tdd / y.size
    np.testing.assert_allclose(jnp.min(jnp.linalg.eigvalsh(step)), -1.0, rtol=1e-9)


def test_bad_inputs(getkey):
    parts, y, f = problem(getkey())
    tdd, ttd, _ = parts["ntk"]
    with pytest.raises(ValueError, match="`learning_rate` must be finite and non-negative"):
        dynamics.gradient_descent_mse(tdd, y, -1.0)
    with pytest.raises(ValueError, match="`learning_rate` must be finite and non-negative"):
        dynamics.gradient_descent(MSE, tdd, y, -1.0)
    with pytest.raises(ValueError, match=r"`fx_train_0` must have shape \(7, 2\)"):
        dynamics.gradient_descent_mse(tdd, y)(1.0, jnp.zeros((6, 2)))
    with pytest.raises(ValueError, match="`k_test_train` is needed"):
        dynamics.gradient_descent_mse(tdd, y)(1.0, 0.0, f[7:])
    with pytest.raises(ValueError, match=r"`k_train_train` must have shape \(7, 7\)"):
        dynamics.gradient_descent(MSE, tdd[:6], y)
    with pytest.raises(ValueError, match="`trace_axes` must be axes of `y_train`"):
        dynamics.gradient_descent_mse(tdd, y, trace_axes=(2,))
    with pytest.raises(ValueError, match="`k_train_train` must be a square kernel"):
        dynamics.max_learning_rate(tdd[:6])
    with pytest.raises(eqx.EquinoxRuntimeError, match="not positive semi-definite"):
        dynamics.gradient_descent_mse(-tdd, y)
    with pytest.raises(ValueError, match="`t` must be non-negative"):
        dynamics.gradient_descent_mse(tdd, y)(-1.0)
