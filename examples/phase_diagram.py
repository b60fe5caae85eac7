"""The order-to-chaos phase diagram of deep Erf networks, from their NNGP kernels.

Two inputs enter a deep network with correlation $c_0$. After each `Dense`-`Erf` layer of an
infinitely wide network the NNGP kernel maps their correlation to a new one. In the *ordered*
phase (small `W_std`, large `b_std`) every pair of inputs ends up perfectly correlated,
$c_L \\to 1$: the network forgets its input. In the *chaotic* phase (large `W_std`) the
correlation settles at a fixed point $c^* < 1$: nearby inputs are pulled apart. The whole
(`W_std`, `b_std`) grid is computed at once with `jax.vmap` over the hyperparameters, which are
ordinary array leaves of the layers, and the depth is a `jax.lax.scan` (`nn.Repeat`).

    python examples/phase_diagram.py
"""

import pathlib

import jax
import jax.numpy as jnp
import jax.random as jr
import matplotlib


matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import eqntk  # noqa: E402
from eqntk import nn  # noqa: E402


def deep_erf_network(W_std, b_std, depth: int, width: int = 4) -> nn.Sequential:
    """`depth` blocks of `Dense`-`Erf`; the finite width does not matter for the kernel."""

    def block(key):
        return nn.Sequential([nn.Erf(), nn.Dense(width, width, W_std, b_std, key=key)])

    return nn.Sequential(
        [
            nn.Dense(2, width, W_std, b_std, key=jr.key(0)),
            nn.Repeat(block, depth, key=jr.key(1)),
        ]
    )


def output_correlation(W_std, b_std, depth: int, c0: float) -> jax.Array:
    """The correlation of the outputs on two unit inputs with correlation `c0`."""
    x = jnp.array([[1.0, 0.0], [c0, (1.0 - c0**2) ** 0.5]])
    k = eqntk.limit(deep_erf_network(W_std, b_std, depth))(x, get="nngp")
    return k[0, 1] / jnp.sqrt(k[0, 0] * k[1, 1])


def main(
    n_grid: int = 60,
    depth: int = 50,
    c0: float = 0.5,
    out: str | pathlib.Path = "examples-output/phase_diagram",
) -> dict:
    """Compute the correlation of the outputs over a (`W_std`, `b_std`) grid and plot it.

    Returns the grids and the correlations `c[i, j]` at `W_std[i]`, `b_std[j]`.
    """
    W_stds = jnp.linspace(0.5, 4.0, n_grid)
    # b_std > 0: without a bias, the kernel of a small-W_std network decays to zero with depth.
    b_stds = jnp.linspace(0.05, 1.5, n_grid)
    over_b = jax.vmap(output_correlation, in_axes=(None, 0, None, None))
    grid = jax.jit(jax.vmap(over_b, in_axes=(0, None, None, None)), static_argnums=(2, 3))
    correlations = grid(W_stds, b_stds, depth, c0)

    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    mesh = ax.pcolormesh(W_stds, b_stds, correlations.T, vmin=0, vmax=1, cmap="viridis")
    ax.contour(W_stds, b_stds, correlations.T, levels=[0.99], colors="white")
    fig.colorbar(mesh, label=f"output correlation after {depth} layers")
    ax.set_xlabel(r"$\sigma_w$ (W_std)")
    ax.set_ylabel(r"$\sigma_b$ (b_std)")
    ax.set_title(f"Deep Erf networks, input correlation {c0}: ordered (c = 1) vs chaotic")
    ax.title.set_fontsize(9)
    fig.tight_layout()
    fig.savefig(out / "phase_diagram.png", dpi=120)
    plt.close(fig)
    print(f"wrote {out / 'phase_diagram.png'}")
    return {"W_std": W_stds, "b_std": b_stds, "correlation": correlations}


if __name__ == "__main__":
    main()
