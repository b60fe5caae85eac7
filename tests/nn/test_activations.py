"""The nonlinearities (`eqntk.nn` activations, exponential, polynomial, trigonometric and
`Elementwise` layers): finite forward passes and their hyperparameters; kernel rules as closed
forms against quadrature and against wide finite networks; edge-case gradients; bad input."""

import math

import equinox as eqx
import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
import scipy.integrate
from hypothesis import given, settings

import eqntk
from eqntk import nn
from eqntk.limits._math import arccos_kernel
from tests.helpers import mc_kernels


X = jnp.linspace(-3.0, 3.0, 13)


@pytest.mark.parametrize(
    "layer, expected",
    [
        (nn.SigmoidLike(), 0.5 * jax.scipy.special.erf(X / 2.4020563531719796) + 0.5),
        (nn.Gelu(), X * jax.scipy.stats.norm.cdf(X)),
        (nn.Gelu(approximate=True), jax.nn.gelu(X, approximate=True)),
        (nn.Sin(1.1, 1.6, 0.4), 1.1 * jnp.sin(1.6 * X + 0.4)),
        (nn.Cos(0.9, 1.2, -0.3), 0.9 * jnp.cos(1.2 * X - 0.3)),
        (nn.Rbf(0.8), math.sqrt(2) * jnp.sin(math.sqrt(1.6) * X + math.pi / 4)),
        (nn.Gabor(), jnp.exp(-(X**2)) * jnp.sin(X)),
        (nn.Exp(0.7, 0.5), 0.7 * jnp.exp(0.5 * X)),
        (nn.Gaussian(1.2, -0.6), 1.2 * jnp.exp(-0.6 * X**2)),
        (nn.Sign(), jnp.sign(X)),
        (nn.Monomial(3), X**3),
        (nn.RectifiedMonomial(0), (X >= 0).astype(X.dtype)),
        (nn.RectifiedMonomial(2), jnp.maximum(X, 0) ** 2),
        (nn.Polynomial([0.1, 0.9, 0.3, -0.05]), 0.1 + 0.9 * X + 0.3 * X**2 - 0.05 * X**3),
        (nn.Hermite(4), (X**4 - 6 * X**2 + 3) / math.sqrt(24)),
        (nn.Elementwise(jax.nn.softplus), jax.nn.softplus(X)),
        (nn.Relu(do_stabilize=True), jnp.maximum(X, 0)),
    ],
)
def test_forward_pass(layer, expected):
    np.testing.assert_allclose(layer(X), expected, rtol=1e-12, atol=1e-15)
    assert eqx.filter_jit(layer)(X.reshape(1, 13)).shape == (1, 13)


def test_hermite_matches_numpy():
    for degree in range(7):
        expected = np.polynomial.hermite_e.hermeval(np.asarray(X), [0] * degree + [1])
        np.testing.assert_allclose(
            nn.Hermite(degree)(X), expected / math.sqrt(math.factorial(degree)), rtol=1e-12
        )


def test_hyperparameters_are_frozen_in_the_finite_pass():
    layer = nn.Sin(1.1, 1.6, 0.4)
    grads = eqx.filter_grad(lambda m: jnp.sum(m(X)))(layer)
    assert grads.a == 0 and grads.b == 0 and grads.c == 0


def test_kernel_only_layers_raise_when_called():
    def nngp_fn(cov12, var1, var2):
        return cov12

    for layer in (nn.ExpNormalized(), nn.Elementwise(nngp_fn=nngp_fn)):
        with pytest.raises(NotImplementedError, match="no finite forward pass"):
            layer(X)
        # Shape inference still works (the error comes when the computation runs).
        assert eqx.filter_eval_shape(layer, X).shape == X.shape


def test_bad_input():
    with pytest.raises(ValueError, match="`fn` must return a scalar"):
        nn.Elementwise(lambda x: jnp.stack([x, x]))
    with pytest.raises(ValueError, match="`fn` must be a JAX-traceable function"):
        nn.Elementwise(lambda x: float(x))
    # A type error (from the runtime type checker when it is on, else from the layer).
    with pytest.raises(TypeError, match="fn"):
        nn.Elementwise(3.0)
    with pytest.raises(ValueError, match="`deg` .* must be a positive integer, got 0"):
        nn.Elementwise(jnp.tanh, deg=0)
    with pytest.raises(ValueError, match="needs `fn` .* or `nngp_fn`"):
        nn.Elementwise()
    with pytest.raises(ValueError, match="`d_nngp_fn` is only used together with `nngp_fn`"):
        nn.Elementwise(jnp.tanh, d_nngp_fn=lambda c, v1, v2: c)
    with pytest.raises(ValueError, match="`nngp_fn` must return a scalar"):
        nn.Elementwise(nngp_fn=lambda c, v1, v2: jnp.ones(2))
    for layer in (nn.Monomial, nn.RectifiedMonomial, nn.Hermite):
        with pytest.raises(ValueError, match="`degree` must be a non-negative integer, got -1"):
            layer(-1)
        with pytest.raises((TypeError, ValueError), match="degree"):
            layer(1.5)
    with pytest.raises(ValueError, match="`coef` must be a non-empty 1-D sequence"):
        nn.Polynomial([])
    with pytest.raises(ValueError, match="`gamma` must be non-negative"):
        nn.Rbf(-1.0)


def _hermite(degree):
    return lambda x: nn.Hermite(degree)(x)


# Closed-form layers and the scalar functions they apply (for the quadrature cross-check).
CLOSED_FORMS = {
    "erf": (lambda: nn.Erf(1.3, 0.7, 0.2), lambda x: 1.3 * jax.scipy.special.erf(0.7 * x) + 0.2),
    "sigmoid_like": (nn.SigmoidLike, lambda x: nn.SigmoidLike()(x)),
    "gelu": (nn.Gelu, lambda x: jax.nn.gelu(x, approximate=False)),
    "sin": (lambda: nn.Sin(1.1, 1.6, 0.4), lambda x: 1.1 * jnp.sin(1.6 * x + 0.4)),
    "cos": (lambda: nn.Cos(0.9, 1.2, -0.3), lambda x: 0.9 * jnp.cos(1.2 * x - 0.3)),
    "exp": (lambda: nn.Exp(0.7, 0.5), lambda x: 0.7 * jnp.exp(0.5 * x)),
    "gaussian": (lambda: nn.Gaussian(1.2, -0.6), lambda x: 1.2 * jnp.exp(-0.6 * x**2)),
    "rbf": (lambda: nn.Rbf(0.8), lambda x: nn.Rbf(0.8)(x)),
    "gabor": (nn.Gabor, lambda x: jnp.exp(-(x**2)) * jnp.sin(x)),
    "polynomial": (
        lambda: nn.Polynomial([0.1, 0.9, 0.3, -0.05]),
        lambda x: nn.Polynomial([0.1, 0.9, 0.3, -0.05])(x),
    ),
    **{f"monomial{n}": (lambda n=n: nn.Monomial(n), lambda x, n=n: x**n) for n in range(6)},
}


def _network(activation, key, width=1, d_in=4, b_std=0.2, depth=1, w_std=1.2):
    keys = jr.split(key, depth + 1)
    layers, n_in = [], d_in
    for i in range(depth):
        layers += [nn.Dense(n_in, width, w_std, b_std, key=keys[i]), activation]
        n_in = width
    layers.append(nn.Dense(n_in, 1, w_std, b_std, key=keys[-1]))
    return nn.Sequential(layers)


def _scaled_inputs(key, n, d=4, scale=0.8):
    return scale * jr.normal(key, (n, d))


# Every closed form is also checked against neural-tangents by a golden case (act_*); the
# quadrature cross-checks whose degree-40 (80) maps take longest to compile run with -m slow.
_SLOW_QUADRATURE = {"gelu", "gabor", "cos", "erf", "exp", "gaussian", "rbf", "sigmoid_like", "sin"}


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(name, marks=pytest.mark.slow) if name in _SLOW_QUADRATURE else name
        for name in sorted(CLOSED_FORMS)
    ],
)
def test_closed_form_matches_quadrature(getkey, name):
    make, phi = CLOSED_FORMS[name]
    key = getkey()
    x1, x2 = _scaled_inputs(getkey(), 3), _scaled_inputs(getkey(), 2)
    exact = eqntk.limit(_network(make(), key))(x1, x2)
    # For the other (entire) functions at unit-order variances the Gauss-Hermite error falls faster
    # than any power of the degree: at degree 40 it is below 1e-9 of the kernel's scale (80 for
    # Gabor, whose derivative oscillates faster).
    # Polynomials of degree <= 5 are integrated exactly by 8 nodes (exact to degree 15).
    deg = 8 if name.startswith(("monomial", "polynomial")) else 80 if name == "gabor" else 40
    numerical = eqntk.limit(_network(nn.Elementwise(phi, deg=deg), key))(x1, x2)
    for field in ("nngp", "ntk", "cov1", "cov2"):
        a, b = getattr(exact, field), getattr(numerical, field)
        np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-9 * float(jnp.max(jnp.abs(a))))


def test_hermite_is_exact_for_unit_variance(getkey):
    # Inputs of squared norm d into a Dense layer with W_std=1 and no bias: unit variances.
    x = jr.normal(getkey(), (4, 6))
    x = x / jnp.linalg.norm(x, axis=1, keepdims=True) * math.sqrt(6)
    for degree in range(5):
        key = getkey()
        exact = eqntk.limit(_network(nn.Hermite(degree), key, d_in=6, b_std=None, w_std=1.0))(x)
        numerical = eqntk.limit(
            _network(nn.Elementwise(_hermite(degree), deg=8), key, d_in=6, b_std=None, w_std=1.0)
        )(x)
        np.testing.assert_allclose(exact.nngp, numerical.nngp, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(exact.ntk, numerical.ntk, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("degree", range(5))
@pytest.mark.parametrize("rho", [-0.9, -0.3, 0.2, 0.8])
def test_arccos_kernel_matches_integral(degree, rho):
    # E[u_+^n v_+^n] = J_n / (2 pi) with v = rho u + sqrt(1 - rho^2) z, integrated by scipy.
    s = math.sqrt(1 - rho**2)

    def integrand(z, u):
        density = math.exp(-(u * u + z * z) / 2) / (2 * math.pi)
        v = rho * u + s * z
        return u**degree * v**degree * density if v > 0 else 0.0

    if degree == 0:  # a discontinuous integrand: use the orthant probability (Sheppard)
        expected = 1 / 4 + math.asin(rho) / (2 * math.pi)
    else:
        expected, _ = scipy.integrate.dblquad(integrand, 0, 12, -12, 12, epsabs=1e-12)
    got = float(arccos_kernel(degree, jnp.asarray(rho))) / 2
    # dblquad integrates across the kink at v = 0 only to about 1e-7.
    assert abs(got - expected) < 1e-6 * max(1.0, abs(expected))


def test_rectified_monomial_is_finite_at_correlation_one(getkey):
    x = _scaled_inputs(getkey(), 3)
    x = x.at[1].set(2 * x[0])  # colinear with x[0]: correlation exactly 1 in the first layer
    for degree in range(4):
        k = eqntk.limit(
            nn.Sequential([nn.Dense(4, 1, key=getkey()), nn.RectifiedMonomial(degree)])
        )(x)
        q = jnp.sum(x**2, axis=1) / 4
        double_factorial = math.prod(range(2 * degree - 1, 0, -2))
        np.testing.assert_allclose(k.cov1, double_factorial * q**degree / 2, rtol=1e-12)
        np.testing.assert_allclose(jnp.diag(k.nngp), k.cov1, rtol=1e-12)
        assert jnp.all(jnp.isfinite(k.ntk))
    relu = eqntk.limit(_network(nn.Relu(), jr.key(0)))(x)
    monomial = eqntk.limit(_network(nn.RectifiedMonomial(1), jr.key(0)))(x)
    np.testing.assert_allclose(relu.nngp, monomial.nngp, rtol=1e-12)
    np.testing.assert_allclose(relu.ntk, monomial.ntk, rtol=1e-12)


def test_sign_and_exp_normalized_formulas(getkey):
    x1, x2 = _scaled_inputs(getkey(), 3), _scaled_inputs(getkey(), 2)
    dense = nn.Dense(4, 1, 1.1, 0.3, key=getkey())
    k = eqntk.limit(dense)(x1, x2)
    norm = jnp.sqrt(k.cov1[:, None] * k.cov2[None, :])
    rho = k.nngp / norm
    sign = eqntk.limit(nn.Sequential([dense, nn.Sign()]))(x1, x2)
    np.testing.assert_allclose(sign.nngp, 2 / math.pi * jnp.arcsin(rho), rtol=1e-12)
    assert jnp.all(sign.ntk == 0) and jnp.allclose(sign.cov1, 1)
    expn = eqntk.limit(nn.Sequential([dense, nn.ExpNormalized(1.5, -0.7)]))(x1, x2)
    np.testing.assert_allclose(expn.nngp, norm * jnp.exp(1.5 * (rho - 0.7)), rtol=1e-12)
    np.testing.assert_allclose(expn.ntk, k.ntk * 1.5 * jnp.exp(1.5 * (rho - 0.7)), rtol=1e-12)
    np.testing.assert_allclose(expn.cov1, k.cov1 * jnp.exp(1.5 * 0.3), rtol=1e-12)


def test_user_nngp_fn_matches_erf(getkey):
    def nngp_fn(cov12, var1, var2):
        return 2 / math.pi * jnp.arcsin(2 * cov12 / jnp.sqrt((1 + 2 * var1) * (1 + 2 * var2)))

    x1, x2 = _scaled_inputs(getkey(), 3), _scaled_inputs(getkey(), 2)
    key = getkey()
    exact = eqntk.limit(_network(nn.Erf(), key))(x1, x2)
    user = eqntk.limit(_network(nn.Elementwise(jax.scipy.special.erf, nngp_fn), key))(x1, x2)
    np.testing.assert_allclose(exact.nngp, user.nngp, rtol=1e-12)
    np.testing.assert_allclose(exact.ntk, user.ntk, rtol=1e-10)
    # Kernel only: no `fn`.
    kernel_only = eqntk.limit(_network(nn.Elementwise(nngp_fn=nngp_fn), key))(x1, x2)
    np.testing.assert_allclose(exact.nngp, kernel_only.nngp, rtol=1e-12)


def test_do_stabilize_changes_nothing_but_range(getkey):
    x = _scaled_inputs(getkey(), 4)
    key = getkey()
    for stabilize_layer, plain_layer in [
        (nn.Relu(do_stabilize=True), nn.Relu()),
        (nn.LeakyRelu(0.1, do_stabilize=True), nn.LeakyRelu(0.1)),
        (nn.ABRelu(-0.3, 0.8, do_stabilize=True), nn.ABRelu(-0.3, 0.8)),
        (nn.Abs(do_stabilize=True), nn.Abs()),
    ]:
        a = eqntk.limit(_network(stabilize_layer, key, depth=3))(x)
        b = eqntk.limit(_network(plain_layer, key, depth=3))(x)
        # Equal up to rounding, which the arc-cosine amplifies to ~1e-8 near unit correlation.
        for field in ("nngp", "ntk", "cov1"):
            np.testing.assert_allclose(getattr(a, field), getattr(b, field), rtol=1e-7)


@pytest.mark.parametrize("stabilize", [False, True])
@pytest.mark.parametrize("w_std", [4.0, 0.5])
def test_very_deep_float32_relu_networks_match_float64(getkey, stabilize, w_std):
    # 30 layers multiply the variances by (w_std^2 / 2)^30: about 1e28 for w_std 4 and 1e-28
    # for w_std 0.5. Both are representable in float32, but the product of two such variances
    # (which a naive correlation q12 / sqrt(q11 q22) forms) overflows or underflows; the maps
    # never form it, with or without `do_stabilize`. Each layer adds a few float32 ulps
    # (6e-8) of relative error, amplified up to ~10x by the NTK recursion's sum over layers:
    # 30 layers stay well inside rtol 1e-4.
    x = _scaled_inputs(getkey(), 4)
    deep = _network(nn.Relu(do_stabilize=stabilize), getkey(), depth=30, w_std=w_std, b_std=None)
    k32 = eqntk.limit(deep)(x.astype(jnp.float32))
    k64 = eqntk.limit(deep)(x)
    assert 1e27 < jnp.max(k64.nngp) or jnp.max(k64.nngp) < 1e-27
    for field in ("nngp", "ntk", "cov1"):
        np.testing.assert_allclose(getattr(k32, field), getattr(k64, field), rtol=1e-4)


# Monte Carlo: the layers whose finite networks are cheap to sample (bounded or low-degree).
MC_LAYERS = {
    "erf": lambda: nn.Erf(1.3, 0.7, 0.2),
    "sigmoid_like": nn.SigmoidLike,
    "gelu": nn.Gelu,
    "sin": lambda: nn.Sin(1.1, 1.6, 0.4),
    "cos": lambda: nn.Cos(0.9, 1.2, -0.3),
    "exp": lambda: nn.Exp(0.7, 0.5),
    "gaussian": lambda: nn.Gaussian(1.2, -0.6),
    "rbf": lambda: nn.Rbf(0.8),
    "gabor": nn.Gabor,
    "sign": nn.Sign,
    "monomial2": lambda: nn.Monomial(2),
    "rectified_monomial2": lambda: nn.RectifiedMonomial(2),
    "polynomial": lambda: nn.Polynomial([0.1, 0.9, 0.3, -0.05]),
    "tanh_quadrature": lambda: nn.Elementwise(jnp.tanh, deg=20),
}


def _mc_check(name, key, width, d_out, n_samples):
    x1, x2 = _scaled_inputs(jr.fold_in(key, 1), 3), _scaled_inputs(jr.fold_in(key, 2), 2)

    def make(k):
        k1, k2 = jr.split(k)
        return nn.Sequential(
            [
                nn.Dense(4, width, 1.2, 0.2, key=k1),
                MC_LAYERS[name](),
                nn.Dense(width, d_out, 1.2, 0.2, key=k2),
            ]
        )

    exact = eqntk.limit(make(key))(x1, x2)
    nngp, ntk = mc_kernels(make, key, x1, x2, n_samples=n_samples)
    # Each draw of f(x1) f(x2) has variance K11 K22 + K12^2 <= 2 max|K|^2, and the estimate
    # averages n_samples * d_out draws: we allow 5 standard deviations, plus an O(1/width)
    # finite-width bias of 4/width of the scale. The empirical NTK fluctuates less (its
    # readout part averages over the width), so the same bound holds for it.
    n_draws = n_samples * d_out
    for got, want in ((nngp, exact.nngp), (ntk, exact.ntk)):
        scale = float(jnp.max(jnp.abs(want)))
        tolerance = scale * (5 * math.sqrt(2 / n_draws) + 4 / width)
        assert float(jnp.max(jnp.abs(got - want))) <= tolerance, (name, got, want)


@pytest.mark.parametrize("name", sorted(MC_LAYERS))
def test_matches_wide_networks(getkey, name):
    _mc_check(name, getkey(), width=256, d_out=16, n_samples=16)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MC_LAYERS))
def test_matches_wide_networks_large(getkey, name):
    _mc_check(name, getkey(), width=2048, d_out=32, n_samples=128)


# Gradient edge cases: which layers stay bounded through 20 layers (the others are checked to
# depth 2; an exponential of an exponential overflows whatever the rule does).
DEEP = {
    "relu",
    "abs",
    "leaky_relu",
    "erf",
    "sigmoid_like",
    "gelu",
    "sin",
    "cos",
    "rbf",
    "gabor",
    "sign",
    "exp_normalized",
    "tanh_quadrature",
    "rectified_monomial1",
    "hermite1",
}


GRADIENT_LAYERS = {
    **MC_LAYERS,
    "relu": nn.Relu,
    "abs": nn.Abs,
    "leaky_relu": lambda: nn.LeakyRelu(0.1, do_stabilize=True),
    "exp_normalized": lambda: nn.ExpNormalized(0.8, -0.5, do_clip=True),
    "rectified_monomial0": lambda: nn.RectifiedMonomial(0),
    "rectified_monomial1": lambda: nn.RectifiedMonomial(1),
    "rectified_monomial3": lambda: nn.RectifiedMonomial(3),
    "hermite1": lambda: nn.Hermite(1),
    "hermite3": lambda: nn.Hermite(3),
    "monomial5": lambda: nn.Monomial(5),
}


@settings(max_examples=12, deadline=None)
@given(
    name=st.sampled_from(sorted(GRADIENT_LAYERS)),
    depth=st.sampled_from([1, 2, 20]),
    dtype=st.sampled_from([jnp.float32, jnp.float64]),
    b_std=st.sampled_from([None, 0.1]),
    v=hnp.arrays(np.float64, 4, elements=st.floats(-2, 2)),
)
def test_gradients_finite_at_edges(name, depth, dtype, b_std, v):
    if name not in DEEP:
        depth = min(depth, 2)
    # Identical, opposite, colinear and zero inputs: correlations exactly +1 and -1, and zero
    # variances (when there is no bias). The colinear input is shorter, not longer: a degree-5
    # monomial twice takes a variance q to about 945^6 q^25, which overflows float32 (a true
    # value, not a failure of the rule) from q = 9 on (3 v with v = (1, 1, 1, 1)).
    x = jnp.asarray(np.stack([v, v, -v, 0.5 * v, 0 * v]), dtype)
    model = _network(
        GRADIENT_LAYERS[name](), jr.key(0), width=1, b_std=b_std, depth=depth, w_std=1.0
    )

    def loss(model, x):
        k = eqntk.limit(model)(x)
        return jnp.sum(k.nngp) + jnp.sum(k.ntk) + jnp.sum(k.cov1)

    value, (g_model, g_x) = eqx.filter_value_and_grad(lambda mx: loss(*mx))((model, x))
    assert jnp.isfinite(value)
    assert all(jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree_util.tree_leaves(g_model))
    assert jnp.all(jnp.isfinite(g_x))


@pytest.mark.parametrize("name", sorted(CLOSED_FORMS) + ["sign", "exp_normalized", "relu"])
def test_symmetric_and_psd(getkey, name):
    layer = {**{k: v[0] for k, v in CLOSED_FORMS.items()}, **GRADIENT_LAYERS}[name]()
    x = _scaled_inputs(getkey(), 6)
    k = eqntk.limit(_network(layer, getkey(), depth=2))(x)
    for kernel in (k.nngp, k.ntk):
        np.testing.assert_allclose(kernel, kernel.T, rtol=1e-12, atol=1e-14)
        eigenvalues = jnp.linalg.eigvalsh(kernel)
        assert eigenvalues.min() >= -1e-10 * eigenvalues.max()


def test_quadrature_symmetric_to_its_accuracy(getkey):
    # The quadrature treats the two inputs asymmetrically (as neural-tangents does): its
    # symmetric kernels are symmetric to the quadrature error only.
    x = _scaled_inputs(getkey(), 5)
    k = eqntk.limit(_network(nn.Elementwise(jnp.tanh, deg=25), getkey()))(x)
    np.testing.assert_allclose(k.nngp, k.nngp.T, rtol=1e-8)


def test_nonlinearity_needs_gaussian_input(getkey):
    model = nn.Sequential([nn.Dense(4, 3, key=getkey()), nn.Gelu(), nn.Sin()])
    with pytest.raises(ValueError, match="`Sin` needs Gaussian inputs"):
        eqntk.limit(model)(jnp.ones((2, 4)))


def test_gaussian_with_positive_b_raises_where_its_kernel_diverges(getkey):
    x = _scaled_inputs(getkey(), 3)
    key = getkey()
    # Input variance after Dense(w_std=1.2, b_std=0.2) on these inputs is about 0.9.
    finite = eqntk.limit(_network(nn.Gaussian(1.0, 0.05), key))(x)
    assert jnp.all(jnp.isfinite(finite.nngp))
    with pytest.raises(Exception, match=r"nn.Gaussian\(b > 0\).*4 \* b"):
        eqntk.limit(_network(nn.Gaussian(1.0, 2.0), key))(x)
