"""`kernel_fn(x, None)` is exactly symmetric, bit for bit, for random architectures of every
layer family: eager, under `jax.jit`/`eqx.filter_jit`, in blocks of rows, and through `batch`."""

import equinox as eqx
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from hypothesis import given, settings

import eqntk
from eqntk import nn


C, L, N = 3, 6, 5  # channels, sequence length, examples: small, the property is exact


def _block(kind: str, key) -> list:
    """Layers taking `(C, L)` to `(C, L)`, one family each."""
    k1, k2 = jr.split(key)
    conv = lambda k, pad="SAME": nn.Conv(C, C, (3,), padding=pad, W_std=1.3, b_std=0.1, key=k)
    if kind == "conv":
        return [conv(k1), nn.Relu()]
    if kind == "circular":
        return [conv(k1, "CIRCULAR"), nn.Erf()]
    if kind == "transpose":
        return [nn.ConvTranspose(C, C, (3,), padding="SAME", W_std=1.2, key=k1), nn.Gelu()]
    if kind == "avgpool":
        return [conv(k1), nn.Abs(), nn.AvgPool((3,), (1,), padding="SAME")]
    if kind == "sumpool":
        return [conv(k1), nn.Relu(), nn.SumPool((2,), (1,), padding="SAME")]
    if kind == "attention":
        attention = nn.GlobalSelfAttention(C, C, 4, 4, 2, attention="identity", key=k1)
        return [conv(k2), attention]
    if kind == "layernorm":
        return [conv(k1), nn.LayerNorm(axis=("channel", "spatial")), nn.Relu()]
    if kind == "aggregate":
        return [conv(k1), nn.Relu(), nn.Aggregate()]
    if kind == "residual":
        return [conv(k1), nn.residual(nn.Sequential([nn.Relu(), conv(k2)]))]
    if kind == "concat":
        branches = nn.Parallel([conv(k1), nn.Sequential([conv(k2), nn.Relu()])])
        return [nn.FanOut(2), branches, nn.FanInConcat(), nn.Dense(2 * C, C, key=k1)]
    if kind == "product":
        return [nn.FanOut(2), nn.Parallel([conv(k1), conv(k2)]), nn.FanInProd()]
    raise AssertionError(kind)


KINDS = (
    "conv",
    "circular",
    "transpose",
    "avgpool",
    "sumpool",
    "attention",
    "layernorm",
    "aggregate",
    "residual",
    "concat",
    "product",
)
HEADS = ("flatten", "global_avg", "global_sum", "none")


def _model(kinds: list[str], head: str, key) -> nn.Sequential:
    keys = jr.split(key, len(kinds) + 1)
    layers = [layer for kind, k in zip(kinds, keys) for layer in _block(kind, k)]
    if head == "flatten":
        layers += [nn.Flatten(), nn.Dense(C * L, 2, key=keys[-1])]
    elif head in ("global_avg", "global_sum"):
        pool = nn.GlobalAvgPool() if head == "global_avg" else nn.GlobalSumPool()
        layers += [pool, nn.Dense(C, 2, key=keys[-1])]
    return nn.Sequential(layers)


def _assert_symmetric(a) -> None:
    """`a[i, j, s, s'] == a[j, i, s', s]` exactly, in either spatial layout."""
    a = np.asarray(a)
    # (N, N), the diagonal spatial layout (N, N, L), or the full one (N, N, L, L).
    perm = {2: [1, 0], 3: [1, 0, 2], 4: [1, 0, 3, 2]}[a.ndim]
    np.testing.assert_array_equal(a, a.transpose(perm))


ARCHITECTURES = dict(
    kinds=st.lists(st.sampled_from(KINDS), min_size=1, max_size=3),
    head=st.sampled_from(HEADS),
    masked=st.booleans(),
    seed=st.integers(0, 2**16),
)


# Every family at least once, in every output layout, with and without masks.
FAMILIES = [
    (("conv", "avgpool", "attention"), "global_avg", True),
    (("circular", "sumpool", "layernorm"), "none", False),
    (("transpose", "aggregate", "residual"), "flatten", True),
    (("concat", "product", "conv"), "global_sum", False),
]


@pytest.mark.parametrize("kinds, head, masked", FAMILIES)
def test_every_family_is_exactly_symmetric(kinds, head, masked):
    _check_symmetry(list(kinds), head, masked, seed=0)


@settings(max_examples=3, deadline=None, derandomize=True)
@given(**ARCHITECTURES)
def test_kernel_of_x_with_itself_is_exactly_symmetric(kinds, head, masked, seed):
    _check_symmetry(kinds, head, masked, seed)


@pytest.mark.slow
@settings(max_examples=60, deadline=None)
@given(**ARCHITECTURES)
def test_kernel_of_x_with_itself_is_exactly_symmetric_many(kinds, head, masked, seed):
    _check_symmetry(kinds, head, masked, seed)


def _check_symmetry(kinds, head, masked, seed):
    key_model, key_x, key_mask, key_graph = jr.split(jr.key(seed), 4)
    kernel_fn = eqntk.limit(_model(kinds, head, key_model))
    x = 10 ** jr.uniform(key_x, (N, 1, 1), minval=-1, maxval=1) * jr.normal(key_x, (N, C, L))
    side = {}
    if "aggregate" in kinds:
        side["pattern1"] = jr.bernoulli(key_graph, 0.4, (N, L, L)).astype(x.dtype)
    if masked:
        side["mask1"] = jr.bernoulli(key_mask, 0.3, (N, L)).at[:, 0].set(False)
    for diagonal_spatial in (False, True) if head == "none" else (False,):
        get = ("nngp", "ntk")
        call = lambda f: f(x, None, get, diagonal_spatial=diagonal_spatial, **side)
        for out in (
            call(kernel_fn),
            call(eqx.filter_jit(kernel_fn)),
            call(jax.jit(kernel_fn, static_argnames=("get", "diagonal_spatial"))),
            # One row per block: entry (i, j) and entry (j, i) come from different blocks.
            call(eqntk.limit(kernel_fn.model, block_bytes=1)),
        ):
            for a in out:
                assert jnp.all(jnp.isfinite(a))
                _assert_symmetric(a)
    if not side:
        # Overlapping last tiles (5 examples in tiles of 2) and mirrored off-diagonal tiles.
        for a in eqntk.batch(kernel_fn, 2)(x, None, ("nngp", "ntk")):
            _assert_symmetric(a)
