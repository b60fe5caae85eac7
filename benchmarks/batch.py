"""Tiled kernels through `eqntk.batch`, against neural-tangents' `nt.batch`, and device scaling.

- fcn: the FCN case (784 -> 3 x (Dense 512, ReLU) -> Dense 10) on 4096 inputs, `x2=None`
  (eqntk computes only the tiles on and above the diagonal), tiles of 512.
- cnn: the CNN-Flatten case (8 x (Conv 3x3 SAME, ReLU) + Flatten + Dense, 3x32x32) on 512
  inputs, `x2=None`, tiles of 64. (At 4096 inputs neural-tangents would need about two hours
  here; the ratio does not depend on N once the tiles are full.)
- devices: the fcn case on 1, 2, 4 and 8 simulated CPU devices of this 2-core machine: the
  time should stay flat, which measures the overhead of sharding (target under 10%).
"""

from ._data import channel_last, normal
from ._harness import Case, Row, Target
from ._timing import measure
from .cnn import _eqntk_model as _cnn_eqntk_model, _nt_model as _cnn_nt_model
from .fcn import B_STD, DEPTH, W_STD, eqntk_mlp


DEVICE_COUNTS = (1, 2, 4, 8)


def _sizes(name: str, quick: bool) -> tuple[int, int]:
    """(examples, tile size)."""
    if quick:
        return 8, 4
    return {"fcn": (4096, 512), "cnn": (512, 64), "devices": (4096, 512)}[name]


def _eqntk_kernel_fn(name: str, quick: bool):
    import jax.random as jr

    import eqntk

    if name == "cnn":
        side = 8 if quick else 32
        return eqntk.limit(_cnn_eqntk_model("flatten", side, jr.key(0)))
    d, width = (8, 8) if quick else (784, 512)
    return eqntk.limit(eqntk_mlp(d, width, DEPTH, 10, jr.key(0)))


def _inputs(name: str, quick: bool):
    n, _ = _sizes(name, quick)
    if name == "cnn":
        side = 8 if quick else 32
        return normal((n, 3, side, side), 0)
    return normal((n, 8 if quick else 784), 0)


def eqntk_fcn(quick: bool, name: str = "fcn") -> dict:
    import jax.numpy as jnp

    import eqntk

    _, tile = _sizes(name, quick)
    # `batch` jits its tile step itself; the loop over tiles runs on the host.
    batched = eqntk.batch(_eqntk_kernel_fn(name, quick), tile)
    x = jnp.asarray(_inputs(name, quick))
    return {"measurements": {"kernel": measure(batched, x, None, get=("nngp", "ntk"), repeats=2)}}


def nt_fcn(quick: bool, name: str = "fcn") -> dict:
    import jax
    import jax.numpy as jnp
    import neural_tangents as nt
    from neural_tangents import stax

    n, tile = _sizes(name, quick)
    if name == "cnn":
        kernel_fn = _cnn_nt_model("flatten", 8 if quick else 32)
        x = jnp.asarray(channel_last(_inputs(name, quick)))
    else:
        layers = []
        for _ in range(DEPTH):
            layers += [stax.Dense(8, W_std=W_STD, b_std=B_STD), stax.Relu()]
        kernel_fn = stax.serial(*layers, stax.Dense(10, W_std=W_STD, b_std=B_STD))[2]
        x = jnp.asarray(_inputs(name, quick))
    kernel_fn = jax.jit(kernel_fn, static_argnames="get")
    batched = nt.batch(kernel_fn, batch_size=tile, store_on_device=True)
    return {"measurements": {"kernel": measure(batched, x, None, ("nngp", "ntk"), repeats=2)}}


def eqntk_cnn(quick: bool) -> dict:
    return eqntk_fcn(quick, "cnn")


def nt_cnn(quick: bool) -> dict:
    return nt_fcn(quick, "cnn")


def eqntk_devices(quick: bool) -> dict:
    import jax
    import jax.numpy as jnp

    import eqntk

    _, tile = _sizes("devices", quick)
    kernel_fn = _eqntk_kernel_fn("devices", quick)
    x = jnp.asarray(_inputs("devices", quick))
    m = {}
    for count in DEVICE_COUNTS:
        batched = eqntk.batch(kernel_fn, tile, devices=jax.devices()[:count])
        m[f"devices_{count}"] = measure(batched, x, None, get="nngp", repeats=2)
    return {"measurements": m}


CASES = (
    Case(
        name="batch.fcn",
        module=__name__,
        eqntk="eqntk_fcn",
        nt="nt_fcn",
        rows=(Row("batch.fcn 4096^2", "kernel", "kernel", target=Target(ratio=0.6)),),
        description="batched FCN kernel, 4096 x 4096 (x2=None), tiles of 512",
        timeout_s=3600.0,
    ),
    Case(
        name="batch.cnn",
        module=__name__,
        eqntk="eqntk_cnn",
        nt="nt_cnn",
        rows=(Row("batch.cnn 512^2", "kernel", "kernel", target=Target(ratio=0.6)),),
        description="batched CNN-Flatten kernel, 512 x 512 (x2=None), tiles of 64",
        timeout_s=3600.0,
    ),
    Case(
        name="batch.devices",
        module=__name__,
        eqntk="eqntk_devices",
        nt=None,
        rows=tuple(
            Row(
                f"batch.devices: {count} devices",
                f"devices_{count}",
                versus="devices_1",
                target=Target(ratio=1.1),
            )
            for count in DEVICE_COUNTS[1:]
        ),
        description="FCN NNGP 4096 x 4096 through batch on 1, 2, 4, 8 simulated CPU devices",
        env=(("XLA_FLAGS", "--xla_force_host_platform_device_count=8"),),
    ),
)
