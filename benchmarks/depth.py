"""Compile time in depth: the first call (trace + compile + run) of a deep Dense+Erf kernel.

neural-tangents unrolls depth, so its compile time grows with the number of layers; eqntk's
`nn.repeat` scans over stacked layers and compiles once. (An unrolled eqntk `Sequential` is not
timed here: XLA:CPU inlines the per-example variance chain of every earlier layer into each
layer's fusion, so its compile time grows quadratically with depth; use `nn.repeat`.)
256 x 256 inputs of dimension 64; the network is depth x (Dense 64, Erf).
"""

from ._data import normal
from ._harness import Case, Row, Target
from ._timing import measure, optional


W_STD, B_STD = 1.5, 0.05
DIM = 64


def _sizes(quick: bool) -> tuple[int, int, int]:
    """(examples per side, the compared depth, the deep depth)."""
    return (4, 3, 10) if quick else (256, 100, 1000)


def _block(key):
    from eqntk import nn

    return nn.Sequential([nn.Dense(DIM, DIM, W_std=W_STD, b_std=B_STD, key=key), nn.Erf()])


def eqntk_side(quick: bool) -> dict:
    import equinox as eqx
    import jax.numpy as jnp
    import jax.random as jr

    import eqntk
    from eqntk import nn

    n, depth, deep = _sizes(quick)
    x1, x2 = jnp.asarray(normal((n, DIM), 0)), jnp.asarray(normal((n, DIM), 1))

    def time_first_call(model):
        # A fresh `filter_jit` per model, so the first call includes tracing and compiling.
        return measure(eqx.filter_jit(eqntk.limit(model)), x1, x2, get=("nngp", "ntk"), repeats=3)

    m = {
        "repeat": optional(lambda: time_first_call(nn.repeat(_block, depth, key=jr.key(0)))),
        "repeat_deep": optional(lambda: time_first_call(nn.repeat(_block, deep, key=jr.key(0)))),
    }
    return {"measurements": m}


def nt_side(quick: bool) -> dict:
    import jax
    import jax.numpy as jnp
    from neural_tangents import stax

    n, depth, _ = _sizes(quick)
    x1, x2 = jnp.asarray(normal((n, DIM), 0)), jnp.asarray(normal((n, DIM), 1))
    _, _, kernel_fn = stax.serial(*[stax.Dense(DIM, W_std=W_STD, b_std=B_STD), stax.Erf()] * depth)
    kernel_fn = jax.jit(kernel_fn, static_argnames="get")
    return {
        "measurements": {"unrolled": measure(kernel_fn, x1, x2, get=("nngp", "ntk"), repeats=3)}
    }


CASES = (
    Case(
        name="depth",
        module=__name__,
        eqntk="eqntk_side",
        nt="nt_side",
        rows=(
            Row(
                "depth: repeat x100, first call",
                "repeat",
                "unrolled",
                statistic="first_call",
                target=Target(seconds=1.5),
            ),
            Row(
                "depth: repeat x1000, first call",
                "repeat_deep",
                statistic="first_call",
                target=Target(seconds=2.0),
            ),
            Row("depth: repeat x100, after compile", "repeat", "unrolled"),
        ),
        description="first call of a 100- and 1000-layer Dense+Erf kernel, 256 x 256, dim 64",
    ),
)
