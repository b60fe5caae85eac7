"""The tile store's overhead: `eqntk.batch(..., store=path)` against the in-memory `batch` on
the same job, for a fully connected and a convolutional network.

Both paths compute the same tiles with the same compiled program; the store also encodes each
tile as a Zarr chunk, checksums it and writes it to disk. Each job is run once to compile,
then in-memory and stored runs alternate (`--repeats` each, a fresh store every time) and the
fastest of each is compared. Tiles are `--batch-size` squared examples: the FCN's NNGP and NTK
tiles are 2 MiB each at the default 512 (float32).

Run from the repository root (a standalone script, not a case of `python -m benchmarks`):

    python -m benchmarks.store_overhead [--n 4096] [--batch-size 512] [--repeats 2]
    python -m benchmarks.store_overhead --memory-n 20000   # peak memory of a large job

It prints, per network: the in-memory and stored times, the overhead, the tile size, the
store's size on disk, and the floor: the time to write the result's bytes as plain files (one
per chunk), as a share of the in-memory time.
"""

import argparse
import itertools
import json
import pathlib
import shutil
import tempfile
import time


def _networks(key):
    import jax.random as jr

    from eqntk import nn

    k = iter(jr.split(key, 8))
    fcn = nn.Sequential(
        [
            nn.Dense(784, 512, W_std=1.5, b_std=0.05, key=next(k)),
            nn.Relu(),
            nn.Dense(512, 512, W_std=1.5, b_std=0.05, key=next(k)),
            nn.Relu(),
            nn.Dense(512, 10, W_std=1.5, b_std=0.05, key=next(k)),
        ]
    )
    cnn = nn.Sequential(
        [
            nn.Conv(3, 64, (3, 3), padding="SAME", W_std=1.5, b_std=0.05, key=next(k)),
            nn.Relu(),
            nn.Conv(64, 64, (3, 3), padding="SAME", W_std=1.5, b_std=0.05, key=next(k)),
            nn.Relu(),
            nn.Flatten(),
            nn.Dense(64 * 8 * 8, 10, W_std=1.5, b_std=0.05, key=next(k)),
        ]
    )
    return {"fcn": (fcn, (784,)), "cnn": (cnn, (3, 8, 8))}


def _raw_write(result, batch_size: int, workdir: pathlib.Path) -> float:
    """Seconds to write the result's bytes as plain files, one per tile-sized chunk: the cost
    of putting the kernel on disk at all, below which no store can go."""
    import jax
    import numpy as np

    out = workdir / "raw"
    out.mkdir(exist_ok=True)
    start = time.perf_counter()
    for k, leaf in enumerate(jax.tree_util.tree_leaves(result)):
        a = np.asarray(leaf)
        for r in range(0, a.shape[0], batch_size):
            for c in range(0, a.shape[1], batch_size):
                with open(out / f"{k}.{r}.{c}", "wb") as f:
                    f.write(np.ascontiguousarray(a[r : r + batch_size, c : c + batch_size]).data)
    seconds = time.perf_counter() - start
    shutil.rmtree(out)
    return seconds


def _peak_memory(n: int, batch_size: int) -> None:
    """Writes the FCN's NNGP and NTK of `n` examples to a store and prints the peak resident
    memory of the whole process (from the kernel's high-water mark, `VmHWM`), the resident
    memory before the job, and the size of the result."""
    import resource

    import jax.random as jr
    import numpy as np

    import eqntk

    model, shape = _networks(jr.key(0))["fcn"]
    x = np.random.default_rng(0).standard_normal((n, *shape), dtype=np.float32)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="eqntk-store-"))
    try:
        start = time.perf_counter()
        stored_fn = eqntk.batch(eqntk.limit(model), batch_size, store=workdir / "k.zarr")
        stored_fn(x, None, ("nngp", "ntk"))
        seconds = time.perf_counter() - start
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
    row = {
        "network": "fcn",
        "n": n,
        "batch_size": batch_size,
        "seconds": round(seconds, 1),
        "result_mib": round(2 * n * n * 4 / 2**20),
        "tile_mib": round(2 * batch_size**2 * 4 / 2**20, 1),
        "rss_before_job_mib": round(before),
        "peak_rss_mib": round(peak),
    }
    print(json.dumps(row))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4096, help="examples (N x N kernel)")
    parser.add_argument("--batch-size", type=int, default=512, help="examples per tile side")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs of each path")
    parser.add_argument("--cnn-n", type=int, default=1024, help="examples for the CNN job")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument(
        "--memory-n",
        type=int,
        help="instead: write the FCN kernel of this many examples to a store and report the "
        "process's peak resident memory against the result's size",
    )
    args = parser.parse_args()
    if args.memory_n:
        _peak_memory(args.memory_n, args.batch_size)
        return

    import jax
    import jax.random as jr
    import numpy as np

    import eqntk

    results = []
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="eqntk-store-"))
    try:
        for name, (model, shape) in _networks(jr.key(0)).items():
            n = args.n if name == "fcn" else args.cnn_n
            kernel_fn = eqntk.limit(model)
            x = np.random.default_rng(0).standard_normal((n, *shape), dtype=np.float32)
            batched = eqntk.batch(kernel_fn, args.batch_size, store_on_host=True, progress=False)
            get = ("nngp", "ntk")
            jax.block_until_ready(batched(x, None, get))  # compiles the tile program

            def in_memory():
                return jax.block_until_ready(batched(x, None, get))

            def stored():
                path = workdir / f"{name}-{next(runs)}.zarr"
                stored_fn = eqntk.batch(kernel_fn, args.batch_size, progress=False, store=path)
                return stored_fn(x, None, get)

            runs = itertools.count(1)
            times = {"memory": [], "store": []}
            for _ in range(args.repeats):
                for label, fn in (("memory", in_memory), ("store", stored)):
                    start = time.perf_counter()
                    out = fn()
                    times[label].append(time.perf_counter() - start)
            reference = in_memory()
            leaves = jax.tree_util.tree_leaves
            same = all(
                np.array_equal(np.asarray(a), np.asarray(b))
                for a, b in zip(leaves(out), leaves(reference))
            )
            floor = min(_raw_write(reference, args.batch_size, workdir) for _ in range(3))
            disk = sum(f.stat().st_size for f in workdir.glob(f"{name}-1.zarr/**/*") if f.is_file())
            memory, store = min(times["memory"]), min(times["store"])
            results.append(
                {
                    "network": name,
                    "n": n,
                    "batch_size": args.batch_size,
                    "tile_mib_per_array": round(args.batch_size**2 * 4 / 2**20, 2),
                    "memory_s": round(memory, 2),
                    "store_s": round(store, 2),
                    "overhead": f"{100 * (store / memory - 1):+.1f}%",
                    "raw_write_s": round(floor, 3),
                    "raw_write_share": f"{100 * floor / memory:.1f}%",
                    "store_mib_on_disk": round(disk / 2**20, 1),
                    "identical": same,
                }
            )
            print(json.dumps(results[-1]))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
