"""`batch`: compute large kernels tile by tile, spread over every device."""

import functools as ft
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from jaxtyping import Array, Shaped

from .._callable import AbstractCallable
from ..limits import Kernel, KernelFn
from ._progress import progress_bar
from ._store import compute_into_store, local_mesh
from ._tiles import (
    Leaf,
    check_tile,
    describe,
    host_array,
    known_mirrors,
    tile_pairs,
    tile_starts,
)


AXIS = "batch"
"""The mesh axis that `batch` spreads tiles over."""

Get = str | tuple[str, ...] | None
Inputs = Array | np.ndarray

PER_EXAMPLE_1 = ("mask1", "pattern1")
"""Keyword arguments that hold one entry per example of `x1`: tiled along with `x1`."""
PER_EXAMPLE_2 = ("mask2", "pattern2")
"""Keyword arguments that hold one entry per example of `x2`: tiled along with `x2`."""


class BatchedKernelFn(AbstractCallable):
    """A kernel function that computes its kernels tile by tile, as returned by [`eqntk.batch`][].

    Called exactly like the kernel function it wraps: `batched(x1, x2=None, get=None, **kwargs)`.

    **Fields:**

    - `kernel_fn`: the wrapped kernel function.
    - `batch_size`: the number of examples of `x1` and of `x2` per tile.
    - `mesh`: the device mesh to spread tiles over (its axis `"batch"`), or `None` for a
      one-dimensional mesh of `devices`.
    - `devices`: the devices of the default mesh, or `None` for all of them (`jax.devices()`).
    - `store_on_host`: whether the result is assembled in host memory as numpy arrays.
    - `progress`: whether to show a progress bar; `None` shows it when stderr is a terminal.
    - `store`: the path of the tile store on disk, or `None` to compute in memory.
    """

    kernel_fn: Any
    batch_size: int = eqx.field(static=True)
    mesh: Mesh | None = eqx.field(static=True)
    devices: tuple[Any, ...] | None = eqx.field(static=True)
    store_on_host: bool = eqx.field(static=True)
    progress: bool | None = eqx.field(static=True)
    store: str | None = eqx.field(static=True, default=None)

    def __call__(
        self,
        x1: Shaped[Inputs, "n1 ..."],
        x2: Shaped[Inputs, "n2 ..."] | None = None,
        get: Get = None,
        **kwargs: Any,
    ) -> Any:
        """Compute `kernel_fn(x1, x2, get=get, **kwargs)` tile by tile.

        **Arguments:**

        - `x1`: a batch of `N1` inputs, `(N1, ...)` (numpy or JAX).
        - `x2`: a batch of `N2` inputs, or `None` for `x2 = x1`: then only the tiles on and
          above the diagonal are computed and the others are their mirror images.
        - `get`: passed to `kernel_fn` (e.g. `"nngp"`, `("nngp", "ntk")` or `None`).
        - `**kwargs`: passed to `kernel_fn` (e.g. `diagonal_spatial=True`). The per-example
          side inputs `mask1` and `pattern1` (leading axis `N1`) are cut into tiles along with
          `x1`, and `mask2`, `pattern2` (leading axis `N2`) along with `x2`; every other
          keyword argument goes whole to every tile. With `x2=None`, `mask2` and `pattern2`
          must be `None` (the columns of a tile then take theirs from `mask1`, `pattern1`).

        **Returns:**

        What `kernel_fn(x1, x2, get=get, **kwargs)` returns, with JAX arrays on the first
        device of the mesh (of this process) or, with `store_on_host`, numpy arrays.

        **Example:**

        ```python
        import jax.random as jr
        import eqntk
        from eqntk import nn

        kernel_fn = eqntk.limit(nn.Sequential([nn.Dense(3, 8, key=jr.key(0)), nn.Relu()]))
        x1, x2 = jr.normal(jr.key(1), (7, 3)), jr.normal(jr.key(2), (5, 3))
        batched = eqntk.batch(kernel_fn, 4, store_on_host=True)
        nngp, ntk = batched(x1, x2, get=("nngp", "ntk"))  # numpy arrays, (7, 5)
        k = batched(x1)                                   # a Kernel of numpy arrays
        assert nngp.shape == (7, 5) and k.nngp.shape == (7, 7)
        ```
        """
        x1 = _host_batch("x1", x1)
        x2 = None if x2 is None else _host_batch("x2", x2)
        mesh = _resolve_mesh(self.mesh, self.devices)
        if self.store is not None:
            mesh = local_mesh(mesh, AXIS)
        n1 = x1.shape[0]
        n2 = n1 if x2 is None else x2.shape[0]
        b1, b2 = min(self.batch_size, n1), min(self.batch_size, n2)
        kwargs, rows_side, cols_side = _side_inputs(kwargs, n1, n2, x2 is None)

        # The kernel function and its keyword arguments travel as one PyTree, replicated on
        # every device: its arrays (the network's parameters) are inputs of the compiled tile
        # computation rather than constants baked into it.
        dynamic, static = eqx.partition((self.kernel_fn, kwargs), eqx.is_array)
        fn_kw = eqx.combine(jax.device_put(dynamic, NamedSharding(mesh, P())), static)

        tile1 = jax.ShapeDtypeStruct((b1, *x1.shape[1:]), x1.dtype)
        tile2 = None if x2 is None else jax.ShapeDtypeStruct((b2, *x2.shape[1:]), x2.dtype)
        side1 = _tile_shapes(rows_side, b1)
        side2 = None if x2 is None else _tile_shapes(cols_side, b2)
        template = eqx.filter_eval_shape(_traced_call, fn_kw, tile1, tile2, get, side1, side2)
        layouts = _layouts(fn_kw, tile1, template, get, side1)
        leaves = describe(template, known_mirrors(layouts, get))
        check_tile(leaves, template, b1, b2)

        # Mirror tiles only when the layout of every cross kernel is known; otherwise compute
        # them all (correct for any output, at twice the cost).
        mirrored = x2 is None and all(
            leaf.mirror is not None for leaf in leaves if leaf.role == "cross"
        )
        off_diagonal, diagonal = tile_pairs(
            tile_starts(n1, b1), tile_starts(n2, b2), x2 is None, mirrored
        )
        n_devices = mesh.shape[AXIS]
        # A diagonal tile is the kernel of a block of x1 with itself: computed as such
        # (`x2=None`), it is exactly what the kernel function gives there, and symmetric.
        steps = [(chunk, False) for chunk in _chunks(off_diagonal, n_devices)]
        steps += [(chunk, True) for chunk in _chunks(diagonal, n_devices)]

        sharding = NamedSharding(mesh, P(AXIS))
        paths = tuple(leaf.path for leaf in leaves)
        x2_or_x1 = x1 if x2 is None else x2

        def compute(chunk: list[tuple[int, int]], on_diagonal: bool) -> tuple[Array, ...]:
            # The last step may have fewer tiles than devices: the idle devices get a copy of
            # the first tile's inputs, marked invalid, and skip the computation.
            padded = chunk + [chunk[0]] * (n_devices - len(chunk))
            valid = _sharded(np.arange(n_devices) < len(chunk), sharding)
            rows = [r for r, _ in padded]
            cols = [c for _, c in padded]
            xa = _stacked_tiles(x1, rows, b1, sharding)
            xb = None if on_diagonal else _stacked_tiles(x2_or_x1, cols, b2, sharding)
            sa = {name: _stacked_tiles(v, rows, b1, sharding) for name, v in rows_side.items()}
            sb = None
            if not on_diagonal:
                sb = {name: _stacked_tiles(v, cols, b2, sharding) for name, v in cols_side.items()}
            return _compute_step(fn_kw, valid, xa, xb, get, paths, mesh, sa, sb)

        show = sys.stderr.isatty() if self.progress is None else self.progress
        if self.store is not None:
            return compute_into_store(
                self.store,
                fn_kw=(self.kernel_fn, kwargs),
                x1=x1,
                x2=x2,
                get=get,
                leaves=leaves,
                b1=b1,
                b2=b2,
                mirrored=mirrored,
                compute=compute,
                n_devices=n_devices,
                progress=show,
                treedef=jax.tree_util.tree_structure(template),
            )
        outs: list[Any]
        if self.store_on_host:
            outs = [host_array(leaf, n1, n2) for leaf in leaves]
            write = ft.partial(_write_on_host, leaves=leaves, b1=b1, b2=b2, mirrored=mirrored)
        else:
            device = _first_local_device(mesh)
            outs = [jnp.zeros(leaf.shape(n1, n2), leaf.dtype, device=device) for leaf in leaves]
            write = ft.partial(_write_on_device, leaves=leaves, mirrored=mirrored, device=device)
        advance = progress_bar(len(off_diagonal) + len(diagonal), show and jax.process_index() == 0)

        # Dispatch step k + 1 before writing step k, so that the host's copying overlaps the
        # devices' computing; at most two steps of tiles are alive at any time.
        pending = None
        for chunk, on_diagonal in steps:
            tiles = compute(chunk, on_diagonal)
            if pending is not None:
                outs = write(outs, *pending)
                advance(len(pending[1]))
            pending = (tiles, chunk, on_diagonal)
        assert pending is not None
        outs = write(outs, *pending)
        advance(len(pending[1]))
        return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(template), outs)


def batch(
    kernel_fn: Callable[..., Any],
    batch_size: int,
    *,
    mesh: Mesh | None = None,
    devices: Sequence[Any] | None = None,
    store_on_host: bool = False,
    progress: bool | None = None,
    store: str | os.PathLike | None = None,
) -> BatchedKernelFn:
    """A kernel function that computes large kernels tile by tile, spread over all devices.

    The $N_1 \\times N_2$ kernel is cut into tiles of `batch_size` $\\times$ `batch_size`
    examples (any $N_1$, $N_2$: where `batch_size` does not divide them, the last tile ends at the
    last example and overlaps its neighbour, so every tile has one shape and compiles once).
    Each step computes one tile per device of the mesh axis `"batch"`, with
    `jax.shard_map`; the results are written into the output as they finish, on the first
    device or in host memory. Peak memory is therefore the output plus a few tiles, whatever
    $N$. With `x2=None` only the tiles on and above the diagonal are computed: the others are
    their mirror images $\\mathcal{K}(x_2, x_1)[a, b, i, i', \\dots] =
    \\mathcal{K}(x_1, x_2)[b, a, i', i, \\dots]$ (batch axes and each interleaved spatial pair
    swapped), and the result is exactly symmetric.

    `kernel_fn` is any callable `kernel_fn(x1, x2, get=..., **kwargs)` that returns a PyTree
    of arrays: a [`eqntk.limit`][] kernel function, or e.g.
    `lambda x1, x2, get: eqntk.empirical_kernel(model, x1, x2, get)`. Arrays named `cov1`
    (as an attribute or a dict key) are per-example marginals of `x1`, `(N1, ...)`, those named
    `cov2` of `x2`, and every other array is a kernel `(N1, N2, ...)`. The halving for
    `x2=None` needs the layout of each kernel's trailing axes: it is known for
    [`eqntk.Kernel`][] outputs, for `get` selections of `eqntk.limit` kernel functions, and
    for plain `(N1, N2)` matrices; for other outputs every tile is computed.

    **Devices and hosts.** By default the mesh holds every device, `jax.devices()`: one CPU,
    the 8 simulated CPU devices of `XLA_FLAGS=--xla_force_host_platform_device_count=8`, or
    all GPUs. On several hosts, call `jax.distributed.initialize()` in every process first and
    call the batched kernel function in every process with the same inputs: `jax.devices()`
    then spans all hosts, each process computes the tiles of its own devices, and every process
    receives the whole result (tiles are gathered across processes with
    `jax.experimental.multihost_utils.process_allgather`). A mesh with more axes than
    `"batch"` repeats each tile's computation along the others.

    **Tile store.** With `store="kernel.zarr"`, each finished tile is written to a Zarr (v3) store
    on disk, one chunk per tile (install with `pip install 'eqntk[store]'`), and the call returns
    the output with read-only `zarr.Array`s in place of arrays: read slices lazily (`k.nngp[:100]`),
    or load a kernel that fits in memory with `np.asarray(k.nngp)`, e.g. for
    [`eqntk.dynamics.gp_inference`][]. The store records the job (a hash of the kernel function and
    its parameters, of the inputs, the tile size, `get`, the output shapes and dtypes); calling
    again after the process was killed resumes: finished tiles are checked against their checksum
    and kept, the others (including one that was being written) are computed. A store of another job
    is refused. With several processes (`jax.distributed`), tile $k$ is computed by process $k
    \bmod$ `jax.process_count()` on its own devices and written by it, so no tile is computed twice
    and no tile crosses processes; every process returns once all are done. The path must be on a
    file system that every process sees.

    **Arguments:**

    - `kernel_fn`: the kernel function to batch.
    - `batch_size`: the number of examples per tile along each batch axis (a positive
      integer; batches smaller than it are one tile).
    - `mesh`: a `jax.sharding.Mesh` with an axis named `"batch"`, e.g.
      `jax.make_mesh((4,), ("batch",))`; `None` for a one-dimensional mesh of `devices`.
    - `devices`: the devices of the default mesh; `None` for all of them.
    - `store_on_host`: assemble the result in host memory (numpy), tile by tile, so that a
      kernel larger than device memory can be computed.
    - `progress`: show a progress bar (tiles done, rate, time left) on stderr; `None` shows it
      only when stderr is a terminal. With several processes only process 0 shows it; with a
      `store` its count is that of the whole job (tiles found on disk and those of every
      process).
    - `store`: a path (e.g. `"kernel.zarr"`) to write the kernel to, tile by tile, as a Zarr
      store that a restart of the same call resumes (`store_on_host` is then irrelevant);
      `None` to compute in memory. See **Tile store** above.

    **Returns:**

    A [`eqntk.batching.BatchedKernelFn`][], called like `kernel_fn`.

    **Example:**

    ```python
    import jax.numpy as jnp
    import jax.random as jr
    import eqntk
    from eqntk import nn

    model = nn.Sequential([nn.Dense(5, 64, b_std=0.1, key=jr.key(0)), nn.Relu(),
                           nn.Dense(64, 1, key=jr.key(1))])
    kernel_fn = eqntk.limit(model)
    x = jr.normal(jr.key(2), (10, 5))
    nngp = eqntk.batch(kernel_fn, 4)(x, get="nngp")  # 3 x 3 tiles, 6 of them computed
    assert jnp.allclose(nngp, kernel_fn(x, get="nngp"), rtol=1e-5)
    ```
    """
    if not callable(kernel_fn):
        raise TypeError(f"`kernel_fn` must be callable, got {type(kernel_fn)}.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"`batch_size` must be a positive integer, got {batch_size!r}.")
    if mesh is not None and devices is not None:
        raise ValueError("Pass `mesh` or `devices`, not both: `devices` builds the default mesh.")
    if mesh is not None:
        if not isinstance(mesh, Mesh):
            raise TypeError(f"`mesh` must be a `jax.sharding.Mesh`, got {type(mesh)}.")
        if AXIS not in mesh.axis_names:
            raise ValueError(
                f"`mesh` must have an axis named {AXIS!r} to spread tiles over, got a mesh with "
                f"axes {tuple(mesh.axis_names)}; e.g. `jax.make_mesh((n,), ({AXIS!r},))`."
            )
    if devices is not None:
        devices = tuple(devices)
        if not devices or not all(isinstance(d, jax.Device) for d in devices):
            raise ValueError(
                f"`devices` must be a non-empty sequence of JAX devices, got {devices}."
            )
    return BatchedKernelFn(
        kernel_fn=kernel_fn,
        batch_size=batch_size,
        mesh=mesh,
        devices=devices,
        store_on_host=bool(store_on_host),
        progress=progress,
        store=_store_path(store),
    )


def _call(
    fn_kw: Any,
    a: Array,
    b: Array | None,
    get: Get,
    side_a: dict[str, Any] | None = None,
    side_b: dict[str, Any] | None = None,
) -> Any:
    """`kernel_fn(a, b, get=get, **kwargs)`, with the tiles' per-example side inputs: those of
    the rows (`side_a`, e.g. `mask1`) and, when `b` is given, of the columns (`side_b`)."""
    fn, kwargs = fn_kw
    kwargs = {**kwargs, **(side_a or {}), **(side_b or {})}
    # `get=None` is left out, so that a kernel function with another default keeps it.
    return fn(a, b, **kwargs) if get is None else fn(a, b, get=get, **kwargs)


def _side_inputs(
    kwargs: dict[str, Any], n1: int, n2: int, x1_is_x2: bool
) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Split the keyword arguments into those every tile gets whole and the per-example side
    inputs of the rows and of the columns (host arrays, with their names in the tiles' call).

    With `x2=None` an off-diagonal tile is the kernel of two blocks of `x1`: its columns take
    `mask1` and `pattern1` under the names `mask2` and `pattern2`.
    """
    whole = {}
    rows: dict[str, np.ndarray] = {}
    cols: dict[str, np.ndarray] = {}
    for name, value in kwargs.items():
        if value is None or name not in PER_EXAMPLE_1 + PER_EXAMPLE_2:
            whole[name] = value
            continue
        follows_x1 = name in PER_EXAMPLE_1
        if not follows_x1 and x1_is_x2:
            raise ValueError(
                f"`{name}` must be None when `x2` is None (the examples of `x2` are those of "
                f"`x1`: give `{name[:-1]}1`)."
            )
        n, x_name = (n1, "x1") if follows_x1 else (n2, "x2")
        array = np.asarray(value)
        if array.ndim < 1 or array.shape[0] != n:
            raise ValueError(
                f"`{name}` holds one entry per example of `{x_name}` and is tiled along with it: "
                f"its leading axis must be {n}, got shape {array.shape}."
            )
        if follows_x1:
            rows[name] = array
            if x1_is_x2:
                cols[name[:-1] + "2"] = array
        else:
            cols[name] = array
    return whole, rows, cols


def _tile_shapes(side: dict[str, np.ndarray], size: int) -> dict[str, jax.ShapeDtypeStruct]:
    return {name: jax.ShapeDtypeStruct((size, *v.shape[1:]), v.dtype) for name, v in side.items()}


# Shapes come from `jax.eval_shape` through a jitted call: its trace is cached, so tracing the
# kernel function (a large part of a small kernel's cost) happens once, not on every call.
_traced_call = eqx.filter_jit(_call)


def _layouts(fn_kw: Any, tile1: Any, template: Any, get: Get, side1: dict[str, Any]) -> Any:
    """An output shape carrying [`eqntk.Kernel`][] metadata, to read the layouts from."""
    if get is None:
        return template
    if isinstance(fn_kw[0], KernelFn):
        # A `limit` kernel function returns `Kernel`s for `get=None`, whose flags give the
        # layout of the arrays it selects; only shapes are computed.
        return eqx.filter_eval_shape(_traced_call, fn_kw, tile1, None, None, side1)
    return None


@eqx.filter_jit
def _compute_step(
    fn_kw: Any,
    valid: Array,
    xa: Array,
    xb: Array | None,
    get: Get,
    paths: tuple[str, ...],
    mesh: Mesh,
    sa: dict[str, Array],
    sb: dict[str, Array] | None,
) -> tuple[Array, ...]:
    """One tile per device: `kernel_fn(xa[d], xb[d])` (`xb[d] = None` when `xb` is `None`),
    with the tiles `sa`, `sb` of the per-example side inputs of the rows and columns.

    Devices whose `valid[d]` is false return zeros without computing anything.
    """
    dynamic, static = eqx.partition(fn_kw, eqx.is_array)

    def local(
        dynamic: Any, valid: Array, a: Array, b: Array | None, sa: Any, sb: Any
    ) -> tuple[Array, ...]:
        def tile() -> tuple[Array, ...]:
            first = lambda side: None if side is None else {n: v[0] for n, v in side.items()}
            fn_kw = eqx.combine(dynamic, static)
            out = _call(fn_kw, a[0], None if b is None else b[0], get, first(sa), first(sb))
            by_path = {
                jax.tree_util.keystr(path): leaf
                for path, leaf in jax.tree_util.tree_flatten_with_path(out)[0]
            }
            return tuple(by_path[path][None] for path in paths)

        def skip() -> tuple[Array, ...]:
            return tuple(jnp.zeros(t.shape, t.dtype) for t in jax.eval_shape(tile))

        return jax.lax.cond(valid[0], tile, skip)

    # check_vma=False: the kernel function is arbitrary code; its result is per device anyway.
    tiles = jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(P(), P(AXIS), P(AXIS), P(AXIS), P(AXIS), P(AXIS)),
        out_specs=P(AXIS),
        check_vma=False,
    )
    return tiles(dynamic, valid, xa, xb, sa, sb)


def _stacked_tiles(x: np.ndarray, starts: list[int], size: int, sharding: NamedSharding) -> Array:
    """The examples `x[s : s + size]` for each `s` in `starts`, stacked and sharded.

    Each device receives only its own tile: the callback is asked for the slice of the stack
    that lives on one device, which also works when some devices belong to other processes.
    """

    def one_shard(index: Any) -> np.ndarray:
        return np.stack([x[s : s + size] for s in starts[index[0]]])

    shape = (len(starts), size, *x.shape[1:])
    return jax.make_array_from_callback(shape, sharding, one_shard)


def _sharded(flags: np.ndarray, sharding: NamedSharding) -> Array:
    """One flag per device, sharded like the stacked tiles."""
    return jax.make_array_from_callback(flags.shape, sharding, lambda index: flags[index])


def _gather(tiles: tuple[Array, ...]) -> Any:
    """The tiles of one step, whole, in this process (across hosts when needed)."""
    if all(t.is_fully_addressable for t in tiles):
        return tiles
    return multihost_utils.process_allgather(tiles, tiled=True)


def _write_on_host(
    outs: list[np.ndarray],
    tiles: tuple[Array, ...],
    pairs: list[tuple[int, int]],
    on_diagonal: bool,
    *,
    leaves: list[Leaf],
    b1: int,
    b2: int,
    mirrored: bool,
) -> list[np.ndarray]:
    """Write one step's tiles (and their mirror images) into preallocated numpy arrays."""
    arrays = [np.asarray(t) for t in _gather(tiles)]
    for d, (r, c) in enumerate(pairs):
        for leaf, out, tile in zip(leaves, outs, arrays):
            t = tile[d]
            if leaf.role == "row":
                out[r : r + b1] = t
            elif leaf.role == "col":
                out[c : c + b2] = t
            else:
                out[r : r + b1, c : c + b2] = t
                if mirrored and not on_diagonal:
                    out[c : c + b2, r : r + b1] = t.transpose(leaf.mirror)
    return outs


def _write_on_device(
    outs: list[Array],
    tiles: tuple[Array, ...],
    pairs: list[tuple[int, int]],
    on_diagonal: bool,
    *,
    leaves: list[Leaf],
    mirrored: bool,
    device: Any,
) -> list[Array]:
    """Write one step's tiles (and their mirror images) into the output arrays on `device`."""
    tiles = jax.device_put(_gather(tiles), device)
    # Indices padded to one tile per device, so that the last step reuses the compilation.
    padded = pairs + [pairs[0]] * (tiles[0].shape[0] - len(pairs))
    rows, cols = jax.device_put(np.array(padded, np.int32).T, device)
    count = jax.device_put(np.int32(len(pairs)), device)
    roles = tuple(leaf.role for leaf in leaves)
    mirrors = tuple(leaf.mirror if mirrored and not on_diagonal else None for leaf in leaves)
    return list(_update(tuple(outs), tiles, rows, cols, count, roles, mirrors))


# The outputs are donated: each step updates them in place instead of copying the whole kernel.
@ft.partial(jax.jit, static_argnums=(5, 6), donate_argnums=0)
def _update(outs, tiles, rows, cols, count, roles, mirrors):
    def one_tile(d, outs):
        r, c = rows[d], cols[d]
        new = []
        for out, tile, role, mirror in zip(outs, tiles, roles, mirrors):
            t = tile[d]
            if role == "row":
                out = jax.lax.dynamic_update_slice_in_dim(out, t, r, 0)
            elif role == "col":
                out = jax.lax.dynamic_update_slice_in_dim(out, t, c, 0)
            else:
                out = _put(out, t, r, c)
                if mirror is not None:
                    out = _put(out, t.transpose(mirror), c, r)
            new.append(out)
        return tuple(new)

    return jax.lax.fori_loop(0, count, one_tile, outs)


def _chunks(pairs: list[tuple[int, int]], size: int) -> list[list[tuple[int, int]]]:
    return [pairs[i : i + size] for i in range(0, len(pairs), size)]


def _put(out: Array, tile: Array, r: Array, c: Array) -> Array:
    zeros = (jnp.zeros((), r.dtype),) * (out.ndim - 2)
    return jax.lax.dynamic_update_slice(out, tile, (r, c, *zeros))


def _store_path(store: Any) -> str | None:
    if store is None:
        return None
    if not isinstance(store, str | os.PathLike) or not os.fspath(store):
        raise TypeError(f"`store` must be a path (str or os.PathLike) or None, got {store!r}.")
    return os.path.abspath(os.fspath(store))


def _host_batch(name: str, x: Any) -> np.ndarray:
    """`x` as a host array of examples along its first axis, checked."""
    if isinstance(x, Kernel):
        raise TypeError(
            f"`{name}` must be an array of inputs; `batch` tiles input batches, not a `Kernel`."
        )
    if not isinstance(x, jax.Array | np.ndarray):
        raise TypeError(f"`{name}` must be an array of shape (N, ...), got {type(x)}.")
    if x.ndim < 1 or x.shape[0] == 0:
        raise ValueError(
            f"`{name}` must hold at least one example along axis 0, got shape {x.shape}."
        )
    return np.asarray(x)


def _resolve_mesh(mesh: Mesh | None, devices: tuple[Any, ...] | None) -> Mesh:
    if mesh is not None:
        # The same devices and axes with automatic axis types: `jax.make_mesh` makes explicit
        # ones, whose sharding would follow the tiles into the single-device output.
        return Mesh(mesh.devices, mesh.axis_names)
    # Resolved at call time, so that `jax.distributed.initialize` may come after `batch`.
    return Mesh(np.asarray(jax.devices() if devices is None else devices), (AXIS,))


def _first_local_device(mesh: Mesh) -> Any:
    return next(d for d in mesh.devices.flat if d.process_index == jax.process_index())
