"""`eqntk.batch` on 8 simulated CPU devices, and on two processes (`jax.distributed`).

The number of CPU devices is fixed when JAX starts, so each case runs a small script in a fresh
interpreter with `XLA_FLAGS=--xla_force_host_platform_device_count=...`; the script asserts
that tiled kernels equal untiled ones there and prints `OK`.
"""

import os
import socket
import subprocess
import sys
import textwrap


_COMMON = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, jax.random as jr, numpy as np
    jax.config.update("jax_enable_x64", True)
    import eqntk
    from eqntk import nn

    def mlp(key, c_in=3):
        k1, k2 = jr.split(key)
        return nn.Sequential([nn.Dense(c_in, 16, W_std=1.4, b_std=0.1, key=k1), nn.Relu(),
                              nn.Dense(16, 2, W_std=1.2, b_std=0.2, key=k2)])

    def same(tiled, untiled):
        a, ta = jax.tree_util.tree_flatten(tiled)
        b, tb = jax.tree_util.tree_flatten(untiled)
        assert str(ta) == str(tb), (ta, tb)
        for p, q in zip(a, b):
            assert p.shape == q.shape, (p.shape, q.shape)
            np.testing.assert_allclose(p, q, rtol=1e-7, atol=1e-10)
    """
)

_EIGHT_DEVICES = textwrap.dedent(
    """
    assert jax.device_count() == 8
    kernel_fn = eqntk.limit(mlp(jr.key(0)))
    # 11 = 3 tiles of 4 (ragged): 6 tiles for x2=None (2 steps of 8 devices with idle ones),
    # 3 x 2 = 6 for x2 given.
    x1, x2 = jr.normal(jr.key(1), (11, 3)), jr.normal(jr.key(2), (6, 3))
    for store_on_host in (False, True):
        batched = eqntk.batch(kernel_fn, 4, store_on_host=store_on_host)
        for x2_ in (None, x2):
            for get in (None, "nngp", ("ntk", "cov1", "cov2")):
                same(batched(x1, x2_, get), kernel_fn(x1, x2_, get))

    # More tiles than devices: 5 x 5 tiles, 15 of them on and above the diagonal.
    x = jr.normal(jr.key(3), (21, 3))
    same(eqntk.batch(kernel_fn, 4)(x), kernel_fn(x))

    # Full spatial layout, (N, C, H, W) inputs through Dense (channels) and ReLU.
    spatial_fn = eqntk.limit(mlp(jr.key(4)))
    images = jr.normal(jr.key(5), (7, 3, 3, 2))
    for x2_ in (None, jr.normal(jr.key(6), (5, 3, 3, 2))):
        same(eqntk.batch(spatial_fn, 3)(images, x2_), spatial_fn(images, x2_))

    # A user mesh with a second axis (tiles repeat along it), and a subset of the devices.
    mesh = jax.make_mesh((4, 2), ("batch", "model"))
    same(eqntk.batch(kernel_fn, 4, mesh=mesh)(x1, None, "ntk"), kernel_fn(x1, None, "ntk"))
    batched = eqntk.batch(kernel_fn, 4, devices=jax.devices()[:3])
    same(batched(x1, x2, "nngp"), kernel_fn(x1, x2, "nngp"))
    print("OK")
    """
)


def _run(script: str, devices: int, extra_env: dict | None = None) -> subprocess.Popen:
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env.update(extra_env or {})
    return subprocess.Popen(
        [sys.executable, "-c", _COMMON + script],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _check(process: subprocess.Popen, timeout: int = 600) -> None:
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err[-4000:]
    assert out.strip().endswith("OK"), out


def test_eight_simulated_devices():
    _check(_run(_EIGHT_DEVICES, devices=8))


_TWO_PROCESSES = textwrap.dedent(
    """
    import os, sys
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=os.environ["COORDINATOR"], num_processes=2,
        process_id=int(os.environ["PROCESS_ID"]),
    )
    assert jax.device_count() == 4 and jax.local_device_count() == 2
    kernel_fn = eqntk.limit(mlp(jr.key(0)))
    x1, x2 = jr.normal(jr.key(1), (11, 3)), jr.normal(jr.key(2), (6, 3))
    for store_on_host in (False, True):
        batched = eqntk.batch(kernel_fn, 4, store_on_host=store_on_host)
        # Every process gets the whole kernel; each computed the tiles of its own devices.
        same(batched(x1, None, "nngp"), kernel_fn(x1, None, "nngp"))
        same(batched(x1, x2), kernel_fn(x1, x2))
    print("OK")
    """
)


def test_two_processes_with_jax_distributed():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    processes = [
        _run(
            _TWO_PROCESSES,
            devices=2,
            extra_env={"COORDINATOR": f"localhost:{port}", "PROCESS_ID": str(i)},
        )
        for i in range(2)
    ]
    try:
        for process in processes:
            _check(process)
    finally:
        for process in processes:
            process.kill()
