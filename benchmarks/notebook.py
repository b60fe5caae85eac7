"""The Myrtle notebook workload: kernels computed eagerly, as a notebook user computes them.

Myrtle-5 (see `cnn.py`) on 3x16x16 images, NNGP and NTK of 32 images with themselves
(`x2=None`), in a fresh process: the first call is what a researcher waits for after defining
the architecture; the later calls show the steady state.
- myrtle: the kernel function called directly: eqntk's `limit(model)(x, None, get)` (one
  compiled program per architecture and shapes, built on the first call), neural-tangents'
  `kernel_fn(x, None, get)` without `jax.jit` (op by op).
- myrtle_batch: the same through `eqntk.batch` / `nt.batch` (tiles of 8; both compile their
  tile step on the first call).
"""

from ._data import channel_last, normal
from ._harness import Case, Row, Target
from ._timing import measure


SIDE = 16
TILE = 8


def _sizes(quick: bool) -> tuple[int, int]:
    """(images, tile)."""
    return (4, 2) if quick else (32, TILE)


def _eqntk(quick: bool, batched: bool) -> dict:
    import jax.numpy as jnp
    import jax.random as jr

    import eqntk

    from .cnn import _eqntk_model

    n, tile = _sizes(quick)
    x = jnp.asarray(normal((n, 3, SIDE, SIDE), 0))
    kernel_fn = eqntk.limit(_eqntk_model("myrtle5", SIDE, jr.key(0)))
    if batched:
        kernel_fn = eqntk.batch(kernel_fn, tile)
    return {"measurements": {"kernel": measure(kernel_fn, x, None, get=("nngp", "ntk"), repeats=2)}}


def _nt(quick: bool, batched: bool) -> dict:
    import jax.numpy as jnp
    import neural_tangents as nt

    from .cnn import _nt_model

    n, tile = _sizes(quick)
    x = jnp.asarray(channel_last(normal((n, 3, SIDE, SIDE), 0)))
    kernel_fn = _nt_model("myrtle5", SIDE)
    if batched:
        kernel_fn = nt.batch(kernel_fn, batch_size=tile, store_on_device=True)
    return {"measurements": {"kernel": measure(kernel_fn, x, None, ("nngp", "ntk"), repeats=2)}}


def eqntk_myrtle(quick: bool) -> dict:
    return _eqntk(quick, batched=False)


def nt_myrtle(quick: bool) -> dict:
    return _nt(quick, batched=False)


def eqntk_myrtle_batch(quick: bool) -> dict:
    return _eqntk(quick, batched=True)


def nt_myrtle_batch(quick: bool) -> dict:
    return _nt(quick, batched=True)


def _case(name: str, description: str) -> Case:
    target = Target(ratio=1.0, first=1.0, memory=True)
    return Case(
        name=f"notebook.{name}",
        module=__name__,
        eqntk=f"eqntk_{name}",
        nt=f"nt_{name}",
        rows=(Row(f"notebook.{name}", "kernel", "kernel", target=target),),
        description=description,
        timeout_s=3600.0,
    )


CASES = (
    _case("myrtle", "Myrtle-5 on 3x16x16, 32 images, x2=None, eager kernel_fn calls"),
    _case("myrtle_batch", "the same through eqntk.batch / nt.batch, tiles of 8"),
)
