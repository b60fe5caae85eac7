"""`eqntk.batch(..., store=path)`: kernels written tile by tile to a Zarr store on disk, that
resume after a kill, detect corrupted tiles, refuse another job's store, and are shared by
several processes (`jax.distributed`) without computing a tile twice.

Jobs that are killed or span processes run in fresh interpreters (`python -c`), which import
`_job` from this module so that every run computes the same kernel.
"""

import io
import os
import pathlib
import random
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import eqntk
from eqntk import nn
from eqntk.batching import _store
from eqntk.batching._progress import progress_bar


zarr = pytest.importorskip("zarr")

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _note_tile() -> None:
    """Appends a line to `$EQNTK_TILE_LOG` per tile computed, after `$EQNTK_TILE_SLEEP` s."""
    log = os.environ.get("EQNTK_TILE_LOG")
    if log:
        time.sleep(float(os.environ.get("EQNTK_TILE_SLEEP", "0")))
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")


class _Logged(eqx.Module):
    """A kernel function that notes every tile it computes (a host callback per call)."""

    kernel_fn: Any

    def __call__(self, x1, x2=None, get=None):
        jax.debug.callback(_note_tile)
        return self.kernel_fn(x1, x2, get=get)


def _job(n: int = 22, key: int = 0) -> tuple[Any, Any]:
    """The kernel function and inputs of the jobs here: 22 examples in tiles of 4 (ragged)."""
    k1, k2, k3 = jr.split(jr.key(key), 3)
    model = nn.Sequential(
        [
            nn.Dense(3, 16, W_std=1.4, b_std=0.1, key=k1),
            nn.Relu(),
            nn.Dense(16, 1, W_std=1.2, b_std=0.2, key=k2),
        ]
    )
    return _Logged(eqntk.limit(model)), jr.normal(k3, (n, 3))


def _tiles_computed(log: pathlib.Path) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


def _arrays(path: pathlib.Path) -> dict[str, np.ndarray]:
    group = zarr.open_group(str(path), mode="r")
    return {name: np.asarray(group[name]) for name in group.array_keys()}


def _assert_identical(a: pathlib.Path, b: pathlib.Path) -> None:
    """Two stores hold the same arrays, bit for bit (NaN-free: every tile was written)."""
    arrays_a, arrays_b = _arrays(a), _arrays(b)
    assert arrays_a.keys() == arrays_b.keys()
    for name in arrays_a:
        assert arrays_a[name].dtype == arrays_b[name].dtype
        assert not np.isnan(arrays_a[name]).any(), name
        assert np.array_equal(arrays_a[name], arrays_b[name]), name


@pytest.mark.parametrize("with_x2", [False, True])
@pytest.mark.parametrize("get", [None, "nngp", ("ntk", "cov1", "cov2")])
def test_store_equals_kernel(tmp_path, get, with_x2):
    kernel_fn, x = _job()
    x2 = jr.normal(jr.key(9), (9, 3)) if with_x2 else None
    out = eqntk.batch(kernel_fn, 4, store=tmp_path / "k.zarr")(x, x2, get)
    want = kernel_fn(x, x2, get)
    assert jax.tree_util.tree_structure(out) == jax.tree_util.tree_structure(want)
    for stored, array in zip(jax.tree_util.tree_leaves(out), jax.tree_util.tree_leaves(want)):
        assert isinstance(stored, zarr.Array) and stored.read_only
        assert stored.shape == array.shape and stored.dtype == array.dtype
        # One chunk per tile (the last one along each axis is short: 22 = 5 * 4 + 2).
        assert stored.chunks[:2] == (4, 4)[: len(stored.chunks[:2])]
        # Tiles against the whole kernel at once: equal up to float64 rounding of the
        # different reductions XLA picks for other shapes.
        np.testing.assert_allclose(np.asarray(stored), array, rtol=1e-12, atol=1e-14)
        if not with_x2 and stored.ndim == 2 and stored.shape[0] == stored.shape[1]:
            # Mirror images are exact transposes, and diagonal tiles are symmetric.
            assert np.array_equal(np.asarray(stored), np.asarray(stored).T)


def test_lazy_reads_and_gp_inference(tmp_path):
    kernel_fn, x = _job()
    k = eqntk.batch(kernel_fn, 4, store=tmp_path / "k.zarr")(x, None, ("nngp", "ntk"))
    whole = kernel_fn(x, None, ("nngp", "ntk"))
    # A slice reads only the chunks it touches.
    np.testing.assert_allclose(k.nngp[3:9, 17:], whole.nngp[3:9, 17:], rtol=1e-12)
    # A stored kernel that fits in memory goes to `dynamics` through numpy.
    y = jnp.sin(x[:, :1])
    stored = eqntk.dynamics.gp_inference(np.asarray(k.nngp), y, diag_reg=1e-3, get="nngp")
    direct = eqntk.dynamics.gp_inference(whole.nngp, y, diag_reg=1e-3, get="nngp")
    test = jr.normal(jr.key(3), (4, 3))
    k_test = kernel_fn(test, x, "nngp")
    # The two solves see kernels equal to 1e-12 relative; regularised at 1e-3 the conditioning
    # is below ~1e4, so the means agree far inside 1e-7.
    mean, want = stored(k_test, get="nngp").mean, direct(k_test, get="nngp").mean
    np.testing.assert_allclose(mean, want, rtol=1e-7, atol=1e-12)


def test_resume_computes_only_missing_tiles(tmp_path, monkeypatch):
    log = tmp_path / "tiles.log"
    monkeypatch.setenv("EQNTK_TILE_LOG", str(log))
    kernel_fn, x = _job()
    path = tmp_path / "k.zarr"
    batched = eqntk.batch(kernel_fn, 4, store=path)
    first = np.asarray(batched(x, None, "nngp"))
    # 6 x 6 tiles: the 21 on and above the diagonal are computed.
    assert _tiles_computed(log) == 21
    again = np.asarray(batched(x, None, "nngp"))
    assert _tiles_computed(log) == 21 and np.array_equal(first, again)

    # Two tiles lost their record (killed between chunk and record), one lost its chunk too.
    records = zarr.open_array(str(path / "tiles_done"), mode="r+")
    records[0, 3] = 0
    records[5, 5] = 0
    (path / "kernel" / "c" / "5" / "5").unlink()
    # A chunk file that a killed process was writing aside (Zarr renames it when complete).
    leftover = path / "kernel" / "c" / "0" / "3.0123abcd.partial"
    leftover.write_bytes(b"half a chunk")
    resumed = np.asarray(eqntk.batch(kernel_fn, 4, store=path)(x, None, "nngp"))
    assert _tiles_computed(log) == 23
    assert np.array_equal(first, resumed)
    assert not leftover.exists()


def test_a_failed_write_stops_the_job_and_resume_finishes_it(tmp_path, monkeypatch):
    # Tiles are written on a thread of their own: its error (a full disk, say) must reach the
    # caller, stop the job, and leave the tiles written before it for the resume.
    log = tmp_path / "tiles.log"
    monkeypatch.setenv("EQNTK_TILE_LOG", str(log))
    kernel_fn, x = _job()
    want = np.asarray(eqntk.batch(kernel_fn, 4, store=tmp_path / "whole.zarr")(x, None, "nngp"))
    path = tmp_path / "k.zarr"
    write, writes = _store._Geometry.write, []

    def failing_write(self, *args):
        if len(writes) == 5:
            raise OSError("No space left on device")
        writes.append(args[1:3])
        return write(self, *args)

    monkeypatch.setattr(_store._Geometry, "write", failing_write)
    with pytest.raises(OSError, match="No space left"):
        eqntk.batch(kernel_fn, 4, store=path)(x, None, "nngp")
    monkeypatch.setattr(_store._Geometry, "write", write)
    before = _tiles_computed(log)
    resumed = np.asarray(eqntk.batch(kernel_fn, 4, store=path)(x, None, "nngp"))
    # The resume computes exactly the tiles without a record: all but the five written.
    assert _tiles_computed(log) - before == 21 - 5
    assert np.array_equal(resumed, want)


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_corrupted_tile_is_detected_and_recomputed(tmp_path, monkeypatch, damage):
    log = tmp_path / "tiles.log"
    monkeypatch.setenv("EQNTK_TILE_LOG", str(log))
    kernel_fn, x = _job()
    path = tmp_path / "k.zarr"
    batched = eqntk.batch(kernel_fn, 4, store=path)
    first = jax.tree_util.tree_map(np.asarray, batched(x, None, ("nngp", "ntk")))
    chunk = path / "ntk" / "c" / "1" / "4"  # the NTK of tile (1, 4); its record is intact
    data = bytearray(chunk.read_bytes())
    if damage == "flip":
        data[37] ^= 0x10  # one bit of one float64
        chunk.write_bytes(bytes(data))
    elif damage == "truncate":
        chunk.write_bytes(bytes(data[: len(data) // 2]))
    else:
        chunk.unlink()
    with pytest.warns(UserWarning, match=r"1 finished tile\(s\).*checksum.*computed again"):
        resumed = batched(x, None, ("nngp", "ntk"))
    assert _tiles_computed(log) == 21 + 1
    for a, b in zip(first, resumed):
        assert np.array_equal(a, np.asarray(b))


def test_another_job_is_refused(tmp_path):
    kernel_fn, x = _job()
    path = tmp_path / "k.zarr"
    eqntk.batch(kernel_fn, 4, store=path)(x, None, "nngp")
    other_fn, _ = _job(key=1)
    cases = [
        (other_fn, 4, x, None, "nngp", "the network"),
        (kernel_fn, 4, x.at[3, 1].add(1e-9), None, "nngp", "the inputs `x1`"),
        (kernel_fn, 4, x, x[:5], "nngp", "the inputs `x2`"),
        (kernel_fn, 5, x, None, "nngp", "the tile size"),
        (kernel_fn, 4, x, None, "ntk", "`get`"),
    ]
    for fn, size, x1, x2, get, what in cases:
        with pytest.raises(ValueError, match=re.escape(what)) as info:
            eqntk.batch(fn, size, store=path)(x1, x2, get)
        assert "holds another job" in str(info.value) and str(path) in str(info.value)
    # Keyword arguments of the kernel function are part of the job too.
    kernel = eqntk.limit(nn.Sequential([nn.Conv(1, 4, (3,), key=jr.key(0)), nn.Relu()]))
    images = jr.normal(jr.key(1), (5, 1, 4))
    eqntk.batch(kernel, 4, store=tmp_path / "c.zarr")(images, None, "nngp")
    with pytest.raises(ValueError, match="the network"):
        batched = eqntk.batch(kernel, 4, store=tmp_path / "c.zarr")
        batched(images, None, "nngp", diagonal_spatial=True)
    # A directory that is not a store is not overwritten.
    (tmp_path / "notes").mkdir()
    with pytest.raises(ValueError, match="not an eqntk tile store"):
        eqntk.batch(kernel_fn, 4, store=tmp_path / "notes")(x, None, "nngp")
    # (Under the test suite's runtime type checks, the annotation rejects it first.)
    with pytest.raises(TypeError, match="store"):
        eqntk.batch(kernel_fn, 4, store=3)  # type: ignore[arg-type]


def test_progress_counts_tiles_found_on_disk(tmp_path, capfd):
    kernel_fn, x = _job()
    path = tmp_path / "k.zarr"
    eqntk.batch(kernel_fn, 4, store=path)(x, None, "nngp")
    records = zarr.open_array(str(path / "tiles_done"), mode="r+")
    records[0, 0] = 0
    capfd.readouterr()
    eqntk.batch(kernel_fn, 4, store=path, progress=True)(x, None, "nngp")
    assert "21/21 tiles" in capfd.readouterr().err
    stream = io.StringIO()
    advance = progress_bar(5, enabled=True, stream=stream, initial=3)
    advance(1)
    assert re.search(r"\] 4/5 tiles, [\d.]+ tiles/s", stream.getvalue())


_KILLED = textwrap.dedent(
    """
    import sys
    import jax
    jax.config.update("jax_enable_x64", True)
    import eqntk
    from tests.test_store import _job

    kernel_fn, x = _job(n=int(sys.argv[2]))
    eqntk.batch(kernel_fn, 4, store=sys.argv[1])(x, None, None)
    print("OK")
    """
)


def _start(script: str, *args: str, env: dict[str, str]) -> subprocess.Popen:
    # A compilation cache shared by the runs of one test: each run compiles the same programs.
    cache = {
        "JAX_COMPILATION_CACHE_DIR": str(pathlib.Path(args[0]).parent / "jax-cache"),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    }
    return subprocess.Popen(
        [sys.executable, "-c", script, *args],
        cwd=ROOT,
        env={**os.environ, **cache, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


IN_FLIGHT_STEPS = _store._IN_FLIGHT + 2  # queued for the writer, being written, being computed


def _records(path: pathlib.Path) -> int:
    files = (path / "tiles_done" / "c").glob("*/*")
    return sum(f.name.isdigit() for f in files)


def _kill_and_resume(tmp_path: pathlib.Path, kills: int, n: int, devices: int) -> tuple[int, int]:
    """Kill a job `kills` times at random tiles, resume it to the end; check it bit for bit.

    Returns the number of tiles and the number computed in all runs together.
    """
    env = {
        "EQNTK_TILE_LOG": str(tmp_path / "tiles.log"),
        "EQNTK_TILE_SLEEP": "0.03",
        # The tests' compile settings too (conftest), so that the runs round like this one.
        "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} "
        f"--xla_force_host_platform_device_count={devices}",
    }
    path = tmp_path / "killed.zarr"
    tiles = (-(-n // 4)) * (-(-n // 4) + 1) // 2
    rng = random.Random(0)
    for _ in range(kills):
        target = rng.randrange(1, tiles)  # kill once the store holds this many tiles
        process = _start(_KILLED, str(path), str(n), env=env)
        while process.poll() is None and _records(path) < target:
            time.sleep(0.005)
        time.sleep(rng.uniform(0, 0.03))  # anywhere within a tile
        process.send_signal(signal.SIGKILL)
        process.communicate()
    resumed = _start(_KILLED, str(path), str(n), env=env)
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0 and out.strip() == "OK", err[-3000:]
    computed = _tiles_computed(tmp_path / "tiles.log")

    # Uninterrupted, in this process (its devices and XLA flags are those of the killed runs
    # only when `devices == 1`; tiles are computed per device either way).
    kernel_fn, x = _job(n=n)
    eqntk.batch(kernel_fn, 4, store=tmp_path / "reference.zarr")(x, None, None)
    _assert_identical(path, tmp_path / "reference.zarr")
    return tiles, computed


def test_sigkill_at_random_points_then_resume(tmp_path):
    tiles, computed = _kill_and_resume(tmp_path, kills=2, n=22, devices=1)
    # Each kill loses at most the tiles in flight, a tile per step on one device: the step being
    # written, those waiting for the writer and the one being computed.
    assert tiles <= computed <= tiles + 2 * IN_FLIGHT_STEPS


@pytest.mark.slow
def test_sigkill_many_times_on_two_devices(tmp_path):
    tiles, computed = _kill_and_resume(tmp_path, kills=8, n=38, devices=2)
    print(f"{tiles} tiles, {computed - tiles} computed again after 8 kills")
    assert tiles <= computed <= tiles + 8 * 2 * IN_FLIGHT_STEPS


_TWO_PROCESSES = textwrap.dedent(
    """
    import os, sys
    import jax
    jax.config.update("jax_enable_x64", True)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=os.environ["COORDINATOR"], num_processes=2,
        process_id=int(os.environ["PROCESS_ID"]),
    )
    import numpy as np
    import eqntk
    from tests.test_store import _job

    kernel_fn, x = _job(n=int(sys.argv[2]))
    k = eqntk.batch(kernel_fn, 4, store=sys.argv[1], progress=True)(x, None, None)
    # Every process returns the whole stored kernel, once all tiles are written.
    assert not np.isnan(np.asarray(k.ntk)).any()
    print("OK")
    """
)


def test_two_processes_share_one_store(tmp_path):
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    n, path = 22, tmp_path / "shared.zarr"
    processes = [
        _start(
            _TWO_PROCESSES,
            str(path),
            str(n),
            env={
                "COORDINATOR": f"localhost:{port}",
                "PROCESS_ID": str(i),
                "EQNTK_TILE_LOG": str(tmp_path / f"process{i}.log"),
            },
        )
        for i in range(2)
    ]
    try:
        errs = []
        for process in processes:
            out, err = process.communicate(timeout=600)
            assert process.returncode == 0 and out.strip().endswith("OK"), err[-3000:]
            errs.append(err)
    finally:
        for process in processes:
            process.kill()
    # Process 0 shows the progress of the whole job, ending at all 21 tiles; process 1 nothing.
    assert "21/21 tiles" in errs[0] and "tiles" not in errs[1]
    # 21 tiles, dealt alternately: 11 and 10, none computed twice.
    assert [_tiles_computed(tmp_path / f"process{i}.log") for i in range(2)] == [11, 10]

    # Bit for bit what one process writes (this one, with the same kernel function).
    kernel_fn, x = _job(n=n)
    eqntk.batch(kernel_fn, 4, store=tmp_path / "single.zarr")(x, None, None)
    _assert_identical(path, tmp_path / "single.zarr")
