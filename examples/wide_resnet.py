"""A Wide ResNet, finite and infinitely wide: the network of the neural-tangents README.

The same `eqntk.nn` model runs as a finite network (`jax.vmap(model)(x)`) and gives the NNGP and
NTK kernels of its infinite-width limit (`eqntk.limit(model)(x1, x2)`).

    python examples/wide_resnet.py
"""

import time

import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import PRNGKeyArray

import eqntk
from eqntk import nn


def wide_resnet_block(
    in_channels: int,
    channels: int,
    strides: tuple[int, int] = (1, 1),
    channel_mismatch: bool = False,
    *,
    key: PRNGKeyArray,
) -> nn.Sequential:
    """A residual block: two `Relu`-`Conv` layers, plus a shortcut.

    The shortcut is the identity, or a strided `Conv` when the block changes the number of
    channels or the resolution (`channel_mismatch`).
    """
    k1, k2, k3 = jr.split(key, 3)
    main = nn.Sequential(
        [
            nn.Relu(),
            nn.Conv(in_channels, channels, (3, 3), strides, padding="SAME", key=k1),
            nn.Relu(),
            nn.Conv(channels, channels, (3, 3), padding="SAME", key=k2),
        ]
    )
    shortcut = (
        nn.Conv(in_channels, channels, (3, 3), strides, padding="SAME", key=k3)
        if channel_mismatch
        else nn.Identity()
    )
    return nn.residual(main, shortcut)


def wide_resnet_group(
    n: int, in_channels: int, channels: int, strides: tuple[int, int] = (1, 1), *, key: PRNGKeyArray
) -> nn.Sequential:
    """`n` residual blocks; the first one changes the channels and the resolution."""
    keys = jr.split(key, n)
    blocks = [wide_resnet_block(in_channels, channels, strides, True, key=keys[0])]
    blocks += [wide_resnet_block(channels, channels, key=k) for k in keys[1:]]
    return nn.Sequential(blocks)


def wide_resnet(
    block_size: int,
    k: int,
    num_classes: int,
    in_channels: int = 3,
    image_size: int = 32,
    *,
    key: PRNGKeyArray,
) -> nn.Sequential:
    """A Wide ResNet with three groups of `block_size` blocks of widths 16k, 32k, 64k.

    The last two groups halve the resolution; an average pool over the remaining
    `image_size / 4` positions and a `Dense` readout follow.
    """
    keys = jr.split(key, 5)
    widths = (16 * k, 32 * k, 64 * k)
    return nn.Sequential(
        [
            nn.Conv(in_channels, 16, (3, 3), padding="SAME", key=keys[0]),
            wide_resnet_group(block_size, 16, widths[0], key=keys[1]),
            wide_resnet_group(block_size, widths[0], widths[1], (2, 2), key=keys[2]),
            wide_resnet_group(block_size, widths[1], widths[2], (2, 2), key=keys[3]),
            nn.AvgPool((image_size // 4, image_size // 4)),
            nn.Flatten(),
            nn.Dense(widths[2], num_classes, W_std=1.0, b_std=0.0, key=keys[4]),
        ]
    )


def main() -> None:
    image_size = 16
    model = wide_resnet(block_size=1, k=1, num_classes=10, image_size=image_size, key=jr.key(0))
    x1 = jr.normal(jr.key(1), (3, 3, image_size, image_size))
    x2 = jr.normal(jr.key(2), (2, 3, image_size, image_size))

    outputs = jax.vmap(model)(x1)
    print(f"finite network: outputs of shape {outputs.shape}")

    start = time.perf_counter()
    kernel_fn = eqntk.limit(model)
    nngp, ntk = kernel_fn(x1, x2, get=("nngp", "ntk"))
    print(f"infinite network ({time.perf_counter() - start:.1f} s):")
    print("NNGP\n", nngp, "\nNTK\n", ntk)
    assert nngp.shape == ntk.shape == (3, 2) and bool(jnp.all(jnp.isfinite(ntk)))


if __name__ == "__main__":
    main()
