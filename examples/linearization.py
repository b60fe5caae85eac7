"""A finite network and its linearisation in the parameters, trained side by side.

[`eqntk.linearize`][] returns $f_{\\theta_0}(x) + J_{\\theta_0}(x)(\\theta - \\theta_0)$ as an
Equinox module that trains with optax like any other. The wider the network, the closer its
training follows that of its linearisation (the lazy, NTK regime); this script trains both with
the same optimiser from the same initialisation and plots their training losses.

    python examples/linearization.py
"""

import pathlib

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import matplotlib
import optax


matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import eqntk  # noqa: E402
from eqntk import nn  # noqa: E402


def make_data(n: int, dim: int, key: jax.Array):
    """Inputs on the unit sphere and a smooth nonlinear target of them."""
    k_x, k_w = jr.split(key)
    x = jr.normal(k_x, (n, dim))
    x = x / jnp.linalg.norm(x, axis=1, keepdims=True)
    y = jnp.sin(2 * x @ jr.normal(k_w, (dim, 1)))
    return x, y


def network(dim: int, width: int, key: jax.Array) -> nn.Sequential:
    k1, k2 = jr.split(key)
    return nn.Sequential(
        [
            nn.Dense(dim, width, W_std=1.5, b_std=0.1, key=k1),
            nn.Relu(),
            nn.Dense(width, 1, W_std=1.5, b_std=0.1, key=k2),
        ]
    )


@eqx.filter_jit
def training_curve(model, x, y, learning_rate: float, steps: int) -> jax.Array:
    """The loss $\\frac{1}{2n}\\|f - y\\|^2$ before each of `steps` full-batch SGD steps."""
    params, static = eqx.partition(model, eqx.is_inexact_array)
    optimiser = optax.sgd(learning_rate)

    def loss(params):
        return 0.5 * jnp.mean((jax.vmap(eqx.combine(params, static))(x) - y) ** 2)

    def step(carry, _):
        params, state = carry
        value, grads = jax.value_and_grad(loss)(params)
        updates, state = optimiser.update(grads, state)
        return (optax.apply_updates(params, updates), state), value

    _, losses = jax.lax.scan(step, (params, optimiser.init(params)), length=steps)
    return losses


def main(
    widths: tuple[int, ...] = (32, 512, 4096),
    n: int = 64,
    dim: int = 4,
    steps: int = 500,
    learning_rate: float = 1.0,
    seed: int = 0,
    out: str | pathlib.Path = "examples-output/linearization",
) -> dict:
    """Train each width and its linearisation; plot the curves.

    Returns, per width, both loss curves and their largest distance relative to the initial
    loss, $\\max_t |L_\\text{finite}(t) - L_\\text{linear}(t)| / L(0)$.
    """
    k_data, k_model = jr.split(jr.key(seed))
    x, y = make_data(n, dim, k_data)
    results = {}
    # optax mixes its int32 step count with floats; allow that promotion here.
    with jax.numpy_dtype_promotion("standard"):
        for width in widths:
            model = network(dim, width, jr.fold_in(k_model, width))
            finite = training_curve(model, x, y, learning_rate, steps)
            linear = training_curve(eqntk.linearize(model), x, y, learning_rate, steps)
            distance = float(jnp.max(jnp.abs(finite - linear)) / finite[0])
            results[width] = {"finite": finite, "linear": linear, "distance": distance}
            print(
                f"width {width:5d}: final loss finite {float(finite[-1]):.4f}, "
                f"linearised {float(linear[-1]):.4f}; largest gap {distance:.3f} of L(0)"
            )

    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4))
    colours = plt.cm.plasma(jnp.linspace(0, 0.8, len(widths)))
    for width, colour in zip(widths, colours):
        ax.plot(results[width]["finite"], color=colour, label=f"width {width}: network")
        ax.plot(results[width]["linear"], color=colour, linestyle="--", label="linearised")
    ax.set_yscale("log")
    ax.set_xlabel("SGD step")
    ax.set_ylabel("training loss")
    ax.set_title("A network (solid) and its linearisation (dashed), trained side by side")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=7, ncol=len(widths))
    fig.tight_layout()
    fig.savefig(out / "linearization.png", dpi=120)
    plt.close(fig)
    return results


if __name__ == "__main__":
    main()
