"""`limit` of Equinox modules without a rule: their `__call__` interpreted on kernels."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import pytest

import eqntk
from eqntk import nn
from tests.limits.eqx_witness import check_against_monte_carlo


def _close(a, b, tol=1e-12):
    """Same kernel to `tol` relative to its largest entry (float64 rounding of different
    summation orders)."""
    scale = jnp.max(jnp.abs(b))
    return bool(jnp.max(jnp.abs(a - b)) <= tol * scale)


def _assert_same_kernel(model, reference, x, tol=1e-12):
    a, b = eqntk.limit(model)(x), eqntk.limit(reference)(x)
    assert a.nngp.shape == b.nngp.shape
    assert _close(a.nngp, b.nngp, tol) and _close(a.ntk, b.ntk, tol)
    assert _close(a.cov1, b.cov1, tol)


# Hand-written modules ---------------------------------------------------------------------


class Twice(eqx.Module):
    lin: eqx.nn.Linear

    def __call__(self, x, *, key=None):
        h = self.lin(x)
        return h + h


class Residual(eqx.Module):
    l1: nn.Dense
    l2: nn.Dense
    l3: nn.Dense

    def __call__(self, x, *, key=None):
        h = self.l1(x)
        return self.l3(h + self.l2(jax.nn.relu(h)))


class ConcatHeads(eqx.Module):
    trunk: nn.Dense
    a: nn.Dense
    b: nn.Dense

    def __call__(self, x, *, key=None):
        h = jax.nn.relu(self.trunk(x))
        return jnp.concatenate([self.a(h), self.b(h)])


class SumHeads(eqx.Module):
    trunk: nn.Dense
    a: nn.Dense
    b: nn.Dense

    def __call__(self, x, *, key=None):
        h = jax.nn.relu(self.trunk(x))
        return self.a(h) - 2.0 * self.b(h)


class ScanStack(eqx.Module):
    first: eqx.nn.Linear
    hidden: eqx.nn.Linear
    last: eqx.nn.Linear

    def __init__(self, width, depth, key):
        k1, k2, k3 = jr.split(key, 3)
        self.first = eqx.nn.Linear(4, width, key=k1)
        make = lambda k: eqx.nn.Linear(width, width, key=k)
        self.hidden = eqx.filter_vmap(make)(jr.split(k2, depth))
        self.last = eqx.nn.Linear(width, 2, key=k3)

    def __call__(self, x, *, key=None):
        x = jax.nn.relu(self.first(x))
        dynamic, static = eqx.partition(self.hidden, eqx.is_array)

        def body(h, d):
            return jax.nn.relu(eqx.combine(d, static)(h)), None

        x, _ = jax.lax.scan(body, x, dynamic)
        return self.last(x)


class CorrelatedRelus(eqx.Module):
    l1: eqx.nn.Linear
    l2: eqx.nn.Linear
    out: eqx.nn.Linear

    def __call__(self, x, *, key=None):
        a = self.l1(x)
        b = 0.5 * a + self.l2(jnp.tanh(a))  # correlated with `a`
        return self.out(jax.nn.relu(a) + jax.nn.relu(b) + jnp.sin(a))


class Leaky(eqx.Module):
    l1: eqx.nn.Linear
    out: eqx.nn.Linear

    def __call__(self, x, *, key=None):
        h = self.l1(x)
        return self.out(jnp.where(h > 0, h, jnp.sin(h)) + 0.3 * h**2)


class ConvBlock(eqx.Module):
    conv0: eqx.nn.Conv
    conv1: eqx.nn.Conv
    conv2: eqx.nn.Conv

    def __call__(self, x, *, key=None):
        x = self.conv0(x)
        return x + self.conv2(jax.nn.relu(self.conv1(x)))


class PooledCNN(eqx.Module):
    conv: nn.Conv
    head: nn.Dense

    def __call__(self, x, *, key=None):
        h = jax.nn.relu(self.conv(x))
        return self.head(jnp.mean(h, axis=(1, 2)))


class UNetLike(eqx.Module):
    down: eqx.nn.Conv
    inner: eqx.nn.Conv
    out: eqx.nn.Conv

    def __call__(self, x, *, key=None):
        h = jax.nn.relu(self.down(x))  # (C, 6)
        coarse = 0.5 * (h[:, ::2] + h[:, 1::2])  # (C, 3): average of pairs
        coarse = jax.nn.relu(self.inner(coarse))
        up = jnp.repeat(coarse, 2, axis=1)  # (C, 6): nearest upsampling
        return self.out(jnp.concatenate([h, up], axis=0))  # the skip joins on channels


class TransformerLike(eqx.Module):
    embed: eqx.nn.Conv
    norm: eqx.nn.LayerNorm
    mix: eqx.nn.Conv
    ff1: eqx.nn.Conv
    ff2: eqx.nn.Conv
    head: eqx.nn.Linear

    def __call__(self, x, *, key=None):
        h = self.embed(x)  # (C, L), per-position linear maps are kernel-1 convolutions
        h = h + self.mix(self.norm(h))  # a position-mixing block in place of attention
        h = h + self.ff2(jax.nn.gelu(self.ff1(h)))
        return self.head(jnp.mean(h, axis=1))


class Slices(eqx.Module):
    conv: eqx.nn.Conv
    out: eqx.nn.Linear

    def __call__(self, x, *, key=None):
        h = jax.nn.relu(self.conv(x))  # (C, 5)
        z = h[:, 1:4] + jnp.flip(h, axis=1)[:, :3]
        return self.out(jnp.ravel(jnp.transpose(z[:, :, None], (0, 2, 1))))


# Exact equalities with eqntk combinator networks -------------------------------------------


def test_x_plus_x_is_four_times(getkey):
    m = Twice(eqx.nn.Linear(4, 8, key=getkey()))
    x = jr.normal(getkey(), (3, 4))
    a, b = eqntk.limit(m)(x), eqntk.limit(m.lin)(x)
    assert jnp.array_equal(a.nngp, 4 * b.nngp) and jnp.array_equal(a.ntk, 4 * b.ntk)


def test_residual_equals_fan_out_network(getkey):
    k = jr.split(getkey(), 3)
    m = Residual(
        nn.Dense(4, 8, W_std=1.2, b_std=0.1, key=k[0]),
        nn.Dense(8, 8, W_std=1.3, key=k[1]),
        nn.Dense(8, 2, key=k[2]),
    )
    branch = nn.Sequential([nn.Relu(), m.l2])
    ref = nn.Sequential(
        [m.l1, nn.FanOut(2), nn.Parallel([nn.Identity(), branch]), nn.FanInSum(), m.l3]
    )
    _assert_same_kernel(m, ref, jr.normal(getkey(), (3, 4)))


@pytest.mark.parametrize("cls", [ConcatHeads, SumHeads])
def test_shared_trunk_heads_equal_fan_out_network(getkey, cls):
    k = jr.split(getkey(), 3)
    m = cls(
        nn.Dense(4, 8, b_std=0.1, key=k[0]),
        nn.Dense(8, 3, key=k[1]),
        nn.Dense(8, 3, W_std=2.0, key=k[2]),
    )
    if cls is ConcatHeads:
        join = nn.FanInConcat()
        heads = nn.Parallel([m.a, m.b])
    else:
        join = nn.FanInSum()
        heads = nn.Parallel([m.a, nn.Sequential([m.b, nn.Elementwise(lambda z: -2.0 * z)])])
        # -2 b(h) is b with W_std and b_std doubled: an affine layer, so FanInSum applies.
        heads = nn.Parallel(
            [m.a, nn.Dense(8, 3, W_std=2.0 * m.b.W_std, b_std=m.b.b_std, key=getkey())]
        )
    ref = nn.Sequential([m.trunk, nn.Relu(), nn.FanOut(2), heads, join])
    _assert_same_kernel(m, ref, jr.normal(getkey(), (3, 4)))


class ProductOfBranches(eqx.Module):
    a: nn.Dense
    b: nn.Dense

    def __call__(self, x, *, key=None):
        return self.a(x) * self.b(x)


def test_product_of_branches_equals_fan_in_prod(getkey):
    k = jr.split(getkey(), 2)
    m = ProductOfBranches(nn.Dense(4, 8, b_std=0.2, key=k[0]), nn.Dense(4, 8, W_std=1.5, key=k[1]))
    ref = nn.Sequential([nn.FanOut(2), nn.Parallel([m.a, m.b]), nn.FanInProd()])
    _assert_same_kernel(m, ref, jr.normal(getkey(), (3, 4)))


class Wheres(eqx.Module):
    l1: nn.Dense

    def __call__(self, x, *, key=None):
        h = self.l1(x)
        return jnp.where(h > 0, h, 0.1 * h) - jax.nn.leaky_relu(h, 0.1) + jax.nn.leaky_relu(h, 0.1)


def test_stack_along_a_new_position_axis(getkey):
    class Stacked(eqx.Module):
        lin: eqx.nn.Linear

        def __call__(self, x, *, key=None):
            h = self.lin(x)
            return jnp.stack([h, -2.0 * h], axis=-1)  # (C, 2)

    m = Stacked(eqx.nn.Linear(4, 8, key=getkey()))
    x = jr.normal(getkey(), (3, 4))
    k, k0 = eqntk.limit(m)(x), eqntk.limit(m.lin)(x)
    for i, ci in enumerate((1.0, -2.0)):
        for j, cj in enumerate((1.0, -2.0)):
            assert _close(k.nngp[:, :, i, j], ci * cj * k0.nngp)
            assert _close(k.ntk[:, :, i, j], ci * cj * k0.ntk)


def test_where_leaky_relu_uses_the_closed_form(getkey):
    m = Wheres(nn.Dense(4, 8, W_std=1.3, b_std=0.2, key=getkey()))
    ref = nn.Sequential([m.l1, nn.LeakyRelu(0.1)])
    _assert_same_kernel(m, ref, jr.normal(getkey(), (3, 4)))


def test_scan_over_layers_equals_mlp(getkey):
    key = getkey()
    m = ScanStack(16, 3, key)
    mlp = eqx.nn.MLP(4, 2, 16, 4, key=key)
    _assert_same_kernel(m, mlp, jr.normal(getkey(), (3, 4)))


def test_spatial_mean_equals_global_average_pooling(getkey):
    k = jr.split(getkey(), 2)
    m = PooledCNN(nn.Conv(2, 8, (3, 3), padding="SAME", key=k[0]), nn.Dense(8, 1, key=k[1]))
    ref = nn.Sequential([m.conv, nn.Relu(), nn.GlobalAvgPool(), m.head])
    _assert_same_kernel(m, ref, jr.normal(getkey(), (2, 2, 3, 3)))


def test_conv_residual_block_equals_fan_out_network(getkey):
    k = jr.split(getkey(), 3)
    conv = lambda c_in, key: nn.Conv(c_in, 8, (3,), padding="SAME", b_std=0.1, key=key)
    m = ConvBlock(conv(2, k[0]), conv(8, k[1]), conv(8, k[2]))
    branch = nn.Sequential([m.conv1, nn.Relu(), m.conv2])
    ref = nn.Sequential(
        [m.conv0, nn.FanOut(2), nn.Parallel([nn.Identity(), branch]), nn.FanInSum()]
    )
    _assert_same_kernel(m, ref, jr.normal(getkey(), (2, 2, 5)))


# Monte Carlo witnesses --------------------------------------------------------------------


def _stemmed(key, d_in, width, module, spatial=False):
    """`module` after a wide first layer and a ReLU. A first layer's pre-activations are sums of
    `d_in` uniform terms, Gaussian only as `d_in` grows; after a wide layer they are Gaussian
    (as the limit assumes), so the witness tests the module and not the input dimension."""
    first = (
        eqx.nn.Conv1d(d_in, width, 1, key=key) if spatial else eqx.nn.Linear(d_in, width, key=key)
    )
    return eqx.nn.Sequential([first, eqx.nn.Lambda(jax.nn.relu), module])


def _linear3(key, cls, width):
    k = jr.split(key, 3)
    return cls(
        eqx.nn.Linear(width, width, key=k[0]),
        eqx.nn.Linear(width, width, key=k[1]),
        eqx.nn.Linear(width, 2, key=k[2]),
    )


def test_correlated_nonlinearities_against_monte_carlo(getkey):
    x = jr.normal(getkey(), (3, 6))
    # 16 networks of width 128: the tolerance follows from these counts (`mc_tolerance`).
    # 16 networks of width 64.
    make = lambda key: _stemmed(key, 6, 64, _linear3(jr.fold_in(key, 1), CorrelatedRelus, 64))
    check_against_monte_carlo(make, x, None, getkey(), 16, 64)


@pytest.mark.slow
def test_where_and_powers_against_monte_carlo(getkey):
    x = jr.normal(getkey(), (3, 6))

    def make(key):
        k = jr.split(key, 3)
        module = Leaky(eqx.nn.Linear(128, 128, key=k[0]), eqx.nn.Linear(128, 2, key=k[1]))
        return _stemmed(k[2], 6, 128, module)

    check_against_monte_carlo(make, x, None, getkey(), 16, 128)


@pytest.mark.slow
def test_unet_like_against_monte_carlo(getkey):
    x = jr.normal(getkey(), (2, 2, 6))

    def make(key):
        k = jr.split(key, 4)
        module = UNetLike(
            eqx.nn.Conv1d(64, 64, 3, padding=1, key=k[0]),
            eqx.nn.Conv1d(64, 64, 3, padding=1, key=k[1]),
            eqx.nn.Conv1d(128, 2, 1, key=k[2]),
        )
        return _stemmed(k[3], 2, 64, module, spatial=True)

    check_against_monte_carlo(make, x, None, getkey(), 16, 64)


@pytest.mark.slow
def test_transformer_like_against_monte_carlo(getkey):
    x = jr.normal(getkey(), (2, 3, 4))

    def make(key):
        k = jr.split(key, 5)
        w = 64
        return TransformerLike(
            eqx.nn.Conv1d(3, w, 1, key=k[0]),
            eqx.nn.LayerNorm((w, 4)),
            eqx.nn.Conv1d(w, w, 3, padding=1, key=k[1]),
            eqx.nn.Conv1d(w, w, 1, key=k[2]),
            eqx.nn.Conv1d(w, w, 1, key=k[3]),
            eqx.nn.Linear(w, 2, key=k[4]),
        )

    check_against_monte_carlo(make, x, None, getkey(), 16, 64)


@pytest.mark.slow
def test_slices_flips_and_ravel_against_monte_carlo(getkey):
    x = jr.normal(getkey(), (2, 2, 5))

    def make(key):
        k = jr.split(key, 3)
        module = Slices(
            eqx.nn.Conv1d(64, 64, 3, padding=1, key=k[0]), eqx.nn.Linear(192, 2, key=k[1])
        )
        return _stemmed(k[2], 2, 64, module, spatial=True)

    check_against_monte_carlo(make, x, None, getkey(), 16, 64)


@pytest.mark.slow
def test_conv_block_against_monte_carlo(getkey):
    x = jr.normal(getkey(), (2, 2, 5))

    def make(key):
        k = jr.split(key, 3)
        conv = lambda c, kk: eqx.nn.Conv1d(c, 64, 3, padding=1, key=kk)
        return ConvBlock(conv(2, k[0]), conv(64, k[1]), conv(64, k[2]))

    check_against_monte_carlo(make, x, None, getkey(), 16, 64)


# Errors -----------------------------------------------------------------------------------


def test_unsupported_primitive_names_it_and_the_line(getkey):
    class Sorted(eqx.Module):
        lin: eqx.nn.Linear

        def __call__(self, x, *, key=None):
            return jnp.sort(self.lin(x))

    with pytest.raises(
        NotImplementedError, match=r"(?s)`sort` at .*test_program.py:\d+.*register\(Sorted\)"
    ):
        eqntk.limit(Sorted(eqx.nn.Linear(4, 3, key=getkey())))(jnp.ones((2, 4)))


def test_shared_weights_are_an_error(getkey):
    class Siamese(eqx.Module):
        lin: eqx.nn.Linear

        def __call__(self, x, *, key=None):
            return self.lin(x) + self.lin(2.0 * x)

    with pytest.raises(NotImplementedError, match="shared weights"):
        eqntk.limit(Siamese(eqx.nn.Linear(4, 4, key=getkey())))(jnp.ones((2, 4)))


def test_nonlinearity_of_independent_nonlinear_sum_is_an_error(getkey):
    class Deep(eqx.Module):
        a: eqx.nn.Linear
        b: eqx.nn.Linear

        def __call__(self, x, *, key=None):
            return jnp.tanh(jax.nn.relu(self.a(x)) + jax.nn.relu(self.b(x)))

    m = Deep(eqx.nn.Linear(4, 4, key=getkey()), eqx.nn.Linear(4, 4, key=getkey()))
    with pytest.raises(NotImplementedError, match="not a function of one Gaussian"):
        eqntk.limit(m)(jnp.ones((2, 4)))


def test_channel_reduction_is_an_error(getkey):
    class Total(eqx.Module):
        lin: eqx.nn.Linear

        def __call__(self, x, *, key=None):
            return jnp.sum(jax.nn.relu(self.lin(x)), keepdims=True)

    with pytest.raises(NotImplementedError, match="over the channel axis"):
        eqntk.limit(Total(eqx.nn.Linear(4, 4, key=getkey())))(jnp.ones((2, 4)))


# Transforms and finite-width tools ---------------------------------------------------------


def test_program_under_jit_vmap_grad_and_batch(getkey):
    k = jr.split(getkey(), 3)
    m = Residual(
        nn.Dense(4, 8, b_std=0.1, key=k[0]), nn.Dense(8, 8, key=k[1]), nn.Dense(8, 2, key=k[2])
    )
    kernel_fn = eqntk.limit(m)
    x = jr.normal(getkey(), (4, 4))
    direct = kernel_fn(x, get="ntk")
    assert _close(eqx.filter_jit(kernel_fn)(x, get="ntk"), direct)
    rows = jax.vmap(lambda xi: kernel_fn(xi[None], x, get="ntk")[0])(x)
    assert _close(rows, direct, 1e-10)
    assert _close(eqntk.batch(kernel_fn, 2)(x, x, get="ntk"), direct, 1e-10)
    # Block-bounded memory: rows of x1 computed in blocks (a lax.map over the program).
    assert _close(eqntk.limit(m, block_bytes=1)(x, get="ntk"), direct, 1e-10)

    def loss(w_std):
        model = eqx.tree_at(lambda mm: mm.l2.W_std, m, w_std)
        return eqntk.limit(model)(x, get="nngp").sum()

    g = jax.grad(loss)(jnp.asarray(1.0))
    eps = 1e-6
    fd = (loss(jnp.asarray(1.0 + eps)) - loss(jnp.asarray(1.0 - eps))) / (2 * eps)
    assert jnp.allclose(g, fd, rtol=1e-6)


def test_program_works_with_empirical_and_monte_carlo_kernels(getkey):
    x = jr.normal(getkey(), (3, 6))
    make = lambda key: _stemmed(key, 6, 16, _linear3(jr.fold_in(key, 1), CorrelatedRelus, 16))
    ntk = eqntk.empirical_kernel(make(getkey()), x, None, get="ntk")
    assert ntk.shape[:2] == (3, 3)
    mc = eqntk.monte_carlo_kernel(make, getkey(), x, None, n_samples=2, get="nngp")
    assert mc.shape[:2] == (3, 3)
