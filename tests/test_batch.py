"""`eqntk.batch`: tiled kernels equal untiled ones, on one device (see test_batch_devices.py)."""

import io
import re
import subprocess
import sys
import textwrap

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import eqntk
from eqntk import nn
from eqntk.batching._progress import progress_bar
from eqntk.batching._tiles import mirror_permutation, tile_pairs, tile_starts


# Tiles are computed by the same kernel function on sub-batches; entries agree to rounding,
# except that the ReLU arc-cosine map amplifies rounding near unit correlation (the diagonal)
# by about 1/sqrt(eps): 1e-8 relative in float64.
RTOL, ATOL = 1e-7, 1e-10


def _mlp(key, c_in=3, width=16, c_out=2):
    k1, k2 = jr.split(key)
    return nn.Sequential(
        [
            nn.Dense(c_in, width, W_std=1.4, b_std=0.1, key=k1),
            nn.Relu(),
            nn.Dense(width, c_out, W_std=1.2, b_std=0.2, key=k2),
        ]
    )


def _assert_same(tiled, untiled):
    """Same PyTree (Kernel metadata, named-tuple fields) and allclose leaves."""
    tiled_leaves, tiled_tree = jax.tree_util.tree_flatten(tiled)
    leaves, tree = jax.tree_util.tree_flatten(untiled)
    # Named tuples are made afresh by each call: compare their structure by name.
    assert str(tiled_tree) == str(tree)
    for a, b in zip(tiled_leaves, leaves):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL)


# One batch shape for the vector tests, so that they share the compiled tiles.
N1, N2, SIZE = 11, 6, 4  # 4 divides neither: ragged last tiles
GETS = [None, "nngp", ("cov1", "ntk", "cov2")]


@pytest.mark.parametrize("store_on_host", [False, True])
@pytest.mark.parametrize("with_x2", [False, True])
def test_vectors(getkey, store_on_host, with_x2):
    kernel_fn = eqntk.limit(_mlp(getkey()))
    x1 = jr.normal(getkey(), (N1, 3))
    x2 = jr.normal(getkey(), (N2, 3)) if with_x2 else None
    batched = eqntk.batch(kernel_fn, SIZE, store_on_host=store_on_host)
    array_type = np.ndarray if store_on_host else jax.Array
    for get in GETS:
        out = batched(x1, x2, get)
        _assert_same(out, kernel_fn(x1, x2, get))
        assert all(isinstance(leaf, array_type) for leaf in jax.tree_util.tree_leaves(out))


def test_symmetric_result_is_exactly_symmetric(getkey):
    kernel_fn = eqntk.limit(_mlp(getkey()))
    x = jr.normal(getkey(), (N1, 3))
    k = eqntk.batch(kernel_fn, SIZE)(x)
    assert k.x1_is_x2 and k.cov2 is None
    np.testing.assert_array_equal(k.nngp, k.nngp.T)
    np.testing.assert_array_equal(k.ntk, k.ntk.T)


def _spatial_model(key, n_spatial):
    # Dense acts on the channel axis at every position, so the output keeps the inputs'
    # spatial axes and the kernel has the full (interleaved) spatial layout.
    k1, k2 = jr.split(key)
    if n_spatial == 1 and hasattr(nn, "Conv"):
        first = nn.Conv(3, 8, (3,), padding="SAME", W_std=1.3, b_std=0.1, key=k1)
    else:
        first = nn.Dense(3, 8, W_std=1.3, b_std=0.1, key=k1)
    return nn.Sequential([first, nn.Relu(), nn.Dense(8, 2, W_std=1.1, key=k2)])


@pytest.mark.parametrize(
    "spatial, store_on_host",
    # The 2-D case (same code path, one more interleaved pair) runs with -m slow.
    [((5,), False), pytest.param((4, 3), True, marks=pytest.mark.slow)],
)
def test_images_full_spatial_layout(getkey, spatial, store_on_host):
    kernel_fn = eqntk.limit(_spatial_model(getkey(), len(spatial)))
    x1 = jr.normal(getkey(), (7, 3, *spatial))
    x2 = jr.normal(getkey(), (5, 3, *spatial))
    batched = eqntk.batch(kernel_fn, 3, store_on_host=store_on_host)
    k = batched(x1)
    assert not k.diagonal_spatial and k.nngp.ndim == 2 + 2 * len(spatial)
    _assert_same(k, kernel_fn(x1))
    # The mirror image swaps the batch axes and each interleaved spatial pair: exact symmetry.
    swap = mirror_permutation(k.nngp.ndim, diagonal_spatial=False)
    np.testing.assert_array_equal(k.nngp, np.transpose(k.nngp, swap))
    _assert_same(batched(x1, x2, "nngp"), kernel_fn(x1, x2, "nngp"))
    # Keyword arguments reach the kernel function: here the diagonal spatial layout.
    diagonal = batched(x1, x2, ("ntk", "cov2"), diagonal_spatial=True)
    _assert_same(diagonal, kernel_fn(x1, x2, ("ntk", "cov2"), diagonal_spatial=True))


def test_generic_callables_empirical_and_monte_carlo(getkey):
    model = _mlp(getkey(), width=32)
    x1, x2 = jr.normal(getkey(), (9, 3)), jr.normal(getkey(), (5, 3))
    # `eqx.Partial` keeps the parameters as inputs of the compiled tiles (a plain lambda or
    # `functools.partial` would bake them in as constants).
    empirical = eqx.Partial(eqntk.empirical_kernel, model)
    monte_carlo = eqx.Partial(eqntk.monte_carlo_kernel, _mlp, getkey())
    cases = [
        (empirical, {}, None, (None, x2)),  # the default `get`, "ntk"
        # Unknown layout of the trailing output axes: every tile is computed, none mirrored.
        (empirical, {"trace_axes": ()}, "nngp", (None,)),
        (monte_carlo, {"n_samples": 2}, ("nngp", "ntk"), (None,)),
    ]
    for fn, kwargs, get, x2s in cases:
        for x2_ in x2s:
            tiled = eqntk.batch(fn, 4)(x1, x2_, get, **kwargs)
            untiled = fn(x1, x2_, **kwargs) if get is None else fn(x1, x2_, get=get, **kwargs)
            _assert_same(tiled, untiled)


def test_batch_size_at_least_n_is_one_tile(getkey):
    kernel_fn = eqntk.limit(_mlp(getkey()))
    x1, x2 = jr.normal(getkey(), (N1, 3)), jr.normal(getkey(), (N2, 3))
    _assert_same(eqntk.batch(kernel_fn, 100)(x1, x2, "nngp"), kernel_fn(x1, x2, "nngp"))


def test_user_mesh_and_devices(getkey):
    kernel_fn = eqntk.limit(_mlp(getkey()))
    x = jr.normal(getkey(), (N1, 3))
    expected = kernel_fn(x, None, "nngp")
    mesh = jax.make_mesh((1,), ("batch",))
    _assert_same(eqntk.batch(kernel_fn, SIZE, mesh=mesh)(x, get="nngp"), expected)
    batched = eqntk.batch(kernel_fn, SIZE, devices=jax.devices()[:1])
    _assert_same(batched(x, get="nngp"), expected)


def test_tile_plan():
    assert tile_starts(8, 4) == [0, 4]
    # The last tile ends at the last example, overlapping its neighbour.
    assert tile_starts(10, 4) == [0, 4, 6]
    assert tile_starts(3, 3) == [0]
    off, diagonal = tile_pairs([0, 4, 6], [0, 4, 6], x1_is_x2=True, mirrored=True)
    assert off == [(0, 4), (0, 6), (4, 6)] and diagonal == [(0, 0), (4, 4), (6, 6)]
    off, diagonal = tile_pairs([0, 4], [0, 4], x1_is_x2=True, mirrored=False)
    assert off == [(0, 4), (4, 0)] and len(diagonal) == 2
    off, diagonal = tile_pairs([0, 4], [0, 2, 3], x1_is_x2=False, mirrored=False)
    assert len(off) == 6 and diagonal == []


def test_progress(getkey, capfd):
    kernel_fn = eqntk.limit(_mlp(getkey()))
    x = jr.normal(getkey(), (N1, 3))
    eqntk.batch(kernel_fn, SIZE, progress=True)(x, get="nngp")
    # 3 x 3 tiles, of which the 6 on and above the diagonal are computed.
    assert "6/6 tiles" in capfd.readouterr().err
    # Off by default when stderr is not a terminal (as under pytest).
    eqntk.batch(kernel_fn, SIZE)(x, get="nngp")
    assert capfd.readouterr().err == ""


def test_progress_bar_line():
    stream = io.StringIO()
    advance = progress_bar(3, enabled=True, stream=stream)
    advance(1)
    advance(2)
    text = stream.getvalue()
    assert re.search(r"\[#{10}\.{20}\] 1/3 tiles, [\d.]+ tiles/s, 0:00 elapsed, \S+ left", text)
    assert text.endswith("3/3 tiles, " + text.split("3/3 tiles, ")[1]) and text.endswith("\n")


def test_bad_input(getkey):
    kernel_fn = eqntk.limit(_mlp(getkey()))
    for size in (0, -3):
        with pytest.raises(ValueError, match=r"`batch_size` must be a positive integer, got"):
            eqntk.batch(kernel_fn, size)
    mesh = jax.make_mesh((1,), ("data",))
    with pytest.raises(ValueError, match=r"`mesh` must have an axis named 'batch'.*\('data',\)"):
        eqntk.batch(kernel_fn, 2, mesh=mesh)
    with pytest.raises(ValueError, match="Pass `mesh` or `devices`, not both"):
        eqntk.batch(kernel_fn, 2, mesh=jax.make_mesh((1,), ("batch",)), devices=jax.devices())
    with pytest.raises(ValueError, match="`devices` must be a non-empty sequence"):
        eqntk.batch(kernel_fn, 2, devices=[])
    # (Under the test suite's runtime type checks, the annotation rejects it first.)
    with pytest.raises(TypeError, match="kernel_fn"):
        eqntk.batch("nngp", 2)
    x = jr.normal(getkey(), (4, 3))
    batched = eqntk.batch(kernel_fn, 2)
    with pytest.raises(TypeError, match="x1"):
        batched(kernel_fn(x))
    with pytest.raises(ValueError, match=r"`x2` must hold at least one example.*\(0, 3\)"):
        batched(x, jnp.zeros((0, 3)))

    def per_example_only(x1, x2, get=None):
        return jnp.sum(x1, axis=1)  # (N1,), but not named `cov1`

    with pytest.raises(ValueError, match=r"`kernel_fn` returned an array at `output` of shape"):
        eqntk.batch(per_example_only, 2)(x)


_MEMORY_SCRIPT = textwrap.dedent(
    """
    import re, sys
    import jax, jax.numpy as jnp, jax.random as jr
    import eqntk
    from eqntk import nn

    def status(field):
        return int(re.search(field + r":\\s+(\\d+)", open("/proc/self/status").read()).group(1))

    n, size = int(sys.argv[1]), 256
    keys = jr.split(jr.key(0), 3)
    model = nn.Sequential([nn.Dense(64, 256, b_std=0.1, key=keys[0]), nn.Relu(),
                           nn.Dense(256, 256, b_std=0.1, key=keys[1]), nn.Relu(),
                           nn.Dense(256, 1, key=keys[2])])
    batched = eqntk.batch(eqntk.limit(model), size, store_on_host=True)
    x = jr.normal(jr.key(1), (n, 64), jnp.float32)
    batched(x[: 2 * size], get="nngp")  # compile first: compilation has its own peak
    open("/proc/self/clear_refs", "w").write("5")  # reset the peak resident size (VmHWM)
    base = status("VmRSS")
    out = batched(x, get="nngp")
    print((status("VmHWM") - base) * 1024 - out.nbytes)
    """
)


@pytest.mark.slow
def test_peak_memory_is_bounded_by_tiles_and_output():
    """Peak memory beyond the output stays flat as N grows 4x (the output grows 16x)."""
    extra = {}
    for n in (1024, 4096):
        run = subprocess.run(
            [sys.executable, "-c", _MEMORY_SCRIPT, str(n)], capture_output=True, text=True
        )
        assert run.returncode == 0, run.stderr
        extra[n] = int(run.stdout.split()[-1])
    # At 4096 the output is 64 MiB, and an untiled float32 computation would hold several
    # N x N intermediates (hundreds of MiB). Tiles of 256 x 256 are 0.25 MiB each; the bound
    # leaves room for allocator noise.
    assert extra[4096] < extra[1024] + 24 * 2**20, extra
