"""Bounded working memory: kernels computed over blocks of rows of `x1` equal the whole."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import eqntk
from eqntk import nn
from tests.nn.test_graph import _gnn, _graphs
from tests.nn.test_masking import ATTENTION_LENGTH, _attention_body, _masks


def _cnn(key, pool=True):
    k1, k2, k3 = jr.split(key, 3)
    head = [nn.GlobalAvgPool(), nn.Dense(8, 2, key=k3)] if pool else [nn.Flatten()]
    return nn.Sequential(
        [
            nn.Conv(2, 8, (3, 3), padding="SAME", W_std=1.3, b_std=0.1, key=k1),
            nn.Relu(),
            nn.AvgPool((2, 2), strides=(1, 1), padding="SAME"),
            nn.Conv(8, 8, (2, 2), padding="VALID", W_std=1.3, b_std=0.1, key=k2),
            nn.Erf(),
            *head,
        ]
    )


def _limit(model, block_bytes):
    # Compiled: eager calls would compile every small operation of the network separately.
    return eqx.filter_jit(eqntk.limit(model, block_bytes=block_bytes))


def _assert_same(blocked: eqntk.Kernel, whole: eqntk.Kernel):
    assert blocked.x1_is_x2 == whole.x1_is_x2
    for name in ("nngp", "ntk", "cov1", "cov2", "mask1", "mask2"):
        got, want = getattr(blocked, name), getattr(whole, name)
        assert (got is None) == (want is None), name
        if want is not None:
            assert got.shape == want.shape, name
            # The same formulas on the same numbers; only XLA's fusion choices differ.
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14, err_msg=name)


# One row of `x1` per block, and three rows of seven (a ragged last block).
@pytest.mark.parametrize("rows", [1, 3])
@pytest.mark.parametrize("pool", [True, False])
def test_blocks_equal_the_whole(getkey, rows, pool):
    model = _cnn(getkey(), pool)
    x1, x2 = jr.normal(getkey(), (7, 2, 4, 4)), jr.normal(getkey(), (5, 2, 4, 4))
    # The largest kernel per pair: NNGP and NTK over 4 x 4 positions, the full spatial
    # covariance under pooling and its diagonal under Flatten, in float64.
    pair = (16**2 if pool else 16) * 8 * 2
    whole = _limit(model, None)(x1, x2)
    blocked = _limit(model, rows * 5 * pair)(x1, x2)
    _assert_same(blocked, whole)


def test_kernel_of_x1_with_itself_stays_symmetric(getkey):
    model = _cnn(getkey())
    x = jr.normal(getkey(), (5, 2, 4, 4))
    whole = _limit(model, None)(x, get=None)
    blocked = _limit(model, 1)(x)
    _assert_same(blocked, whole)
    assert blocked.cov2 is None
    np.testing.assert_array_equal(blocked.nngp, blocked.nngp.T)
    np.testing.assert_array_equal(blocked.ntk, blocked.ntk.T)
    # Full spatial layout: the kernel is symmetric under swapping the examples and positions.
    full = _limit(nn.Sequential(list(model.layers[:3])), 1)(x)
    np.testing.assert_array_equal(full.nngp, jnp.transpose(full.nngp, (1, 0, 3, 2, 5, 4)))


def test_masks_and_graphs_are_split_with_the_rows(getkey):
    x1, x2 = jr.normal(getkey(), (3, 2, 5)), jr.normal(getkey(), (4, 2, 5))
    m1, m2 = _masks([2, 5, 3], ATTENTION_LENGTH), _masks([4, 1, 5, 2], ATTENTION_LENGTH)
    body = _attention_body(getkey(), width=8)
    _assert_same(
        _limit(body, 1)(x1, x2, mask1=m1, mask2=m2),
        _limit(body, None)(x1, x2, mask1=m1, mask2=m2),
    )
    _assert_same(
        _limit(body, 1)(x1, mask1=m1),
        _limit(body, None)(x1, mask1=m1),
    )
    gnn = _gnn(getkey(), width=8)
    x1, x2 = jr.normal(getkey(), (3, 3, 5)), jr.normal(getkey(), (2, 3, 5))
    a1, a2 = _graphs(getkey(), 3), _graphs(getkey(), 2)
    _assert_same(
        _limit(gnn, 1)(x1, x2, pattern1=a1, pattern2=a2),
        _limit(gnn, None)(x1, x2, pattern1=a1, pattern2=a2),
    )


def test_streams_and_kernel_inputs(getkey):
    k1, k2 = jr.split(getkey())
    x1, x2 = jr.normal(getkey(), (4, 3)), jr.normal(getkey(), (3, 3))
    branches = nn.Sequential([nn.Dense(3, 8, b_std=0.1, key=k1), nn.Relu(), nn.FanOut(2)])
    whole = _limit(branches, None)(x1, x2)
    blocked = _limit(branches, 1)(x1, x2)
    assert isinstance(blocked, tuple) and len(blocked) == 2
    for b, w in zip(blocked, whole, strict=True):
        _assert_same(b, w)
    # Continuing from a kernel: its rows are split the same way.
    head = nn.Sequential([nn.Relu(), nn.Dense(8, 1, b_std=0.1, key=k2)])
    start = eqntk.limit(branches.layers[0])(x1, x2)
    _assert_same(_limit(head, 1)(start), _limit(head, None)(start))


def test_gradient_through_blocks(getkey):
    model = _cnn(getkey())
    x1, x2 = jr.normal(getkey(), (3, 2, 4, 4)), jr.normal(getkey(), (2, 2, 4, 4))

    def loss(w_std, block_bytes):
        m = eqx.tree_at(lambda m: m.layers[0].W_std, model, w_std)
        return jnp.sum(_limit(m, block_bytes)(x1, x2, get="ntk"))

    gradient = jax.jit(jax.grad(loss), static_argnums=1)
    g_blocked, g_whole = gradient(1.3, 1), gradient(1.3, None)
    np.testing.assert_allclose(g_blocked, g_whole, rtol=1e-12)


def test_blocks_bound_the_temporaries(getkey):
    """The compiled program of a pooling CNN (full spatial covariances) holds a fraction of
    the temporaries when computed in blocks of rows."""
    model = _cnn(getkey())
    x1, x2 = jr.normal(getkey(), (16, 2, 6, 6)), jr.normal(getkey(), (16, 2, 6, 6))

    def temporaries(block_bytes):
        fn = jax.jit(lambda a, b: _limit(model, block_bytes)(a, b, "ntk"))
        return fn.lower(x1, x2).compile().memory_analysis().temp_size_in_bytes

    # One layer's NNGP and NTK for all pairs: 16 * 16 * 36^2 * 8 bytes * 2 = 5.3 MB.
    whole, blocked = temporaries(None), temporaries(2**20)
    assert whole > 5e6
    assert blocked < whole / 3


def test_block_size_probe_sees_arrays_inside_loops_and_branches():
    """Blocks are sized by the largest array of one pair's program, also where it is made in
    a loop body, a branch or a nested jit (e.g. a `Repeat`'s scan)."""
    from eqntk.limits._blocks import _largest_value_bytes

    def inner(c):
        big = jnp.outer(c, c)  # (n, n): exists only inside
        return c + jax.lax.cond(c[0] > 0, lambda b: b.sum(0), lambda b: b.sum(1), big)

    weights = np.ones((3, 80, 80))  # constants: the same for every pair, not counted

    def program(x):
        step = lambda c, w: (jax.jit(inner)(c) + w.sum(), None)
        return jax.lax.scan(step, x, jnp.asarray(weights) * 2)[0]

    jaxpr = jax.make_jaxpr(program)(jnp.ones(50, jnp.float64)).jaxpr
    assert _largest_value_bytes(jaxpr) == 50 * 50 * 8


def test_default_leaves_small_kernels_whole(getkey):
    model = _cnn(getkey())
    x1, x2 = jr.normal(getkey(), (3, 2, 4, 4)), jr.normal(getkey(), (2, 2, 4, 4))
    jaxpr = str(jax.make_jaxpr(lambda a, b: eqntk.limit(model)(a, b, "ntk"))(x1, x2))
    blocked = str(
        jax.make_jaxpr(lambda a, b: eqntk.limit(model, block_bytes=1)(a, b, "ntk"))(x1, x2)
    )
    assert "scan" not in jaxpr and "scan" in blocked


@pytest.mark.parametrize("bad", [0, -5, True])
def test_bad_block_bytes(bad):
    with pytest.raises(ValueError, match="`block_bytes` must be a positive integer or None"):
        eqntk.limit(nn.Relu(), block_bytes=bad)
    # Other types are caught by the signature's type check, which names the argument.
    for wrong in (1.5, "16MiB"):
        with pytest.raises(TypeError, match="block_bytes"):
            eqntk.limit(nn.Relu(), block_bytes=wrong)
