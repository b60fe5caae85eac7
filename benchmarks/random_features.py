"""Kernel regression at scale: random NTK features, matrix-free CG and the exact kernel.

A benchmark, not a test: run it by hand from the repository root,

    python -m benchmarks.random_features --section scale    # N = 500 000, random features
    python -m benchmarks.random_features --section compare  # exact vs features vs CG
    python -m benchmarks.random_features --section sweep    # accuracy against m (the plot)
    python -m benchmarks.random_features --section digits   # sklearn's bundled digits
    python -m benchmarks.random_features --quick            # every section, tiny sizes

Each section prints one JSON line per measurement and appends it to
`benchmarks/random_features.jsonl` (the plot script reads that file).

The task has a known answer: inputs are standard normal in 16 dimensions and the targets are a
fixed wide teacher network (width 1024, two ReLU hidden layers) plus 5% noise, so the test
error of a perfect predictor is the noise (a normalised MSE of 0.0025). The student is the
NTK of a two-hidden-layer ReLU network. Everything runs in float32 on the CPU.
"""

import argparse
import json
import os
import resource
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

import eqntk
from eqntk import nn
from eqntk.dynamics import gp_inference, gp_inference_matrix_free
from eqntk.features import random_features


OUT = Path(__file__).with_name("random_features.jsonl")
DIM = 16
NOISE = 0.05


def student(d: int = DIM, out: int = 1):
    keys = jr.split(jr.key(0), 3)
    return nn.Sequential(
        [
            nn.Dense(d, 8, W_std=1.4, b_std=0.1, key=keys[0]),
            nn.Relu(),
            nn.Dense(8, 8, W_std=1.4, b_std=0.1, key=keys[1]),
            nn.Relu(),
            nn.Dense(8, out, W_std=1.0, b_std=0.1, key=keys[2]),
        ]
    )


def teacher_task(n: int, seed: int):
    keys = jr.split(jr.key(1000), 3)
    teacher = nn.Sequential(
        [
            nn.Dense(DIM, 1024, W_std=1.4, b_std=0.1, key=keys[0]),
            nn.Relu(),
            nn.Dense(1024, 1024, W_std=1.4, b_std=0.1, key=keys[1]),
            nn.Relu(),
            nn.Dense(1024, 1, key=keys[2]),
        ]
    )
    f = jax.jit(jax.vmap(teacher))
    kx, kn = jr.split(jr.key(seed))
    x = jr.normal(kx, (n, DIM))
    y = jnp.concatenate([f(x[i : i + 8192]) for i in range(0, n, 8192)])
    scale = float(jnp.std(y))
    y = (y - float(jnp.mean(f(jr.normal(jr.key(99), (8192, DIM)))))) / scale
    return x, y + NOISE * jr.normal(kn, y.shape)


def record(**row):
    row["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    row["load"] = round(os.getloadavg()[0], 1)
    line = json.dumps(row)
    print(line, flush=True)
    with OUT.open("a") as f:
        f.write(line + "\n")


def nmse(pred, y):
    return float(jnp.mean((pred - y) ** 2) / jnp.mean((y - jnp.mean(y)) ** 2))


def feature_ridge(fmap, x, y, x_test, reg, chunk=8192):
    """Ridge regression on features, streamed in chunks: memory O(chunk D + D^2)."""
    phi_fn = jax.jit(lambda a: fmap(a, get="ntk"))
    gram, rhs, diag = None, None, 0.0
    for i in range(0, len(x), chunk):
        phi = phi_fn(x[i : i + chunk])
        g, r = phi.T @ phi, phi.T @ y[i : i + chunk]
        gram, rhs = (g, r) if gram is None else (gram + g, rhs + r)
        diag += float(jnp.sum(phi**2))
    # The regulariser relative to the mean diagonal of the approximate kernel, as diag_reg.
    lam = reg * diag / len(x)
    w = jnp.linalg.solve(gram + lam * jnp.eye(len(gram), dtype=gram.dtype), rhs)
    pred = jnp.concatenate(
        [phi_fn(x_test[i : i + chunk]) @ w for i in range(0, len(x_test), chunk)]
    )
    return pred, gram.shape[0]


def section_scale(n, m, reg):
    x, y = teacher_task(n + 10_000, seed=1)
    x, y, x_test, y_test = x[:n], y[:n], x[n:], y[n:]
    jax.block_until_ready(y)
    start = time.perf_counter()
    fmap = random_features(student(), m, key=jr.key(2))
    pred, dim = feature_ridge(fmap, x, y, x_test, reg)
    pred = jax.block_until_ready(pred)
    record(
        section="scale",
        method="random features",
        n=n,
        m=m,
        features=dim,
        seconds=round(time.perf_counter() - start, 1),
        test_nmse=round(nmse(pred, y_test), 5),
    )


def section_compare(n, m_list, reg, cg_n):
    x, y = teacher_task(n + 2000, seed=3)
    x, y, x_test, y_test = x[:n], y[:n], x[n:], y[n:]
    kernel_fn = eqntk.limit(student())
    jax.block_until_ready(y)

    start = time.perf_counter()
    k = jax.block_until_ready(kernel_fn(x, None, get="ntk"))
    k_time = time.perf_counter() - start
    exact = gp_inference(k, y, reg)(kernel_fn(x_test, x, get="ntk"), get="ntk").mean
    exact = jax.block_until_ready(exact)
    seconds = time.perf_counter() - start
    del k
    record(
        section="compare",
        method="exact (Cholesky)",
        n=n,
        seconds=round(seconds, 1),
        kernel_seconds=round(k_time, 1),
        test_nmse=round(nmse(exact, y_test), 5),
    )
    for m in m_list:
        start = time.perf_counter()
        fmap = random_features(student(), m, key=jr.key(m))
        pred, dim = feature_ridge(fmap, x, y, x_test, reg)
        pred = jax.block_until_ready(pred)
        record(
            section="compare",
            method="random features",
            n=n,
            m=m,
            features=dim,
            seconds=round(time.perf_counter() - start, 1),
            test_nmse=round(nmse(pred, y_test), 5),
            rel_diff_to_exact=round(
                float(jnp.linalg.norm(pred - exact) / jnp.linalg.norm(exact)), 5
            ),
        )
    # Matrix-free CG on the first cg_n points, against the exact solve on the same points.
    xs, ys = x[:cg_n], y[:cg_n]
    start = time.perf_counter()
    k = kernel_fn(xs, None, get="ntk")
    exact_cg = gp_inference(k, ys, reg)(kernel_fn(x_test, xs, get="ntk"), get="ntk").mean
    exact_cg = jax.block_until_ready(exact_cg)
    exact_seconds = time.perf_counter() - start
    del k
    start = time.perf_counter()
    predictor = gp_inference_matrix_free(
        kernel_fn, xs, ys, reg, get="ntk", tile_size=1024, rank=200, rtol=1e-4, max_steps=500
    )
    pred = jax.block_until_ready(predictor(x_test).mean)
    record(
        section="compare",
        method="matrix-free CG",
        n=cg_n,
        seconds=round(time.perf_counter() - start, 1),
        exact_seconds=round(exact_seconds, 1),
        test_nmse=round(nmse(pred, y_test), 5),
        exact_test_nmse=round(nmse(exact_cg, y_test), 5),
        rel_diff_to_exact=round(
            float(jnp.linalg.norm(pred - exact_cg) / jnp.linalg.norm(exact_cg)), 6
        ),
    )


def section_sweep(n, m_list, reg, n_kernel=400):
    x, y = teacher_task(n + 2000, seed=5)
    x, y, x_test, y_test = x[:n], y[:n], x[n:], y[n:]
    kernel_fn = eqntk.limit(student())
    exact = gp_inference(kernel_fn(x, None, get="ntk"), y, reg)(
        kernel_fn(x_test, x, get="ntk"), get="ntk"
    ).mean
    xk = x[:n_kernel]
    k_exact = kernel_fn(xk, None, get=("nngp", "ntk"))
    record(section="sweep", method="exact (Cholesky)", n=n, test_nmse=round(nmse(exact, y_test), 5))
    for method in ("sampled", "hermite"):
        for m in m_list:
            for seed in range(2):
                fmap = random_features(student(), m, key=jr.key(100 * m + seed), method=method)
                phi = fmap(xk)
                errs = {
                    g: float(
                        jnp.linalg.norm(p @ p.T - getattr(k_exact, g))
                        / jnp.linalg.norm(getattr(k_exact, g))
                    )
                    for g, p in zip(("nngp", "ntk"), phi)
                }
                pred, dim = feature_ridge(fmap, x, y, x_test, reg)
                record(
                    section="sweep",
                    method=method,
                    n=n,
                    m=m,
                    seed=seed,
                    features=dim,
                    nngp_rel_err=round(errs["nngp"], 5),
                    ntk_rel_err=round(errs["ntk"], 5),
                    test_nmse=round(nmse(pred, y_test), 5),
                    rel_diff_to_exact=round(
                        float(jnp.linalg.norm(pred - exact) / jnp.linalg.norm(exact)), 5
                    ),
                )


def section_digits(m_list, reg):
    from sklearn.datasets import load_digits

    data = load_digits()
    x = jnp.asarray(data.data / 16.0, jnp.float32)
    x = (x - x.mean(0)) / (x.std(0) + 1e-3)
    labels = np.asarray(data.target)
    order = np.random.default_rng(0).permutation(len(x))
    x, labels = x[order], labels[order]
    y = jnp.asarray(np.eye(10)[labels] - 0.1, jnp.float32)
    n = 1400
    model = student(d=64, out=10)
    kernel_fn = eqntk.limit(model)

    def accuracy(pred):
        return float(np.mean(np.argmax(np.asarray(pred), 1) == labels[n:]))

    start = time.perf_counter()
    exact = gp_inference(kernel_fn(x[:n], None, get="ntk"), y[:n], reg)(
        kernel_fn(x[n:], x[:n], get="ntk"), get="ntk"
    ).mean
    exact = jax.block_until_ready(exact)
    record(
        section="digits",
        method="exact (Cholesky)",
        n=n,
        seconds=round(time.perf_counter() - start, 1),
        test_accuracy=accuracy(exact),
    )
    start = time.perf_counter()
    pred = gp_inference_matrix_free(
        kernel_fn, x[:n], y[:n], reg, get="ntk", tile_size=512, rank=100, rtol=1e-4
    )(x[n:]).mean
    pred = jax.block_until_ready(pred)
    record(
        section="digits",
        method="matrix-free CG",
        n=n,
        seconds=round(time.perf_counter() - start, 1),
        test_accuracy=accuracy(pred),
    )
    for m in m_list:
        start = time.perf_counter()
        fmap = random_features(model, m, key=jr.key(m))
        pred, dim = feature_ridge(fmap, x[:n], y[:n], x[n:], reg)
        record(
            section="digits",
            method="random features",
            n=n,
            m=m,
            features=dim,
            seconds=round(time.perf_counter() - start, 1),
            test_accuracy=accuracy(pred),
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--section", choices=["scale", "compare", "sweep", "digits", "all"], default="all"
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes (checks the script)")
    parser.add_argument("--n-scale", type=int, default=500_000)
    parser.add_argument("--m-scale", type=int, default=1024)
    parser.add_argument("--n-compare", type=int, default=20_000)
    parser.add_argument("--n-cg", type=int, default=5_000)
    parser.add_argument("--reg", type=float, default=1e-2)
    args = parser.parse_args()
    if args.quick:
        args.n_scale, args.m_scale, args.n_compare, args.n_cg = 3000, 64, 1000, 500
    sweep_m = [32, 64] if args.quick else [64, 128, 256, 512, 1024]
    run = {args.section} if args.section != "all" else {"scale", "compare", "sweep", "digits"}
    if "digits" in run:
        section_digits([64] if args.quick else [256, 1024, 2048], args.reg)
    if "sweep" in run:
        section_sweep(1000 if args.quick else 4000, sweep_m, args.reg, 100 if args.quick else 400)
    if "compare" in run:
        section_compare(
            args.n_compare, [64] if args.quick else [256, 512, 1024], args.reg, args.n_cg
        )
    if "scale" in run:
        section_scale(args.n_scale, args.m_scale, args.reg)


if __name__ == "__main__":
    main()
