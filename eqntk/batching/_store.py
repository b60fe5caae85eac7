"""A tile store on disk for [`eqntk.batch`][]: kernels that survive being killed.

The store is a Zarr (v3) group, readable by any Zarr tool:

```
kernel.zarr/             attributes["eqntk"]: what identifies the job (see `_job`)
kernel.zarr/nngp         one array per output array of the kernel function, chunked so that
kernel.zarr/ntk          each chunk is one tile: (N1, N2, ...) in chunks of (b1, b2, ...)
kernel.zarr/tiles_done   (T1, T2) uint64, one chunk per tile: 0 until the tile's chunks are
                         all written, then 2**32 + the CRC-32 of their bytes
```

A tile's record is written after its chunks (each chunk file is replaced atomically), so a
tile that was being written when the process died has no record and is computed again; on a
restart, every finished tile's chunks are read back and checked against their record, so a
chunk corrupted on disk is detected and recomputed as well.

Chunks do not overlap: where `batch_size` does not divide `N`, the last chunk along an axis is
shorter, and the last tile (which `batch` computes at full size, ending at the last example) is
written without the rows or columns that belong to its neighbour.
"""

import hashlib
import json
import os
import pathlib
import queue
import re
import shutil
import threading
import uuid
import warnings
import zlib
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from ._progress import progress_bar
from ._tiles import Leaf, tile_pairs, tile_starts


FORMAT = 1
_RECORDS = "tiles_done"
_DONE = np.uint64(2**32)
_IN_FLIGHT = 2  # computed steps waiting to be written, at most

Compute = Callable[[list[tuple[int, int]], bool], tuple[Any, ...]]


def local_mesh(mesh: Mesh, axis: str) -> Mesh:
    """The devices of `mesh` that belong to this process, on one axis.

    With a store, each process computes its own tiles and writes them to disk: no tile crosses
    processes, so no process waits on another until the end.
    """
    mine = [d for d in mesh.devices.flat if d.process_index == jax.process_index()]
    if not mine:
        raise ValueError(
            f"`mesh` has no device of this process (process {jax.process_index()}); with "
            "`store`, every process computes tiles on its own devices."
        )
    return Mesh(np.asarray(mine), (axis,))


def compute_into_store(
    path: str | os.PathLike,
    *,
    fn_kw: Any,
    x1: np.ndarray,
    x2: np.ndarray | None,
    get: Any,
    leaves: list[Leaf],
    b1: int,
    b2: int,
    mirrored: bool,
    compute: Compute,
    n_devices: int,
    progress: bool,
    treedef: Any,
) -> Any:
    """Compute the tiles that the store at `path` lacks, and return the stored result.

    Tiles are shared among processes by their index (tile `k` to process `k % count`); each
    process skips the tiles it finds finished on disk, computes the others `n_devices` at a
    time with `compute`, and writes them. All processes wait for each other at the end, and
    each returns the output PyTree with read-only `zarr.Array`s as leaves.
    """
    zarr = _zarr()
    path = pathlib.Path(path)
    n1 = x1.shape[0]
    n2 = n1 if x2 is None else x2.shape[0]
    starts1, starts2 = tile_starts(n1, b1), tile_starts(n2, b2)
    job = _job(fn_kw, x1, x2, get, leaves, b1, b2, mirrored)
    names = _array_names(leaves)

    me, count = jax.process_index(), jax.process_count()
    failure = None
    if me == 0:
        try:
            _create(zarr, path, job, leaves, names, n1, n2, b1, b2, len(starts1), len(starts2))
        except Exception as e:  # raised after the others have been let go, below
            failure = e
    if count > 1:
        multihost_utils.sync_global_devices(f"eqntk store open {path}")
    if failure is not None:
        raise failure
    try:
        group = zarr.open_group(str(path), mode="r+")
    except Exception as e:
        raise ValueError(
            f"`store` {str(path)!r} exists but is not an eqntk tile store (no Zarr group: {e}); "
            "pass a new path."
        ) from e
    _check_same_job(group, job, path)
    arrays = [group[name] for name in names]
    records = group[_RECORDS]
    files = [_ChunkFiles(array, path) for array in arrays]
    record_files = _ChunkFiles(records, path)

    index1 = {s: i for i, s in enumerate(starts1)}
    index2 = {s: j for j, s in enumerate(starts2)}
    off_diagonal, diagonal = tile_pairs(starts1, starts2, x2 is None, mirrored)
    every = [(index1[r], index2[c], False) for r, c in off_diagonal]
    every += [(index1[r], index2[c], True) for r, c in diagonal]
    mine = every[me::count]

    geometry = _Geometry(leaves, starts1, starts2, b1, b2, n1, n2, x2 is None, mirrored)
    done = records[...]
    todo, corrupted = [], 0
    for i, j, on_diagonal in mine:
        if done[i, j] != 0:
            try:
                if _checksum(geometry.read(arrays, i, j)) + _DONE == done[i, j]:
                    continue
            except Exception:  # a chunk that does not decode (truncated) is corrupted too
                pass
            corrupted += 1
            records[i, j] = 0  # not finished, also for the progress of the whole job
        todo.append((i, j, on_diagonal))
    if corrupted:
        warnings.warn(
            f"{corrupted} finished tile(s) in `store` {str(path)!r} do not match their "
            "checksum (corrupted on disk); they are computed again.",
            stacklevel=3,
        )

    # Process 0 shows the whole job: its count reads the store's records, which every process
    # writes; the others show nothing.
    advance = progress_bar(
        len(every),
        progress and me == 0,
        initial=int(np.count_nonzero(done)) if count > 1 else len(mine) - len(todo),
        count_done=(lambda: int(np.count_nonzero(records[...]))) if count > 1 else None,
    )
    steps = [
        (chunk, flag)
        for flag in (False, True)
        for chunk in _chunks([t for t in todo if t[2] == flag], n_devices)
    ]

    def write(tiles: tuple[Any, ...], chunk: list[tuple[int, int, bool]]) -> None:
        host = [np.asarray(t) for t in tiles]
        for d, (i, j, _) in enumerate(chunk):
            parts = geometry.write(files, i, j, [t[d] for t in host])
            # The record goes last: a tile without one is computed again on restart.
            record = np.full((1, 1), _checksum(parts) + _DONE, np.uint64)
            record_files.write((slice(i, i + 1), slice(j, j + 1)), record)
        advance(len(chunk))

    # Writing (copy to host, encode, checksum, file writes) runs on a thread of its own while
    # the devices compute the next steps; at most `_IN_FLIGHT` computed steps wait for it.
    with _BackgroundWriter(write) as writer:
        for chunk, on_diagonal in steps:
            tiles = compute([(starts1[i], starts2[j]) for i, j, _ in chunk], on_diagonal)
            writer.put(tiles, chunk)

    if count > 1:
        multihost_utils.sync_global_devices(f"eqntk store done {path}")
        advance(0)  # the last line, once the other processes' tiles are written too
    missing = int((records[...] == 0).sum() - _unused_records(geometry, len(starts1)))
    if missing:
        raise RuntimeError(
            f"`store` {str(path)!r} lacks {missing} tile(s) after every process finished; "
            "was it written by another job at the same time?"
        )
    readable = zarr.open_group(str(path), mode="r")
    return jax.tree_util.tree_unflatten(treedef, [readable[name] for name in names])


class _BackgroundWriter:
    """Runs `write(*item)` for each `put(*item)` on one thread, in order, so that the caller
    keeps dispatching computations while earlier results are written.

    `put` blocks while `_IN_FLIGHT` items wait (so memory holds a few tiles, not the result)
    and raises the writer's error as soon as one happened; leaving the `with` block waits for
    every write and raises it too. If the block itself raises, pending writes are dropped (their
    tiles have no record, so a restart computes them again).
    """

    def __init__(self, write: Callable[..., None]):
        self._write = write
        self._queue: queue.Queue = queue.Queue(maxsize=_IN_FLIGHT)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="eqntk-store-writer", daemon=True)

    def __enter__(self) -> "_BackgroundWriter":
        self._thread.start()
        return self

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._error is None:
                try:
                    self._write(*item)
                except BaseException as e:  # handed to the caller's thread
                    self._error = e

    def put(self, *item: Any) -> None:
        self._raise()
        self._queue.put(item)

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def __exit__(self, kind, value, traceback) -> None:
        if kind is not None:
            self._error = self._error or value  # the thread skips what is left
        self._queue.put(None)
        self._thread.join()
        if kind is None:
            self._raise()


class _Geometry:
    """Which chunks of which arrays a tile writes, and where they are in the computed tile.

    Tile `(i, j)` is computed on the examples `starts1[i] : starts1[i] + b1` of `x1` and
    `starts2[j] : starts2[j] + b2` of `x2`; its chunk holds the examples from `i * b1`, so the
    first `i * b1 - starts1[i]` rows (nonzero only for a last, overlapping tile) are dropped.
    A per-example marginal is written by one tile only: the diagonal one when `x2` is `None`,
    else the first of its row (`cov1`) or column (`cov2`).
    """

    def __init__(self, leaves, starts1, starts2, b1, b2, n1, n2, x1_is_x2, mirrored):
        self.leaves, self.starts1, self.starts2 = leaves, starts1, starts2
        self.b1, self.b2, self.n1, self.n2 = b1, b2, n1, n2
        self.x1_is_x2, self.mirrored = x1_is_x2, mirrored

    def _parts(self, i: int, j: int) -> list[tuple[int, tuple[slice, ...], Any, Any]]:
        """`(leaf index, chunk selection, how to cut it from the tile, mirror)` per chunk."""
        r, c = i * self.b1, j * self.b2
        rows = slice(r, min(r + self.b1, self.n1))
        cols = slice(c, min(c + self.b2, self.n2))
        cut_r, cut_c = slice(r - self.starts1[i], None), slice(c - self.starts2[j], None)
        parts = []
        for k, leaf in enumerate(self.leaves):
            if leaf.role == "cross":
                parts.append((k, (rows, cols), (cut_r, cut_c), None))
                if self.mirrored and i != j:
                    parts.append((k, (cols, rows), (cut_c, cut_r), leaf.mirror))
            elif leaf.role == "row" and j == (i if self.x1_is_x2 else 0):
                parts.append((k, (rows,), (cut_r,), None))
            elif leaf.role == "col" and i == (j if self.x1_is_x2 else 0):
                parts.append((k, (cols,), (cut_c,), None))
        return parts

    def write(
        self, files: list["_ChunkFiles"], i: int, j: int, tile: list[np.ndarray]
    ) -> list[Any]:
        """Write tile `(i, j)`'s chunks; return them, in the order of the checksum."""
        written = []
        for k, selection, cut, mirror in self._parts(i, j):
            t = tile[k] if mirror is None else tile[k].transpose(mirror)
            part = np.ascontiguousarray(t[cut])
            files[k].write(selection, part)
            written.append(part)
        return written

    def read(self, arrays: list[Any], i: int, j: int) -> list[Any]:
        """Tile `(i, j)`'s chunks as stored, in the order of the checksum."""
        return [np.ascontiguousarray(arrays[k][s]) for k, s, _, _ in self._parts(i, j)]


class _ChunkFiles:
    """Writes whole chunks of one stored array as files, the way Zarr lays them out.

    Going through `zarr.Array.__setitem__` costs about 2 ms per 1 MiB chunk here (its
    asynchronous machinery), six times the file write itself; the store's arrays are plain
    (little-endian bytes, no compression, regular chunks, `/`-separated keys, checked when the
    store is opened), so a chunk is its bytes in C order, padded with the fill value where it
    extends past the array's end. Each file is written aside and renamed into place, as Zarr
    does, so a killed process never leaves half a chunk under a chunk's name.
    """

    def __init__(self, array: Any, path: pathlib.Path):
        meta = array.metadata
        plain = (
            meta.zarr_format == 3
            and [type(c).__name__ for c in meta.codecs] == ["BytesCodec"]
            and getattr(meta.codecs[0].endian, "value", "little") == "little"
            and type(meta.chunk_grid).__name__ == "RegularChunkGrid"
            and type(meta.chunk_key_encoding).__name__ == "DefaultChunkKeyEncoding"
            and meta.chunk_key_encoding.separator == "/"
        )
        if not plain:
            raise ValueError(
                f"`store` {str(path)!r}: array {array.name!r} is not laid out as eqntk writes "
                f"tile stores (codecs {meta.codecs}); pass a new path."
            )
        self._meta, self._dir = meta, path / array.name.strip("/")
        self._chunk_shape = meta.chunk_grid.chunk_shape
        self._dtype = np.dtype(array.dtype).newbyteorder("<")
        self._fill = array.fill_value

    def write(self, selection: tuple[slice, ...], part: np.ndarray) -> None:
        """Write `part`, the array's data at `selection` (one whole chunk, cut at the end)."""
        index = tuple(s.start // c for s, c in zip(selection, self._chunk_shape))
        index += (0,) * (len(self._chunk_shape) - len(index))  # a tile spans trailing axes
        if part.shape != self._chunk_shape:
            full = np.full(self._chunk_shape, self._fill, self._dtype)
            full[tuple(slice(0, n) for n in part.shape)] = part
            part = full
        data = np.ascontiguousarray(part, self._dtype)
        file = self._dir / self._meta.encode_chunk_key(index)
        file.parent.mkdir(parents=True, exist_ok=True)
        aside = file.with_name(f"{file.name}.{uuid.uuid4().hex}.partial")
        with open(aside, "wb") as f:
            f.write(data.data)
        os.replace(aside, file)


def _unused_records(geometry: _Geometry, t1: int) -> int:
    """Records that no tile writes: below the diagonal when mirror images are written."""
    return t1 * (t1 - 1) // 2 if geometry.x1_is_x2 and geometry.mirrored else 0


def _checksum(parts: list[np.ndarray]) -> np.uint64:
    crc = 0
    for part in parts:
        crc = zlib.crc32(part.data, crc)
    return np.uint64(crc)


def _chunks(items: list[Any], size: int) -> list[list[Any]]:
    return [items[k : k + size] for k in range(0, len(items), size)]


def _array_names(leaves: list[Leaf]) -> list[str]:
    """A Zarr array name per leaf: its path in the output (`.nngp` -> `nngp`), or `kernel`."""
    names = []
    for leaf in leaves:
        name = re.sub(r"[^0-9A-Za-z_.-]+", ".", leaf.path).strip(".") or "kernel"
        while name in names or name == _RECORDS:
            name += "_"
        names.append(name)
    return names


def _job(fn_kw, x1, x2, get, leaves, b1, b2, mirrored) -> dict[str, Any]:
    """What identifies a kernel job: a restart must agree on all of it to resume."""
    return {
        "format": FORMAT,
        "kernel_fn": _fingerprint(fn_kw),
        "x1": _digest(x1),
        "x2": None if x2 is None else _digest(x2),
        "tile": [b1, b2],
        "get": repr(get),
        "outputs": [
            [leaf.path, leaf.role, list(leaf.layout), str(np.dtype(leaf.dtype)), leaf.mirror]
            for leaf in leaves
        ],
        "mirrored": mirrored,
    }


def _fingerprint(tree: Any) -> str:
    """A hash of a PyTree's structure, static fields and leaves (arrays by their bytes).

    Memory addresses in reprs (`<function f at 0x...>`) are left out: they change between runs
    of the same program.
    """
    h = hashlib.sha256()
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    h.update(_no_address(str(treedef)).encode())
    for leaf in leaves:
        if eqx.is_array(leaf):
            h.update(_digest(np.asarray(leaf)).encode())
        else:
            h.update(_no_address(repr(leaf)).encode())
    return h.hexdigest()


def _no_address(text: str) -> str:
    return re.sub(r" at 0x[0-9a-fA-F]+", "", text)


def _digest(x: np.ndarray) -> str:
    h = hashlib.sha256(f"{x.shape} {x.dtype}".encode())
    h.update(np.ascontiguousarray(x).data)
    return h.hexdigest()


def _create(zarr, path, job, leaves, names, n1, n2, b1, b2, t1, t2) -> None:
    """Create the store unless it exists: built aside, then renamed into place at once.

    In a store that exists, chunk files left half-written by a killed process (Zarr writes
    each one aside, as `*.partial`, and renames it into place) are removed: no process of this
    job writes yet.
    """
    if path.exists():
        for leftover in path.glob("*/c/**/*.partial"):
            leftover.unlink(missing_ok=True)
        return
    partial = path.with_name(f"{path.name}.{uuid.uuid4().hex}.partial")
    group = zarr.create_group(store=str(partial))
    for leaf, name in zip(leaves, names):
        shape = leaf.shape(n1, n2)
        tile = {"cross": (b1, b2), "row": (b1,), "col": (b2,)}[leaf.role] + leaf.layout
        dtype = np.dtype(leaf.dtype)
        fill = np.nan if np.issubdtype(dtype, np.inexact) else 0
        group.create_array(
            name, shape=shape, chunks=tile, dtype=dtype, fill_value=fill, compressors=None
        )
    group.create_array(
        _RECORDS, shape=(t1, t2), chunks=(1, 1), dtype="uint64", fill_value=0, compressors=None
    )
    group.attrs["eqntk"] = job
    try:
        partial.rename(path)
    except OSError:
        # Another job created it first; the check of its job below decides.
        shutil.rmtree(partial, ignore_errors=True)


def _check_same_job(group: Any, job: dict[str, Any], path: pathlib.Path) -> None:
    stored = dict(group.attrs).get("eqntk")
    if not isinstance(stored, dict):
        raise ValueError(
            f"`store` {str(path)!r} exists but is not an eqntk tile store (no `eqntk` "
            "attribute); pass a new path."
        )
    # Through JSON on both sides, so that tuples and lists compare equal.
    job = json.loads(json.dumps(job))
    differ = [key for key in job if stored.get(key) != job[key]]
    if differ:
        what = {
            "format": "the store format",
            "kernel_fn": "the network (kernel function, its parameters or keyword arguments)",
            "x1": "the inputs `x1`",
            "x2": "the inputs `x2`",
            "tile": "the tile size (`batch_size`)",
            "get": "`get`",
            "outputs": "the output arrays (shapes or dtypes)",
            "mirrored": "the tiling",
        }
        raise ValueError(
            f"`store` {str(path)!r} holds another job: it differs in "
            f"{', '.join(what[k] for k in differ)}. Resume it with the same call, or pass a "
            "new path (or delete the store) to start over."
        )


def _zarr() -> Any:
    try:
        import zarr
    except ImportError as e:
        raise ImportError(
            "`store` needs Zarr 3: `pip install 'eqntk[store]'` (or `pip install zarr`)."
        ) from e
    return zarr
