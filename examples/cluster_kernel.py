"""A kernel job for a cluster: resumable, and spread over one process per node or per GPU.

The NNGP and NTK of a small convolutional network on scikit-learn's 8x8 digits, written tile by
tile to a Zarr store. Run it again after it was killed (pre-empted, out of time) and it
resumes; run it under SLURM with several tasks and each task computes its share of the tiles.

    python examples/cluster_kernel.py --store digits-kernel.zarr        # one process
    sbatch examples/cluster_kernel.sbatch                                # several nodes

Under `srun`, `jax.distributed.initialize()` reads the process count, the process index and the
coordinator's address from SLURM's environment. The store must be on a file system that every
node sees (e.g. `$SCRATCH`).
"""

import argparse
import os

import jax
import jax.random as jr
import numpy as np
from sklearn.datasets import load_digits

import eqntk
from eqntk import nn


def cnn(key: jax.Array, channels: int = 64) -> nn.Sequential:
    """Two `Conv`-`Relu` layers, global average pooling and a linear readout."""
    k1, k2, k3 = jr.split(key, 3)
    return nn.Sequential(
        [
            nn.Conv(1, channels, (3, 3), padding="SAME", W_std=1.4, b_std=0.1, key=k1),
            nn.Relu(),
            nn.Conv(channels, channels, (3, 3), padding="SAME", W_std=1.4, b_std=0.1, key=k2),
            nn.Relu(),
            nn.GlobalAvgPool(),
            nn.Dense(channels, 10, W_std=1.4, key=k3),
        ]
    )


def main(
    store: str = "digits-kernel.zarr",
    n: int = 1797,
    batch_size: int = 128,
    distributed: bool | None = None,
    progress: bool | None = None,
):
    """Compute (or resume) the kernel of the first `n` digits into `store`; return it.

    `distributed=None` starts `jax.distributed` when the script runs under SLURM with more
    than one task.
    """
    if distributed is None:
        distributed = int(os.environ.get("SLURM_NTASKS", "1")) > 1
    if distributed:
        jax.distributed.initialize()
    digits = load_digits()
    # (N, 1, 8, 8) images in [0, 1]: the same inputs, hence the same job, in every process.
    x = (digits.images[:n, None] / 16.0).astype(np.float32)
    kernel_fn = eqntk.limit(cnn(jr.key(0)))
    batched = eqntk.batch(kernel_fn, batch_size, store=store, progress=progress)
    # Zarr arrays, read lazily; every process returns once the whole kernel is on disk.
    nngp, ntk = batched(x, None, ("nngp", "ntk"))
    if jax.process_index() == 0:
        size = nngp.nbytes / 2**20
        print(f"{store}: the NNGP and NTK of {nngp.shape[0]} digits, {size:.1f} MiB each")
    return nngp, ntk


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default="digits-kernel.zarr", help="path of the Zarr store")
    parser.add_argument("--n", type=int, default=1797, help="number of digits (at most 1797)")
    parser.add_argument("--batch-size", type=int, default=128, help="examples per tile side")
    args = parser.parse_args()
    main(args.store, args.n, args.batch_size, progress=True)
