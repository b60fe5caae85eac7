"""The kernel of a module written as plain code (traced and interpreted) against the same
network written with eqntk's combinators: compile and run times under `jit`.

Run: `python benchmarks/traced_module.py` (float64, a residual CNN on 8 images of 8x8).
"""

import time

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr

import eqntk
from eqntk import nn


jax.config.update("jax_enable_x64", True)


class Block(eqx.Module):
    conv0: nn.Conv
    conv1: nn.Conv
    conv2: nn.Conv
    head: nn.Dense

    def __call__(self, x, *, key=None):
        x = self.conv0(x)
        x = x + self.conv2(jax.nn.relu(self.conv1(x)))
        return self.head(jnp.mean(jax.nn.relu(x), axis=(1, 2)))


def main(n=8, size=8, repeats=5):
    k = jr.split(jr.key(0), 4)
    conv = lambda c, key: nn.Conv(c, 16, (3, 3), padding="SAME", b_std=0.1, key=key)
    traced = Block(conv(3, k[0]), conv(16, k[1]), conv(16, k[2]), nn.Dense(16, 1, key=k[3]))
    branch = nn.Sequential([traced.conv1, nn.Relu(), traced.conv2])
    combinators = nn.Sequential(
        [
            traced.conv0,
            nn.FanOut(2),
            nn.Parallel([nn.Identity(), branch]),
            nn.FanInSum(),
            nn.Relu(),
            nn.GlobalAvgPool(),
            traced.head,
        ]
    )
    x = jr.normal(jr.key(1), (n, 3, size, size))
    times = {}
    for name, model in (("traced", traced), ("combinators", combinators)):
        fn = eqx.filter_jit(eqntk.limit(model))
        t0 = time.perf_counter()
        out = fn(x, get="ntk").block_until_ready()
        compile_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(repeats):
            out = fn(x, get="ntk").block_until_ready()
        run_s = (time.perf_counter() - t0) / repeats
        times[name] = (compile_s, run_s, out)
        print(f"{name:12s} first call {compile_s:7.2f} s   run {run_s * 1e3:8.2f} ms")
    diff = jnp.max(jnp.abs(times["traced"][2] - times["combinators"][2]))
    print(f"max |difference| {float(diff):.2e}")
    print(
        f"ratio traced / combinators: first call "
        f"{times['traced'][0] / times['combinators'][0]:.2f}, "
        f"run {times['traced'][1] / times['combinators'][1]:.2f}"
    )


if __name__ == "__main__":
    main()
