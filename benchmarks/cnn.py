"""Convolutional networks: a Flatten head, a GlobalAvgPool head, and Myrtle-5.

- flatten: 8 x (Conv 3x3 SAME, ReLU) + Flatten + Dense on 3x32x32, 64 x 64 pairs. Only the
  spatial diagonal of each covariance is needed (1024 entries per pair).
- pool: 8 x (Conv 3x3 SAME, ReLU) + GlobalAvgPool + Dense on 3x16x16, 16 x 16 pairs. The full
  (16*16)^2 = 65 536-entry covariance per pair: per entry of the kernel, about 25 M additions
  (8 layers x 9 shifts x 2 kernels) and 0.5 M arc-cosines.
- myrtle5: the 5-layer Myrtle network (3x3 convolutions, ReLU, 2x2 average pooling) on 3x32x32,
  4 x 4 pairs.
Times are per call; the per-entry cost is in the notes. Peak memory is compared too: from
after the inputs and the model are built (eqntk's finite network holds random weights, which
the kernel never reads but whose first random initialisation compiles JAX's random number
generator, about 60 MiB of resident memory; neural-tangents' `stax` has no weights), so that
both figures are the kernel computation's own: tracing, compiling and running it.
"""

from ._data import channel_last, normal
from ._harness import Case, Row, Target
from ._timing import measure, start_memory_window


W_STD, B_STD = 2.0**0.5, 0.05
CHANNELS = 64
SIZES = {
    # name: (pairs per side, image side, repeats of the timing)
    "flatten": (64, 32, 3),
    "pool": (16, 16, 2),
    "myrtle5": (4, 32, 2),
}
QUICK_SIZES = {"flatten": (2, 8, 1), "pool": (2, 4, 1), "myrtle5": (2, 8, 1)}
# Myrtle-5: convolution blocks before each of the first two 2x2 pools and after them.
MYRTLE5_BLOCKS = (2, 1, 1)


def _eqntk_model(name: str, side: int, key):
    import jax.random as jr

    from eqntk import nn

    keys = iter(jr.split(key, 16))

    def conv(c_in):
        return nn.Conv(
            c_in, CHANNELS, (3, 3), padding="SAME", W_std=W_STD, b_std=B_STD, key=next(keys)
        )

    def blocks(count, c_in):
        layers = []
        for _ in range(count):
            layers += [conv(c_in), nn.Relu()]
            c_in = CHANNELS
        return layers

    def pool():
        return nn.AvgPool((2, 2), strides=(2, 2))

    if name == "myrtle5":
        first, second, third = MYRTLE5_BLOCKS
        layers = blocks(first, 3) + [pool()] + blocks(second, CHANNELS) + [pool()]
        layers += blocks(third, CHANNELS)
        # Pool down to 1 x 1 (side / 4 / 2^k).
        remaining = side // 4
        while remaining > 1:
            layers.append(pool())
            remaining //= 2
        layers += [nn.Flatten(), nn.Dense(CHANNELS, 10, W_std=W_STD, b_std=B_STD, key=next(keys))]
    else:
        layers = blocks(8, 3)
        if name == "flatten":
            fan_in = CHANNELS * side * side
            layers.append(nn.Flatten())
        else:
            fan_in = CHANNELS
            layers.append(nn.GlobalAvgPool())
        layers.append(nn.Dense(fan_in, 10, W_std=W_STD, b_std=B_STD, key=next(keys)))
    return nn.Sequential(layers)


def _nt_model(name: str, side: int):
    from neural_tangents import stax

    def blocks(count):
        conv = stax.Conv(CHANNELS, (3, 3), padding="SAME", W_std=W_STD, b_std=B_STD)
        return [conv, stax.Relu()] * count

    pool = stax.AvgPool((2, 2), strides=(2, 2))
    if name == "myrtle5":
        first, second, third = MYRTLE5_BLOCKS
        layers = blocks(first) + [pool] + blocks(second) + [pool] + blocks(third)
        remaining = side // 4
        while remaining > 1:
            layers.append(pool)
            remaining //= 2
        layers += [stax.Flatten(), stax.Dense(10, W_std=W_STD, b_std=B_STD)]
    else:
        head = stax.Flatten() if name == "flatten" else stax.GlobalAvgPool()
        layers = blocks(8) + [head, stax.Dense(10, W_std=W_STD, b_std=B_STD)]
    return stax.serial(*layers)[2]


def _inputs(name: str, quick: bool):
    n, side, repeats = (QUICK_SIZES if quick else SIZES)[name]
    return normal((n, 3, side, side), 0), normal((n, 3, side, side), 1), side, repeats


def _notes(name: str, m: dict, quick: bool, library: str) -> list[str]:
    n = (QUICK_SIZES if quick else SIZES)[name][0]
    per_entry = m["kernel"]["median"] / (n * n)
    return [f"{library} cnn.{name}: {per_entry * 1e3:.3f} ms per kernel entry"]


def _eqntk_side(name: str, quick: bool) -> dict:
    import equinox as eqx
    import jax.numpy as jnp
    import jax.random as jr

    import eqntk

    x1, x2, side, repeats = _inputs(name, quick)
    kernel_fn = eqx.filter_jit(eqntk.limit(_eqntk_model(name, side, jr.key(0))))
    x1, x2 = jnp.asarray(x1), jnp.asarray(x2)
    start_memory_window()
    m = {"kernel": measure(kernel_fn, x1, x2, get=("nngp", "ntk"), repeats=repeats)}
    return {"measurements": m, "notes": _notes(name, m, quick, "eqntk")}


def _nt_side(name: str, quick: bool) -> dict:
    import jax
    import jax.numpy as jnp

    x1, x2, side, repeats = _inputs(name, quick)
    kernel_fn = jax.jit(_nt_model(name, side), static_argnames="get")
    x1, x2 = jnp.asarray(channel_last(x1)), jnp.asarray(channel_last(x2))
    start_memory_window()
    m = {"kernel": measure(kernel_fn, x1, x2, get=("nngp", "ntk"), repeats=repeats)}
    return {"measurements": m, "notes": _notes(name, m, quick, "neural-tangents")}


def eqntk_flatten(quick: bool) -> dict:
    return _eqntk_side("flatten", quick)


def nt_flatten(quick: bool) -> dict:
    return _nt_side("flatten", quick)


def eqntk_pool(quick: bool) -> dict:
    return _eqntk_side("pool", quick)


def nt_pool(quick: bool) -> dict:
    return _nt_side("pool", quick)


def eqntk_myrtle5(quick: bool) -> dict:
    return _eqntk_side("myrtle5", quick)


def nt_myrtle5(quick: bool) -> dict:
    return _nt_side("myrtle5", quick)


def _case(name: str, ratio: float, description: str) -> Case:
    return Case(
        name=f"cnn.{name}",
        module=__name__,
        eqntk=f"eqntk_{name}",
        nt=f"nt_{name}",
        rows=(
            Row(
                f"cnn.{name}",
                "kernel",
                "kernel",
                target=Target(ratio=ratio, memory=True, first=1.0),
            ),
        ),
        description=description,
        timeout_s=3600.0,
    )


CASES = (
    _case("flatten", 0.5, "8 x (Conv 3x3 SAME, ReLU) + Flatten + Dense, 3x32x32, 64 x 64"),
    _case("pool", 0.2, "8 x (Conv 3x3 SAME, ReLU) + GlobalAvgPool + Dense, 3x16x16, 16 x 16"),
    _case("myrtle5", 0.25, "Myrtle-5, 3x32x32, 4 x 4"),
)
