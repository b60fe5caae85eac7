"""`limit` of Equinox modules without a rule: their `__call__` interpreted on kernels."""

import importlib.util
import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
import numpy as np
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
    # Exact in real arithmetic; the two programs may round a multiply-add differently (bit for
    # bit with XLA's default code emitters, a few ulps with the tests' cheaper ones).
    np.testing.assert_allclose(a.nngp, 4 * b.nngp, rtol=1e-15)
    np.testing.assert_allclose(a.ntk, 4 * b.ntk, rtol=1e-15)


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
    m = ScanStack(8, 2, key)
    mlp = eqx.nn.MLP(4, 2, 8, 3, key=key)
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


def test_user_code_in_a_folder_named_eqntk_is_still_the_users(getkey, tmp_path):
    # A user's project cloned as `eqntk/` (or any path containing the name): its lines are the
    # user's, not the library's, and the error names them.
    folder = tmp_path / "eqntk" / "project"
    folder.mkdir(parents=True)
    (folder / "sorted_model.py").write_text(
        "import equinox as eqx\n"
        "import jax.numpy as jnp\n\n\n"
        "class Sorted(eqx.Module):\n"
        "    lin: eqx.nn.Linear\n\n"
        "    def __call__(self, x, *, key=None):\n"
        "        return jnp.sort(self.lin(x))\n"
    )
    spec = importlib.util.spec_from_file_location("sorted_model", folder / "sorted_model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(NotImplementedError, match=r"`sort` at .*sorted_model.py:9 "):
        eqntk.limit(module.Sorted(eqx.nn.Linear(4, 3, key=getkey())))(jnp.ones((2, 4)))


def test_layernorm_inside_a_traced_module_checks_its_actual_weight(getkey):
    # The check of LayerNorm's initial weight ran at compile time inside the interpreter and
    # raised whatever the weight was; it must pass at 1 and fail at 2.
    class Normed(eqx.Module):
        conv: eqx.nn.Conv1d
        norm: eqx.nn.LayerNorm

        def __call__(self, x, *, key=None):
            return jnp.mean(self.norm(self.conv(x)), axis=1)

    model = Normed(eqx.nn.Conv1d(3, 4, 1, key=getkey()), eqx.nn.LayerNorm((4, 2)))
    x = jr.normal(getkey(), (2, 3, 2))
    k = eqntk.limit(model)(x)
    assert bool(jnp.all(jnp.isfinite(k.nngp)))
    trained = eqx.tree_at(lambda m: m.norm.weight, model, 2 * model.norm.weight)
    with pytest.raises(Exception, match="`weight` must have its initial value"):
        eqntk.limit(trained)(x)


class SharedLinear(eqx.Module):
    """One `Linear` applied to `x` and to `scale * x`: `W x + b + W (s x) + b`."""

    lin: eqx.nn.Linear
    scale: float = eqx.field(static=True)

    def __call__(self, x, *, key=None):
        return self.lin(x) + self.lin(self.scale * x)


@pytest.mark.parametrize("scale", [-1.0, 2.0])
@pytest.mark.parametrize("spatial", [False, True])
def test_shared_weights_on_two_inputs_are_one_affine_map(getkey, scale, spatial):
    """`W x + b + W (s x) + b = W ((1 + s) x) + 2 b`: its kernels are those of the layer on
    `(1 + s) x` plus three times the bias part (the layer's kernels at a zero input). With
    independent weights the `x` parts would add as `(1 + s^2) K` instead of `(1 + s)^2 K`."""
    if spatial:
        lin = eqx.nn.Conv1d(2, 4, 3, padding=1, key=getkey())
        x = jr.normal(getkey(), (3, 2, 5))
    else:
        lin = eqx.nn.Linear(4, 8, key=getkey())
        x = jr.normal(getkey(), (3, 4))
    shared = eqntk.limit(SharedLinear(lin, scale))(x)
    scaled, bias = eqntk.limit(lin)((1 + scale) * x), eqntk.limit(lin)(jnp.zeros_like(x))
    # Exact in real arithmetic; separate programs round differently in the last bits.
    np.testing.assert_allclose(shared.nngp, scaled.nngp + 3 * bias.nngp, rtol=1e-13)
    np.testing.assert_allclose(shared.ntk, scaled.ntk + 3 * bias.ntk, rtol=1e-13)
    np.testing.assert_allclose(shared.cov1, scaled.cov1 + 3 * bias.cov1, rtol=1e-13)


class Siamese(eqx.Module):
    """A shared body on a Gaussian value `h` and on `2 h`, whose ReLU outputs nearly cancel."""

    stem: eqx.nn.Linear
    body: eqx.nn.Linear
    head: eqx.nn.Linear

    def __call__(self, x, *, key=None):
        h = self.stem(x)
        # relu(W (2 h) + b) = 2 relu(W h + b / 2): with shared `W` the difference is left with
        # the biases' part only, a far smaller kernel than with independent weights.
        return self.head(jax.nn.relu(self.body(h)) - 0.5 * jax.nn.relu(self.body(2.0 * h)))


@pytest.mark.slow
def test_shared_weights_against_monte_carlo(getkey):
    x = jr.normal(getkey(), (3, 6))

    def make(key):
        k = jr.split(key, 4)
        body = Siamese(
            eqx.nn.Linear(64, 64, key=k[0]),
            eqx.nn.Linear(64, 64, key=k[1]),
            eqx.nn.Linear(64, 2, key=k[2]),
        )
        return _stemmed(k[3], 6, 64, body)

    # 128 networks of width 64: enough to tell shared weights from independent ones, whose
    # limit has a 2x larger NNGP and a 5x larger NTK here (checked to fail this test).
    check_against_monte_carlo(make, x, None, getkey(), 128, 64)


class PerPosition(eqx.Module):
    """A `Linear` applied at every position of a sequence with `jax.vmap`."""

    lin: eqx.nn.Linear
    out: eqx.nn.Linear

    def __call__(self, x, *, key=None):
        h = jax.nn.relu(jax.vmap(self.lin, in_axes=1, out_axes=1)(x))
        return self.out(jnp.mean(h, axis=1))


class OneByOne(eqx.Module):
    conv: eqx.nn.Conv1d
    out: eqx.nn.Linear

    def __call__(self, x, *, key=None):
        return self.out(jnp.mean(jax.nn.relu(self.conv(x)), axis=1))


def test_layer_vmapped_over_positions_equals_a_one_by_one_convolution(getkey):
    """`vmap` of a `Linear` over positions is a convolution of filter size 1 (the same
    initialisation: fan-in 3 either way); exact, also between two batches (the cross-position
    entries of the two sides kept apart)."""
    k1, k2 = getkey(), getkey()
    vmapped = PerPosition(eqx.nn.Linear(3, 8, key=k1), eqx.nn.Linear(8, 2, key=k2))
    reference = OneByOne(eqx.nn.Conv1d(3, 8, 1, key=k1), eqx.nn.Linear(8, 2, key=k2))
    x1, x2 = jr.normal(getkey(), (3, 3, 4)), jr.normal(getkey(), (2, 3, 4))
    got, want = eqntk.limit(vmapped)(x1, x2), eqntk.limit(reference)(x1, x2)
    # The same formulas on the same numbers, summed in other orders.
    for name in ("nngp", "ntk", "cov1", "cov2"):
        np.testing.assert_allclose(getattr(got, name), getattr(want, name), rtol=1e-12)


def test_layer_vmapped_over_many_positions_or_parameters_is_a_clear_error(getkey):
    model = PerPosition(eqx.nn.Linear(3, 4, key=getkey()), eqx.nn.Linear(4, 1, key=getkey()))
    with pytest.raises(NotImplementedError, match=r"`Linear` .* 40 positions.*test_program.py"):
        eqntk.limit(model)(jnp.ones((2, 3, 40)))

    class Nested(eqx.Module):
        lin: eqx.nn.Linear

        def __call__(self, x, *, key=None):
            at_each = jax.vmap(jax.vmap(self.lin, in_axes=1, out_axes=1), in_axes=2, out_axes=2)
            return at_each(x)

    with pytest.raises(NotImplementedError, match="inside another `jax.vmap`"):
        eqntk.limit(Nested(eqx.nn.Linear(3, 4, key=getkey())))(jnp.ones((2, 3, 2, 2)))


def test_shared_weights_of_a_layer_without_fresh_weights_are_an_error(getkey):
    class TwiceNorm(eqx.Module):
        norm: eqx.nn.LayerNorm
        lin: eqx.nn.Linear

        def __call__(self, x, *, key=None):
            h = self.lin(x)
            return self.norm(h) + self.norm(2.0 * h + 1.0)

    model = TwiceNorm(eqx.nn.LayerNorm(4), eqx.nn.Linear(4, 4, key=getkey()))
    with pytest.raises(NotImplementedError, match="shared parameters"):
        eqntk.limit(model)(jnp.ones((2, 4)))


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


# Kinks and jumps -------------------------------------------------------------------------


class Applied(eqx.Module):
    lin: nn.Dense
    fn: Callable = eqx.field(static=True)

    def __call__(self, x, *, key=None):
        return self.fn(self.lin(x))


def _applied(getkey, fn):
    return Applied(nn.Dense(4, 8, W_std=1.2, b_std=0.3, key=getkey()), fn)


@pytest.mark.parametrize(
    "fn, scale, shift",
    [
        (lambda h: (h > 0).astype(h.dtype), 1.0, 0.0),
        (lambda h: jnp.heaviside(h, 0.5), 1.0, 0.0),
        (lambda h: jnp.where(h > 0, 1.0, 0.0), 1.0, 0.0),
        (jnp.sign, 4.0, -1.0),  # E[sign u sign v] = 4 P(u > 0, v > 0) - 1
    ],
)
def test_steps_have_the_orthant_probability(getkey, fn, scale, shift):
    """`E[step(u) step(v)] = 1/4 + arcsin(rho) / (2 pi)`; the NTK is zero (the derivative is
    zero almost everywhere, as the gradient of a finite network)."""
    m = _applied(getkey, fn)
    x = jr.normal(getkey(), (3, 4))
    k, k0 = eqntk.limit(m)(x), eqntk.limit(m.lin)(x)
    d = jnp.sqrt(jnp.diag(k0.nngp))
    rho = jnp.clip(k0.nngp / (d[:, None] * d[None]), -1, 1)
    expected = scale * (0.25 + jnp.arcsin(rho) / (2 * math.pi)) + shift
    assert jnp.allclose(k.nngp, expected, rtol=0, atol=1e-12)
    assert jnp.array_equal(k.ntk, jnp.zeros_like(k.ntk))


def _mixed_pl(h):
    step, below = (h > 0).astype(h.dtype), (h < 0).astype(h.dtype)
    return jax.nn.relu(h) + 0.5 * step - 0.3 * jnp.sign(h) + 0.2 * h * below


@pytest.mark.parametrize(
    "fn",
    [
        _mixed_pl,  # kinks and jumps at 0 only: closed form
        # A kink or a jump plus a smooth function: half-line quadrature (the default suite has
        # one through `test_correlated_nonlinearities_against_monte_carlo`).
        pytest.param(lambda h: jax.nn.relu(h) + jnp.sin(h), marks=pytest.mark.slow),
        pytest.param(lambda h: jnp.where(h > 0, 1.0, -0.5) + jnp.tanh(h), marks=pytest.mark.slow),
    ],
)
def test_kinks_and_jumps_at_zero_against_gaussian_sampling(getkey, fn):
    """The NNGP `E[f(u) f(v)]` and the NTK `E[f'(u) f'(v)] Θ` against 200 000 draws of the
    Gaussian pre-activations (the tolerance is 6 standard errors of the sample means)."""
    m = _applied(getkey, fn)
    x = jr.normal(getkey(), (3, 4))
    k, k0 = eqntk.limit(m)(x), eqntk.limit(m.lin)(x)
    n = 200_000
    z = jr.multivariate_normal(getkey(), jnp.zeros(3), k0.nngp, (n,))
    fz = fn(z)
    dfz = jax.vmap(jax.vmap(jax.grad(lambda t: fn(t).astype(t.dtype))))(z)
    for samples, exact, factor in ((fz, k.nngp, 1.0), (dfz, k.ntk, k0.ntk)):
        products = samples[:, :, None] * samples[:, None, :]
        mean, sd = products.mean(0) * factor, products.std(0) * jnp.abs(factor)
        assert jnp.all(jnp.abs(mean - exact) <= 6 * sd / math.sqrt(n) + 1e-12)


@pytest.mark.parametrize(
    "fn, match",
    [
        (jax.nn.relu6, "kink at 0"),
        (jax.nn.hard_tanh, "kink at -1"),
        (lambda h: jnp.clip(h, -0.5, 2.0), "kink"),
        (lambda h: jax.nn.relu(h - 1.0), "kink at 1"),
        (lambda h: (h > 0.5).astype(h.dtype), "jump at 0.5"),
        (jnp.floor, "kink or jump"),
    ],
)
def test_kinks_and_jumps_away_from_zero_are_errors(getkey, fn, match):
    """Only quadrature would be left for these, and it is not accurate at a kink or a jump."""
    with pytest.raises(NotImplementedError, match=f"(?s){match}.*quadrature"):
        eqntk.limit(_applied(getkey, fn))(jr.normal(getkey(), (2, 4)))


@pytest.mark.slow
def test_smooth_function_written_with_kinks_is_accepted(getkey):
    """`softplus` is `max(t, 0) + log1p(exp(-|t|))`: two kinked terms, smooth as a whole, so
    its quadrature is that of `nn.Elementwise` (the same kernel up to the rounding of the two
    quadrature codes, 1e-12 of the result times the 25^2 terms summed)."""
    m = _applied(getkey, jax.nn.softplus)
    ref = nn.Sequential([m.lin, nn.Elementwise(jax.nn.softplus)])
    _assert_same_kernel(m, ref, jr.normal(getkey(), (3, 4)), tol=1e-9)


# Linearisation and Taylor expansion of a traced module -------------------------------------


def test_linearize_and_taylor_expand_a_traced_module(getkey):
    k = jr.split(getkey(), 3)
    m = Residual(
        nn.Dense(4, 8, b_std=0.1, key=k[0]), nn.Dense(8, 8, key=k[1]), nn.Dense(8, 2, key=k[2])
    )
    x = jr.normal(getkey(), (3, 4))
    lin, quad = eqntk.linearize(m), eqntk.taylor_expand(m, 2)
    assert _close(jax.vmap(lin)(x), jax.vmap(m)(x)) and _close(jax.vmap(quad)(x), jax.vmap(m)(x))
    # The empirical NTK of the linearised module is the module's own (same Jacobian).
    assert _close(
        eqntk.empirical_kernel(lin, x, None, get="ntk"),
        eqntk.empirical_kernel(m, x, None, get="ntk"),
        1e-10,
    )
    # Away from the expansion point, the errors are O(delta^2) and O(delta^3).
    # A small step of the weights and biases (the scalar hyperparameters W_std, b_std are not
    # trained: the forward pass stops their gradient), small enough that no ReLU changes sign.
    step = lambda a: (1e-4 if a.ndim else 0.0) * jnp.ones_like(a)
    delta = jtu.tree_map(step, eqx.filter(m, eqx.is_inexact_array))
    moved = eqx.apply_updates(m, delta)
    lin_moved = eqx.tree_at(lambda e: e.params, lin, eqx.apply_updates(lin.params, delta))
    quad_moved = eqx.tree_at(lambda e: e.params, quad, eqx.apply_updates(quad.params, delta))
    truth = jax.vmap(moved)(x)
    err1 = jnp.max(jnp.abs(jax.vmap(lin_moved)(x) - truth))
    err2 = jnp.max(jnp.abs(jax.vmap(quad_moved)(x) - truth))
    assert err2 < 0.1 * err1
