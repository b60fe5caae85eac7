import jax.numpy as jnp
import jax.random as jr
import lineax as lx
import pytest

import eqntk
from eqntk import nn
from eqntk.dynamics import (
    PivotedCholesky,
    TiledKernelOperator,
    gp_inference,
    gp_inference_matrix_free,
    marginal_log_likelihood,
    marginal_log_likelihood_matrix_free,
)


def _rbf(a, b):
    # A positive definite kernel that compiles in a blink (the eqntk limit is in the slow test).
    d2 = jnp.sum(a**2, 1)[:, None] + jnp.sum(b**2, 1)[None, :] - 2 * a @ b.T
    return jnp.exp(-d2 / 4) + 0.5 * (a @ b.T) / 3


def _limit(getkey):
    model = nn.Sequential(
        [
            nn.Dense(3, 8, W_std=1.5, b_std=0.2, key=getkey()),
            nn.Relu(),
            nn.Dense(8, 1, key=getkey()),
        ]
    )
    return eqntk.limit(model)


def test_operator_is_the_dense_kernel(getkey):
    x = jr.normal(getkey(), (23, 3))  # not a multiple of the tile: padding is exercised
    k = _rbf(x, x)
    op = TiledKernelOperator(_rbf, x, 0.3, tile_size=5, columns=2)
    v = jr.normal(getkey(), (23, 2))
    dense = k + 0.3 * jnp.eye(23)
    # Same sums in a different order: float64 rounding.
    assert jnp.allclose(op.mv(v), dense @ v, rtol=1e-12, atol=1e-12)
    assert jnp.allclose(op.as_matrix(), dense, rtol=1e-12, atol=1e-12)
    assert jnp.allclose(lx.diagonal(op), jnp.diagonal(dense), rtol=1e-12)
    assert lx.is_symmetric(op) and lx.is_positive_semidefinite(op)
    # A full-rank pivoted Cholesky reproduces the kernel (it is then exact Cholesky).
    factor = PivotedCholesky(op, 23).factor
    assert jnp.allclose(factor.T @ factor, k, atol=1e-10)


@pytest.mark.parametrize("network", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_inference_equals_dense_path(network, getkey):
    kernel_fn = _limit(getkey) if network else _rbf
    get = "ntk" if network else None
    x, x_test = jr.normal(getkey(), (37, 3)), jr.normal(getkey(), (6, 3))
    y = jr.normal(getkey(), (37, 2))

    def k(a, b):
        return kernel_fn(a, b) if get is None else kernel_fn(a, b, get=get)

    exact = gp_inference(k(x, x), y, 1e-2)(k(x_test, x), get="nngp").mean
    predictor = gp_inference_matrix_free(
        kernel_fn, x, y, 1e-2, get=get, tile_size=8, rank=5, rtol=1e-10
    )
    # CG stops at a relative residual of 1e-10; the kernel's condition number (< 1e4 with
    # this regulariser) bounds the error in the mean by 1e-6 relative.
    assert jnp.allclose(predictor(x_test).mean, exact, rtol=1e-6, atol=1e-6 * jnp.abs(exact).max())
    one = gp_inference_matrix_free(kernel_fn, x, y[:, 0], 1e-2, get=get, tile_size=8, rank=5)
    assert one(x_test).mean.shape == (6,)


def test_likelihood_equals_dense_path(getkey):
    kernel_fn = _rbf
    x = jr.normal(getkey(), (40, 3))
    y = jr.normal(getkey(), (40, 2))
    k = kernel_fn(x, x)
    exact = marginal_log_likelihood(k, y, 1e-2)
    value, error = marginal_log_likelihood_matrix_free(
        kernel_fn, x, y, 1e-2, key=getkey(), tile_size=16, rank=10, n_probes=32
    )
    # The stochastic part's standard error is reported; 4 of them bound the deviation
    # (Lanczos quadrature with 30 steps on a 40-point problem is exact to rounding).
    assert abs(value - exact) < 4 * error + 1e-8 * abs(exact), (value, exact, error)
    assert error < 1e-2 * abs(exact)
    # At full rank the preconditioner is the matrix: the stochastic part vanishes.
    value, error = marginal_log_likelihood_matrix_free(
        kernel_fn, x, y, 1e-2, key=getkey(), tile_size=16, rank=40
    )
    assert jnp.allclose(value, exact, rtol=1e-8) and error < 1e-6


def test_errors(getkey):
    kernel_fn = _rbf
    x = jr.normal(getkey(), (10, 3))
    with pytest.raises(ValueError, match="`x_train` must be a batch of 9"):
        gp_inference_matrix_free(kernel_fn, x, jnp.ones(9))
    with pytest.raises(ValueError, match="`diag_reg` must be >= 0"):
        gp_inference_matrix_free(kernel_fn, x, jnp.ones(10), -1.0)
    # Without a regulariser on a rank-deficient kernel, too few CG steps: a clear error.
    with pytest.raises(Exception, match="did not converge"):
        gp_inference_matrix_free(
            lambda a, b: a @ b.T, x, jnp.arange(10.0), 0.0, rank=0, max_steps=2
        )
