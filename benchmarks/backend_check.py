"""`python -m benchmarks.backend_check`: check that `eqntk.batch` gives the untiled kernels on
whatever backend JAX finds (CPU, GPU, several devices), then print the devices it ran on.

Not a test (the test suite checks tiling on the CPU, with 1 and 8 simulated devices); this is
the check to run once on an accelerator. Float32, so the comparison allows the rounding of
different tile shapes in matrix products: rtol 1e-5 (a few hundred float32 ulps of the largest
entry, far below any tiling mistake, which would misplace whole blocks).
"""

import sys

import equinox as eqx
import jax
import jax.random as jr
import numpy as np

import eqntk
from eqntk import nn


RTOL = 1e-5


def _fcn(key):
    k1, k2, k3 = jr.split(key, 3)
    return nn.Sequential(
        [
            nn.Dense(784, 512, W_std=1.5, b_std=0.05, key=k1),
            nn.Relu(),
            nn.Dense(512, 512, W_std=1.5, b_std=0.05, key=k2),
            nn.Relu(),
            nn.Dense(512, 10, W_std=1.5, b_std=0.05, key=k3),
        ]
    )


def _cnn(key):
    keys = jr.split(key, 4)
    return nn.Sequential(
        [
            nn.Conv(3, 16, (3, 3), padding="SAME", key=keys[0]),
            nn.Relu(),
            nn.Conv(16, 16, (3, 3), strides=(2, 2), padding="SAME", key=keys[1]),
            nn.Relu(),
            nn.AvgPool((2, 2), strides=(2, 2)),
            nn.Flatten(),
            nn.Dense(16 * 2 * 2, 10, key=keys[3]),
        ]
    )


def _close(name, got, want, fields=("nngp", "ntk")) -> bool:
    ok = True
    for field, a, b in zip(fields, got, want):
        a, b = np.asarray(a), np.asarray(b)
        error = float(np.max(np.abs(a - b)) / np.max(np.abs(b)))
        good = a.shape == b.shape and error <= RTOL
        ok &= good
        print(
            f"  {name:40s} {field}: shape {a.shape} max rel. error {error:.1e} "
            f"{'ok' if good else 'MISMATCH'}"
        )
    return ok


def main() -> int:
    print("backend:", jax.default_backend(), "devices:", jax.devices())
    key = jr.key(0)
    ok = True
    # The CNN pools, so its untiled kernel holds (H W)^2 entries per pair: small images.
    cases = (("FCN", _fcn(key), (784,), 300, 170, 64), ("CNN", _cnn(key), (3, 8, 8), 60, 34, 16))
    for label, model, shape, n1, n2, size in cases:
        kernel_fn = eqntk.limit(model)
        x1 = jr.normal(jr.fold_in(key, 1), (n1,) + shape)
        x2 = jr.normal(jr.fold_in(key, 2), (n2,) + shape)
        full_sym = jax.jit(lambda a: kernel_fn(a, get=("nngp", "ntk")))(x1)
        full_cross = jax.jit(lambda a, b: kernel_fn(a, b, get=("nngp", "ntk")))(x1, x2)
        for on_host in (False, True):
            batched = eqntk.batch(kernel_fn, size, store_on_host=on_host, progress=False)
            where = "host" if on_host else "device"
            ok &= _close(
                f"{label} x2=None, tiles of {size}, {where}",
                batched(x1, get=("nngp", "ntk")),
                full_sym,
            )
            ok &= _close(
                f"{label} x2 given, tiles of {size}, {where}",
                batched(x1, x2, get=("nngp", "ntk")),
                full_cross,
            )
    # A finite-width kernel through the same tiling.
    model = _fcn(key)
    x = jr.normal(jr.fold_in(key, 3), (40, 784))
    empirical = eqx.Partial(eqntk.empirical_kernel, model)
    want = empirical(x)
    got = eqntk.batch(empirical, 16, progress=False)(x)
    ok &= _close("empirical NTK, tiles of 16", (got,), (want,), fields=("ntk",))
    print("all tiled kernels equal the untiled ones" if ok else "SOME TILED KERNELS DIFFER")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
