"""Fully-connected ReLU network: NNGP and NTK of 784 -> 3 x (Dense 512, ReLU) -> Dense 10.

The floor of this case is one 1024 x 784 x 1024 Gram product plus, per hidden layer, one
arc-cosine map over the 1024 x 1024 NNGP entries (with a multiply-add on the NTK). The eqntk
side measures those pieces on this machine and reports how close the whole kernel gets.
"""

import functools

from ._data import normal
from ._harness import Case, Row, Target
from ._timing import measure as _measure


W_STD, B_STD = 1.5, 0.05
DEPTH = 3


def _sizes(quick: bool) -> tuple[int, int, int]:
    """(examples per side, input dimension, hidden width)."""
    return (16, 8, 8) if quick else (1024, 784, 512)


def eqntk_mlp(d: int, width: int, depth: int, out: int, key):
    """`depth` x (Dense(width), ReLU) + Dense(out), NTK parameterisation."""
    import jax.random as jr

    from eqntk import nn

    keys = jr.split(key, depth + 1)
    layers, fan_in = [], d
    for i in range(depth):
        layers += [nn.Dense(fan_in, width, W_std=W_STD, b_std=B_STD, key=keys[i]), nn.Relu()]
        fan_in = width
    layers.append(nn.Dense(fan_in, out, W_std=W_STD, b_std=B_STD, key=keys[depth]))
    return nn.Sequential(layers)


def _relu_floor_map(q11, q12, q22, ntk):
    """The least work a ReLU layer of this case needs: one fused pass over NNGP and NTK."""
    import jax.numpy as jnp

    from eqntk.limits._math import arccos_kernel_0, arccos_kernel_1

    norm = jnp.sqrt(q11 * q22)
    rho = jnp.clip(q12 / norm, -1, 1)
    nngp = (0.5 * W_STD**2) * norm * arccos_kernel_1(rho) + B_STD**2
    return nngp, ntk * (0.5 * W_STD**2) * arccos_kernel_0(rho) + nngp


def eqntk_side(quick: bool) -> dict:
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import jax.random as jr

    import eqntk
    from eqntk import nn

    n, d, width = _sizes(quick)
    repeats = 1 if quick else 7
    measure = functools.partial(_measure, repeats=repeats)
    x1, x2 = jnp.asarray(normal((n, d), 0)), jnp.asarray(normal((n, d), 1))
    model = eqntk_mlp(d, width, DEPTH, 10, jr.key(0))
    kernel_fn = eqx.filter_jit(eqntk.limit(model))
    m = {"kernel": measure(kernel_fn, x1, x2, get=("nngp", "ntk"))}

    # The pieces of the floor, each jitted alone.
    m["gram"] = measure(jax.jit(lambda a, b: a @ b.T), x1, x2)
    q12 = jnp.abs(normal((n, n), 2)) + 1.0
    var = jnp.asarray(normal((n,), 3)) ** 2 + 2.0
    ntk = jnp.asarray(normal((n, n), 4))
    floor_map = jax.jit(lambda v1, q, v2, t: _relu_floor_map(v1[:, None], q, v2[None, :], t))
    m["relu_map"] = measure(floor_map, var, q12, var, ntk)
    m["copy"] = measure(jax.jit(lambda a: a * 2), q12)
    m["floor"] = {
        key: m["gram"][key] + DEPTH * m["relu_map"][key] for key in ("median", "first_call")
    }
    # eqntk's own ReLU layer, continuing from the kernel of the first Dense layer.
    k = eqx.filter_jit(eqntk.limit(model[0]))(x1, x2)
    m["relu_layer"] = measure(eqx.filter_jit(eqntk.limit(nn.Relu())), k, get=("nngp", "ntk"))

    ms = {key: 1e3 * v["median"] for key, v in m.items()}
    notes = [
        f"floor = Gram {ms['gram']:.1f} ms + {DEPTH} x fused ReLU map over {n * n} entries "
        f"{ms['relu_map']:.1f} ms = {ms['floor']:.1f} ms; eqntk kernel {ms['kernel']:.1f} ms "
        f"= {m['kernel']['median'] / m['floor']['median']:.2f}x the floor",
        f"eqntk ReLU layer (NNGP+NTK+variances) {ms['relu_layer']:.1f} ms; fused map "
        f"{ms['relu_map']:.1f} ms; copy of one {n}x{n} array {ms['copy']:.1f} ms "
        f"({n * n / m['copy']['median'] / 1e9:.2f} G elements/s)",
    ]
    return {"measurements": m, "notes": notes}


def nt_side(quick: bool) -> dict:
    import jax
    import jax.numpy as jnp
    from neural_tangents import stax

    n, d, width = _sizes(quick)
    x1, x2 = jnp.asarray(normal((n, d), 0)), jnp.asarray(normal((n, d), 1))
    layers = []
    for _ in range(DEPTH):
        layers += [stax.Dense(width, W_std=W_STD, b_std=B_STD), stax.Relu()]
    layers.append(stax.Dense(10, W_std=W_STD, b_std=B_STD))
    _, _, kernel_fn = stax.serial(*layers)
    kernel_fn = jax.jit(kernel_fn, static_argnames="get")
    m = {"kernel": _measure(kernel_fn, x1, x2, get=("nngp", "ntk"), repeats=1 if quick else 7)}
    return {"measurements": m}


CASES = (
    Case(
        name="fcn",
        module=__name__,
        eqntk="eqntk_side",
        nt="nt_side",
        rows=(
            Row("fcn", "kernel", "kernel", target=Target(ratio=0.5, first=1.0, memory=True)),
            Row("fcn: floor (Gram + 3 maps)", "floor"),
            Row("fcn: floor Gram matmul", "gram"),
            Row("fcn: floor fused ReLU map", "relu_map"),
            Row("fcn: eqntk ReLU layer", "relu_layer"),
        ),
        description="NNGP+NTK, 784 -> 3 x (Dense 512, ReLU) -> Dense 10, 1024 x 1024 inputs",
    ),
)
