"""A 20000 x 20000 NNGP through `eqntk.batch`, kept on the host: peak memory and wall time.

The network is the FCN case, 784 -> 3 x (Dense 512, ReLU) -> Dense 10, on float32 inputs.
The kernel alone is 20000^2 x 4 bytes = 1.49 GiB; computed in one piece, the arc-cosine maps
of a ReLU network would hold several arrays of that size at once. `batch(...,
store_on_host=True)` writes each finished tile into one preallocated numpy array, so the peak
resident memory should be the output plus a few tiles, the inputs and the runtime.

Run from the repository root (a standalone script, not a case of `python -m benchmarks`):

    python -m benchmarks.batch_memory [--n 20000] [--batch-size 1000] [--json out.json]

It prints the wall time, the peak resident memory (`VmHWM` of `/proc/self/status`), the
output size and their difference, and checks a few random entries against `kernel_fn` on
the same inputs.
"""

import argparse
import json
import re
import time


W_STD, B_STD, WIDTH, DEPTH, D_IN = 1.5, 0.05, 512, 3, 784


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        match = re.search(rf"{field}:\s+(\d+) kB", f.read())
    assert match is not None, field
    return int(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000, help="examples (N x N kernel)")
    parser.add_argument("--batch-size", type=int, default=1000, help="examples per tile side")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()

    import jax
    import jax.numpy as jnp
    import jax.random as jr
    import numpy as np

    import eqntk
    from eqntk import nn

    keys = iter(jr.split(jr.key(0), DEPTH + 1))
    layers, fan_in = [], D_IN
    for _ in range(DEPTH):
        layers += [nn.Dense(fan_in, WIDTH, W_std=W_STD, b_std=B_STD, key=next(keys)), nn.Relu()]
        fan_in = WIDTH
    layers.append(nn.Dense(WIDTH, 10, W_std=W_STD, b_std=B_STD, key=next(keys)))
    kernel_fn = eqntk.limit(nn.Sequential(layers))
    x = np.random.default_rng(0).standard_normal((args.n, D_IN), dtype=np.float32)

    baseline = _status_kib("VmRSS")
    batched = eqntk.batch(kernel_fn, args.batch_size, store_on_host=True, progress=True)
    start = time.perf_counter()
    nngp = batched(x, get="nngp")
    wall = time.perf_counter() - start
    peak = _status_kib("VmHWM")

    # Spot checks: exact symmetry, and a few random entries against the untiled function.
    rng = np.random.default_rng(1)
    rows, cols = rng.choice(args.n, 8, replace=False), rng.choice(args.n, 8, replace=False)
    expected = np.asarray(kernel_fn(jnp.asarray(x[rows]), jnp.asarray(x[cols]), "nngp"))
    error = float(np.max(np.abs(nngp[np.ix_(rows, cols)] - expected) / np.abs(expected)))
    symmetric = bool(np.array_equal(nngp[rows][:, cols], nngp[cols][:, rows].T))

    gib = 2.0**30
    results = {
        "n": args.n,
        "batch_size": args.batch_size,
        "devices": jax.device_count(),
        "dtype": str(nngp.dtype),
        "wall_s": round(wall, 1),
        "output_gib": round(nngp.nbytes / gib, 3),
        "peak_rss_gib": round(peak * 1024 / gib, 3),
        "rss_before_gib": round(baseline * 1024 / gib, 3),
        "peak_minus_output_gib": round((peak * 1024 - nngp.nbytes) / gib, 3),
        "max_relative_error_of_spot_checks": error,
        "symmetric": symmetric,
    }
    print(json.dumps(results, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
