import collections

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import pytest
import scipy.stats

from eqntk import dynamics

from .helpers import problem


Pair = collections.namedtuple("Pair", ["nngp", "ntk"])


def _dense_posterior(parts, y, lam):
    """The posterior formulas of `GPPredictor.__call__` with explicit inverses."""
    (kdd, ktd, ktt), (tdd, ttd, ttt) = parts["nngp"], parts["ntk"]
    eye = np.eye(kdd.shape[0])
    inv_k, inv_t = np.linalg.inv(kdd + lam * eye), np.linalg.inv(tdd + lam * eye)
    t = ttd @ inv_t
    return {
        "nngp": (ktd @ inv_k @ y, ktt - ktd @ inv_k @ ktd.T),
        "ntk": (t @ y, ktt + t @ kdd @ t.T - t @ ktd.T - ktd @ t.T),
        "ntkgp": (t @ y, ttt - t @ ttd.T),
    }


def test_matches_dense_formulas(getkey):
    parts, y, _ = problem(getkey())
    lam = 0.05
    kdd, ktd, ktt = (Pair(parts["nngp"][i], parts["ntk"][i]) for i in range(3))
    out = dynamics.gp_inference(kdd, y, lam, diag_reg_absolute_scale=True)(
        ktd, ktt, get=("nngp", "ntk", "ntkgp")
    )
    for g, (mean, cov) in _dense_posterior(parts, np.asarray(y), lam).items():
        np.testing.assert_allclose(getattr(out, g).mean, mean, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(getattr(out, g).cov, cov, rtol=1e-9, atol=1e-12)


def test_relative_diag_reg_scales_with_trace(getkey):
    parts, y, _ = problem(getkey())
    kdd, ktd, _ = parts["nngp"]
    lam = 0.01 * jnp.trace(kdd) / kdd.shape[0]
    rel = dynamics.gp_inference(kdd, y, 0.01)(ktd, get="nngp").mean
    absolute = dynamics.gp_inference(kdd, y, lam, diag_reg_absolute_scale=True)(ktd, get="nngp")
    np.testing.assert_allclose(rel, absolute.mean, rtol=1e-12)


def test_cg_equals_cholesky(getkey):
    parts, y, _ = problem(getkey(), n=12, jitter=0.5)  # well conditioned
    kdd, ktd, ktt = parts["nngp"]
    exact = dynamics.gp_inference(kdd, y, 1e-3)(ktd, ktt, get="nngp")
    cg = dynamics.gp_inference(kdd, y, 1e-3, solver=lx.CG(rtol=1e-12, atol=1e-12))(
        ktd, ktt, get="nngp"
    )
    np.testing.assert_allclose(cg.mean, exact.mean, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(cg.cov, exact.cov, rtol=1e-8, atol=1e-10)


def test_train_set_is_exact(getkey):
    parts, y, _ = problem(getkey())
    out = dynamics.gp_inference(parts["ntk"][0], y)(None, True, get="ntk")
    np.testing.assert_array_equal(out.mean, y)
    np.testing.assert_array_equal(out.cov, 0)


def test_samples_have_the_predicted_moments(getkey):
    parts, y, _ = problem(getkey(), n=6, m=4, k=3)
    kdd, ktd, ktt = parts["nngp"]
    posterior = dynamics.gp_inference(kdd, y, 1e-2)(ktd, ktt, get="nngp")
    s = 20000
    samples = np.asarray(posterior.sample(getkey(), (s,)))  # (S, M, K)
    mean, cov = np.asarray(posterior.mean), np.asarray(posterior.cov)
    var = np.diag(cov)
    # Sample mean: standard error sqrt(C_ii / S) per entry; 5 standard errors bounds all
    # 12 entries with probability > 1 - 1e-5.
    np.testing.assert_array_less(
        np.abs(samples.mean(0) - mean), np.broadcast_to(5 * np.sqrt(var / s)[:, None], mean.shape)
    )
    # Sample covariance pooled over the K independent columns: the standard error of an
    # entry is sqrt((C_ii C_jj + C_ij^2) / (S K)); again 5 standard errors.
    centred = samples - mean
    emp = np.einsum("sik,sjk->ij", centred, centred) / (s * y.shape[1])
    se = np.sqrt((np.outer(var, var) + cov**2) / (s * y.shape[1]))
    np.testing.assert_array_less(np.abs(emp - cov), 5 * se + 1e-12)


def test_jit_and_vmap_over_targets(getkey):
    parts, _, _ = problem(getkey())
    kdd, ktd, ktt = parts["nngp"]
    ys = jax.random.normal(getkey(), (5, kdd.shape[0], 2))

    @jax.jit
    @jax.vmap
    def mean(y):
        return dynamics.gp_inference(kdd, y, 1e-3)(ktd, get="nngp").mean

    got = mean(ys)
    for i in range(5):
        want = dynamics.gp_inference(kdd, ys[i], 1e-3)(ktd, get="nngp").mean
        np.testing.assert_allclose(got[i], want, rtol=1e-10)


def test_marginal_log_likelihood_is_the_gaussian_density(getkey):
    parts, y, _ = problem(getkey())
    kdd = parts["nngp"][0]
    lam = 0.03
    got = dynamics.marginal_log_likelihood(kdd, y, lam, diag_reg_absolute_scale=True)
    cov = np.asarray(kdd) + lam * np.eye(kdd.shape[0])
    want = sum(
        scipy.stats.multivariate_normal(np.zeros(kdd.shape[0]), cov).logpdf(np.asarray(y)[:, c])
        for c in range(y.shape[1])
    )
    np.testing.assert_allclose(got, want, rtol=1e-10)


def test_marginal_log_likelihood_gradient(getkey):
    parts, y, _ = problem(getkey())
    kdd = parts["nngp"][0]

    def mll(params):
        scale, noise = params
        return dynamics.marginal_log_likelihood(scale * kdd, y, noise, True)

    params = jnp.array([1.3, 0.05])
    grad = jax.grad(mll)(params)
    h = 1e-6
    for i in range(2):
        e = jnp.zeros(2).at[i].set(h)
        fd = (mll(params + e) - mll(params - e)) / (2 * h)
        # Central differences: truncation O(h^2), rounding O(eps |mll| / h) ~ 1e-9.
        np.testing.assert_allclose(grad[i], fd, rtol=1e-6)


def test_bad_inputs(getkey):
    parts, y, _ = problem(getkey())
    kdd, ktd, _ = parts["nngp"]
    with pytest.raises(ValueError, match=r"`k_train_train` must have shape \(7, 7\)"):
        dynamics.gp_inference(kdd[:, :5], y)
    with pytest.raises(ValueError, match=r"`k_train_train` must have shape \(6, 6\)"):
        dynamics.gp_inference(kdd, y[:6])
    with pytest.raises(ValueError, match="`diag_reg` must be finite and non-negative, got -0.1"):
        dynamics.gp_inference(kdd, y, -0.1)
    with pytest.raises(ValueError, match=r"`k_test_train` must have shape \(M, 7\)"):
        dynamics.gp_inference(kdd, y)(ktd[:, :3], get="nngp")
    with pytest.raises(ValueError, match="`get` must be None, one of"):
        dynamics.gp_inference(kdd, y)(ktd, get="nnpg")
    asym = kdd.at[0, 1].add(1.0)
    with pytest.raises(eqx.EquinoxRuntimeError, match="`k_train_train` must be symmetric"):
        dynamics.gp_inference(asym, y)
    not_pd = kdd - 2 * jnp.max(jnp.linalg.eigvalsh(kdd)) * jnp.eye(kdd.shape[0])
    with pytest.raises(eqx.EquinoxRuntimeError, match="not positive definite"):
        dynamics.gp_inference(not_pd, y)
    with pytest.raises(eqx.EquinoxRuntimeError, match="not positive definite"):
        dynamics.marginal_log_likelihood(not_pd, y)
    # Traced values are checked too.
    errors = (eqx.EquinoxRuntimeError, jax.errors.JaxRuntimeError)
    with pytest.raises(errors, match="`diag_reg` must be finite and non-neg"):
        jax.jit(lambda r: dynamics.gp_inference(kdd, y, r)(ktd, get="nngp").mean)(-1.0)
