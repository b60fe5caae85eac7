"""Function-space training dynamics: closed-form predictions of the infinite network against
real gradient-descent training of a wide finite one.

A wide network trained by gradient descent on the MSE moves like its linearisation, whose
outputs follow a linear ODE driven by the NTK. [`eqntk.dynamics.gradient_descent_mse`][] solves
it in closed form for any time; started from the finite network's initial outputs and driven by
the infinite network's NTK, it predicts the finite network's outputs throughout training.

    python examples/function_space_dynamics.py
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


def circle(angles: jax.Array) -> jax.Array:
    """Points on the unit circle, as 2-vectors."""
    return jnp.stack([jnp.cos(angles), jnp.sin(angles)], axis=1)


def make_data(n_train: int, n_test: int, key: jax.Array):
    """Noisy samples of $\\sin(3\\theta)$ at random angles, and a grid of test angles."""
    k_angles, k_noise = jr.split(key)
    angles = jr.uniform(k_angles, (n_train,), minval=-jnp.pi, maxval=jnp.pi)
    y_train = jnp.sin(3 * angles)[:, None] + 0.1 * jr.normal(k_noise, (n_train, 1))
    test_angles = jnp.linspace(-jnp.pi, jnp.pi, n_test)
    return angles, y_train, test_angles


def network(width: int, key: jax.Array) -> nn.Sequential:
    k1, k2, k3 = jr.split(key, 3)
    return nn.Sequential(
        [
            nn.Dense(2, width, W_std=1.5, b_std=0.1, key=k1),
            nn.Relu(),
            nn.Dense(width, width, W_std=1.5, b_std=0.1, key=k2),
            nn.Relu(),
            nn.Dense(width, 1, W_std=1.5, b_std=0.1, key=k3),
        ]
    )


@eqx.filter_jit
def train(model, x_train, y_train, x_test, learning_rate, steps: int, every: int):
    """Full-batch gradient descent on the MSE; the test outputs every `every` steps."""
    params, static = eqx.partition(model, eqx.is_inexact_array)
    optimiser = optax.sgd(learning_rate)

    def loss(params):
        f = jax.vmap(eqx.combine(params, static))(x_train)
        return 0.5 * jnp.mean((f - y_train) ** 2)

    def step(carry, _):
        params, state = carry
        updates, state = optimiser.update(jax.grad(loss)(params), state)
        return (optax.apply_updates(params, updates), state), None

    def chunk(carry, _):
        carry, _ = jax.lax.scan(step, carry, length=every)
        return carry, jax.vmap(eqx.combine(carry[0], static))(x_test)

    _, outputs = jax.lax.scan(chunk, (params, optimiser.init(params)), length=steps // every)
    return outputs


def main(
    width: int = 2048,
    n_train: int = 32,
    n_test: int = 200,
    steps: int = 1000,
    n_snapshots: int = 5,
    seed: int = 0,
    out: str | pathlib.Path = "examples-output/function_space_dynamics",
) -> dict:
    r"""Train a finite network and predict its outputs in closed form; plot both.

    Returns the snapshot times, the initial test outputs `(n_test, 1)`, the real and predicted
    test outputs `(n_snapshots, n_test, 1)` and the distance between the two relative to the
    distance travelled in training, $\|f_\text{predicted} - f_\text{real}\| /
    \|f_\text{real} - f_0\|$.
    """
    k_data, k_model = jr.split(jr.key(seed))
    angles, y_train, test_angles = make_data(n_train, n_test, k_data)
    x_train, x_test = circle(angles), circle(test_angles)
    model = network(width, k_model)

    kernel_fn = eqx.filter_jit(eqntk.limit(model))
    ntk_train = kernel_fn(x_train, None, "ntk")
    ntk_test_train = kernel_fn(x_test, x_train, "ntk")
    # A tenth of the largest stable rate: discrete steps then follow the gradient flow closely.
    learning_rate = 0.1 * eqntk.dynamics.max_learning_rate(ntk_train, y_train.size)

    every = steps // n_snapshots
    times = every * jnp.arange(1, n_snapshots + 1)
    # optax mixes its int32 step count with floats; allow that promotion here.
    with jax.numpy_dtype_promotion("standard"):
        real = train(model, x_train, y_train, x_test, learning_rate, steps, every)
    initial = jax.vmap(model)(x_test)
    predictor = eqntk.dynamics.gradient_descent_mse(ntk_train, y_train, learning_rate)
    predicted = predictor(
        times.astype(ntk_train.dtype),
        fx_train_0=jax.vmap(model)(x_train),
        fx_test_0=initial,
        k_test_train=ntk_test_train,
    ).fx_test
    # How far the prediction is from the real outputs, relative to how far training moved them.
    distance = float(jnp.linalg.norm(predicted - real) / jnp.linalg.norm(real - initial))
    print(
        f"width {width}: closed-form prediction vs real training, relative distance {distance:.3f}"
    )

    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    colours = plt.cm.viridis(jnp.linspace(0, 0.9, n_snapshots))
    for i, colour in enumerate(colours):
        ax.plot(test_angles, real[i, :, 0], color=colour, label=f"step {int(times[i])}")
        ax.plot(test_angles, predicted[i, :, 0], color=colour, linestyle="--")
    ax.scatter(angles, y_train[:, 0], color="black", s=12, zorder=3, label="training data")
    ax.set_xlabel(r"input angle $\theta$")
    ax.set_ylabel("network output")
    ax.set_title(f"Real training (solid) vs gradient_descent_mse (dashed), width {width}")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "function_space_dynamics.png", dpi=120)
    plt.close(fig)
    return {
        "times": times,
        "initial": initial,
        "real": real,
        "predicted": predicted,
        "distance": distance,
    }


if __name__ == "__main__":
    main()
