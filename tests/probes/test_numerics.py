"""Low-precision and extreme-range numerics of the activation kernels and deep networks."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import eqntk
from eqntk import nn


# float32 kernels of bounded activations are asked to match float64 to this relative accuracy.
RTOL = 1e-5
# Entries much smaller than the kernel's largest come out of sums of terms of the kernel's size
# (c^2 + ..., 2 J0 - 1, the bias of the next Dense layer), so float32 resolves them only to a
# few ulps of that size. Below 10% of the largest entry they are held to RTOL of 10% of it,
# i.e. an absolute 1e-6 of the largest entry: 8 float32 ulps, room for a few roundings.
FLOOR = 0.1


def _relative_error(approx, exact) -> float:
    approx, exact = np.asarray(approx, np.float64), np.asarray(exact, np.float64)
    scale = np.max(np.abs(exact))
    return float(np.max(np.abs(approx - exact) / np.maximum(np.abs(exact), FLOOR * scale)))


def _mlp(activation, d: int, depth: int, W_std=1.5, b_std=0.1, width=8):
    keys = jr.split(jr.key(0), depth + 1)
    layers, fan_in = [], d
    for i in range(depth):
        layers += [nn.Dense(fan_in, width, W_std=W_std, b_std=b_std, key=keys[i]), activation]
        fan_in = width
    layers.append(nn.Dense(fan_in, 1, W_std=W_std, b_std=b_std, key=keys[depth]))
    return nn.Sequential(layers)


def _both_precisions(kernel_fn, x1, x2=None):
    """The NNGP and NTK in float32 and, of the same (float32-rounded) inputs, in float64."""
    x1 = x1.astype(jnp.float32)
    x2 = None if x2 is None else x2.astype(jnp.float32)
    low = kernel_fn(x1, x2, ("nngp", "ntk"))
    high = kernel_fn(
        x1.astype(jnp.float64), None if x2 is None else x2.astype(jnp.float64), ("nngp", "ntk")
    )
    return low, high


BOUNDED = {
    "erf": nn.Erf(),
    "sigmoid_like": nn.SigmoidLike(),
    "gelu": nn.Gelu(),  # not bounded, but its kernel map had the same cancellation
    "sign": nn.Sign(),
    "relu": nn.Relu(),
}


@pytest.mark.parametrize("name", sorted(BOUNDED))
@pytest.mark.parametrize("scale", [1.0, 1e2, 1e4])
@pytest.mark.parametrize("same", [True, False])
def test_float32_kernels_match_float64(name, scale, same):
    # At input scale s the erf arguments' correlation is 1 - O(1/s^2) on the diagonal of
    # K(x, x): computed as 1 - t^2 it lost everything (3e-3 at 1e2, inf at 1e3, NaN at 1e4).
    kernel_fn = eqntk.limit(_mlp(BOUNDED[name], d=6, depth=2))
    x = scale * jr.normal(jr.key(1), (5, 6))
    x1, x2 = (x, None) if same else (x[:2], x[2:])
    low, high = _both_precisions(kernel_fn, x1, x2)
    for got, want in zip(low, high):
        assert bool(jnp.all(jnp.isfinite(got)))
        assert _relative_error(got, want) < RTOL


def test_erf_on_raw_pixel_values():
    # Unnormalised pixels (0..255, d = 64): variances of 1e6, correlations near 1 everywhere.
    kernel_fn = eqntk.limit(_mlp(nn.Erf(), d=64, depth=1))
    x = jnp.round(jr.uniform(jr.key(2), (4, 64), minval=0, maxval=255))
    for x2 in (None, x[:2]):
        low, high = _both_precisions(kernel_fn, x, x2)
        for got, want in zip(low, high):
            assert _relative_error(got, want) < RTOL


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_erf_at_huge_inputs_is_finite(dtype):
    # float64 at 1e30 gave inf (1 - t^2 rounded to 0); float32 at 1e15 (variances 1e30, the
    # largest its input Gram matrix holds with room) gave NaN. The NTK's exact value is known
    # there: past the first Dense layer the variances q are so large that erf acts as a sign,
    # whose kernel the Sign network gives; the NNGP is finite for any input.
    scale = 1e30 if dtype == jnp.float64 else 1e15
    x = (scale * jr.normal(jr.key(3), (4, 6))).astype(dtype)
    erf, sign = eqntk.limit(_mlp(nn.Erf(), 6, 1)), eqntk.limit(_mlp(nn.Sign(), 6, 1))
    for x2 in (None, x[:2]):
        k = erf(x, x2, ("nngp", "ntk"))
        assert bool(jnp.all(jnp.isfinite(k.nngp)) & jnp.all(jnp.isfinite(k.ntk)))
        # Erf(1, 1, 0) -> sign differs by O(1/sqrt(q)) = 1e-14 at least: within rounding.
        want = sign(x, x2, "nngp")
        assert _relative_error(k.nngp, want) < (1e-12 if dtype == jnp.float64 else RTOL)


def _deep_relu(depth: int, do_stabilize: bool, w_std: float = 2.0):
    keys = jr.split(jr.key(4), depth + 1)
    layers, fan_in = [], 6
    for i in range(depth):
        layers += [nn.Dense(fan_in, 4, W_std=w_std, key=keys[i]), nn.Relu(do_stabilize)]
        fan_in = 4
    layers.append(nn.Dense(fan_in, 1, W_std=w_std, key=keys[depth]))
    return eqntk.limit(nn.Sequential(layers))


# Each ReLU layer multiplies the variance by W_std^2 / 2: 2^200 in the hidden layers either
# way, by 200 layers at W_std = 2 or 25 at W_std = 2^4.5 (whose first and last layers gain
# more: inputs 16 times smaller keep the NNGP in range).
@pytest.mark.parametrize("depth, w_std, scale", [(25, 2**4.5, 3e-12 / 16), (200, 2.0, 3e-12)])
@pytest.mark.parametrize("do_stabilize", [False, True])
def test_deep_relu_near_the_float32_maximum(do_stabilize, depth, w_std, scale):
    # The inputs' scale puts the NNGP above 1e37, inside float32's range (3.4e38), and the NTK
    # (about `depth` times larger) outside it. float32 gave NaN (1 / norm flushed to 0), and 0
    # with do_stabilize (1 / scale flushed to 0).
    kernel_fn = _deep_relu(depth, do_stabilize, w_std)
    x = scale * jr.normal(jr.key(5), (3, 6))
    for x2 in (None, x[:1]):
        (nngp, ntk), (nngp64, ntk64) = _both_precisions(kernel_fn, x, x2)
        assert float(jnp.max(nngp64)) > 1e37
        big = np.asarray(ntk64) > float(jnp.finfo(jnp.float32).max)
        assert bool(jnp.any(big))
        # Up to 200 layers of a few roundings each: 1e-4 is 800 float32 ulps.
        np.testing.assert_allclose(nngp, nngp64, rtol=1e-4)
        assert bool(jnp.all(jnp.isinf(ntk) == big))
        np.testing.assert_allclose(np.asarray(ntk)[~big], np.asarray(ntk64)[~big], rtol=1e-4)


@pytest.mark.parametrize("do_stabilize", [False, True])
def test_deep_relu_overflow_is_an_honest_inf(do_stabilize):
    # At unit inputs the true kernels are about 1e64: an honest inf, never NaN or 0.
    kernel_fn = _deep_relu(25, do_stabilize, 2**4.5)
    k = kernel_fn(jr.normal(jr.key(5), (3, 6)).astype(jnp.float32), None, ("nngp", "ntk"))
    assert bool(jnp.all(k.nngp == jnp.inf) & jnp.all(k.ntk == jnp.inf))


@pytest.mark.parametrize("do_stabilize", [False, True])
def test_huge_W_std(do_stabilize):
    # Variances of 1e38 after the first layer: the correlation's 1 / norm underflowed.
    model = nn.Sequential(
        [
            nn.Dense(6, 4, W_std=1e19, key=jr.key(6)),
            nn.Relu(do_stabilize),
            nn.Dense(4, 1, key=jr.key(7)),
        ]
    )
    x = jr.normal(jr.key(8), (3, 6)) / 3
    for x2 in (None, x[:1]):
        low, high = _both_precisions(eqntk.limit(model), x, x2)
        for got, want in zip(low, high):
            assert float(jnp.max(want)) > 1e36
            assert _relative_error(got, want) < RTOL


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_inputs_are_computed_in_float32(dtype):
    # Two inputs with correlation 0.89: bfloat16's 16 ulps of 1 are 0.125, so a snap at the
    # input precision made them identical (10% off in the NTK).
    kernel_fn = eqntk.limit(_mlp(nn.Relu(), d=2, depth=2))
    x = jnp.array([[1.0, 0.0], [0.89, 0.4560702]]).astype(dtype)
    k = kernel_fn(x, None, ("nngp", "ntk"))
    assert k.nngp.dtype == jnp.float32 and k.ntk.dtype == jnp.float32
    want = kernel_fn(x.astype(jnp.float64), None, ("nngp", "ntk"))
    for got, w in zip(k, want):
        assert _relative_error(got, w) < RTOL


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_ntk_gradient_at_x2_none(dtype):
    # A bias-free ReLU network's NTK is homogeneous of degree 2 in each input: scaling example i
    # by c scales K[i, i] by c^2 and K[i, j] by c. So the derivative along x_i of sum(K) is
    # exactly 2 K[i, i] + 2 sum_{j != i} K[i, j]. The diagonal's correlation is exactly 1, and
    # the tangent of its rounding error went through arccos's infinite slope: relative errors
    # of 9e-9 (float64) and 1e-4 (float32). Now a few ulps of the sum.
    keys = jr.split(jr.key(9), 3)
    model = nn.Sequential(
        [
            nn.Dense(6, 8, W_std=1.5, key=keys[0]),
            nn.Relu(),
            nn.Dense(8, 8, W_std=1.5, key=keys[1]),
            nn.Relu(),
            nn.Dense(8, 1, key=keys[2]),
        ]
    )
    kernel_fn = eqntk.limit(model)
    x = jr.normal(jr.key(10), (4, 6)).astype(dtype)
    ntk = kernel_fn(x, None, "ntk")
    grad = jax.grad(lambda x: jnp.sum(kernel_fn(x, None, "ntk")))(x)
    along = jnp.sum(grad * x, axis=1)
    exact = 2 * jnp.sum(ntk, axis=1)
    eps = float(jnp.finfo(dtype).eps)
    np.testing.assert_allclose(along, exact, rtol=64 * eps)


@pytest.mark.parametrize(
    "scale, where", [(1e20, "x1"), (jnp.nan, "x1"), (jnp.inf, "x2"), (1e20, "x2")]
)
def test_inputs_with_non_finite_variances_are_errors(scale, where):
    # float32 inputs of size 1e20 have squared norms of 1e40 > 3.4e38: the input Gram is inf
    # and the kernel would be NaN downstream (inf / inf in the arc-cosine correlation).
    kernel_fn = eqntk.limit(_mlp(nn.Relu(), d=3, depth=2))
    x = jr.normal(jr.key(9), (3, 3)).astype(jnp.float32)
    bad = x.at[1].multiply(scale)
    x1, x2 = (bad, x) if where == "x1" else (x, bad)
    with pytest.raises(eqx.EquinoxRuntimeError, match=f"`{where}` has entries that are NaN"):
        kernel_fn(x1, x2, "nngp")
    if where == "x1":
        with pytest.raises(eqx.EquinoxRuntimeError, match="overflows float32"):
            kernel_fn(x1, None, "nngp")
