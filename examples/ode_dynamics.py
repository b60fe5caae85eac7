"""Training an infinitely wide network on the cross-entropy loss, as an ODE in function space.

There is no closed form beyond the MSE, but the outputs of an infinitely wide network trained by
gradient descent still follow $df/dt = -\\eta\\,\\Theta\\,\\nabla_f L(f, y)$ with its NTK
$\\Theta$. [`eqntk.dynamics.gradient_descent`][] solves this ODE with diffrax, on the training
and the test set at once. The script classifies scikit-learn's 8x8 digits and plots the
training loss and the accuracies over training time.

    python examples/ode_dynamics.py
"""

import pathlib

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import matplotlib
import numpy as np
from sklearn.datasets import load_digits


matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import eqntk  # noqa: E402
from eqntk import nn  # noqa: E402


def load_data(n_train: int, n_test: int, seed: int = 0):
    """Flattened, standardised digits and one-hot labels."""
    digits = load_digits()
    order = np.random.default_rng(seed).permutation(len(digits.target))
    train, test = order[:n_train], order[n_train : n_train + n_test]
    x = digits.data / 16.0
    x = (x - x[train].mean()) / x[train].std()
    y = np.eye(10)[digits.target]
    as_array = lambda a: jnp.asarray(a, dtype=jnp.result_type(float))
    return as_array(x[train]), as_array(y[train]), as_array(x[test]), as_array(y[test])


def cross_entropy(f: jax.Array, y: jax.Array) -> jax.Array:
    """The mean over examples of the softmax cross-entropy."""
    return -jnp.sum(y * jax.nn.log_softmax(f)) / f.shape[0]


def main(
    n_train: int = 500,
    n_test: int = 500,
    n_times: int = 40,
    seed: int = 0,
    out: str | pathlib.Path = "examples-output/ode_dynamics",
) -> dict:
    """Solve the training ODE and plot loss and accuracy against time.

    Returns the times, the training loss and the train and test accuracies at each time.
    """
    x_train, y_train, x_test, y_test = load_data(n_train, n_test, seed)
    keys = jr.split(jr.key(seed), 3)
    model = nn.Sequential(
        [
            nn.Dense(64, 512, W_std=1.5, b_std=0.05, key=keys[0]),
            nn.Relu(),
            nn.Dense(512, 512, W_std=1.5, b_std=0.05, key=keys[1]),
            nn.Relu(),
            nn.Dense(512, 10, W_std=1.5, b_std=0.05, key=keys[2]),
        ]
    )
    kernel_fn = eqx.filter_jit(eqntk.limit(model))
    ntk_train = kernel_fn(x_train, None, get="ntk")
    ntk_test_train = kernel_fn(x_test, x_train, get="ntk")

    predictor = eqntk.dynamics.gradient_descent(cross_entropy, ntk_train, y_train)
    times = jnp.concatenate([jnp.zeros(1), jnp.logspace(-1, 3, n_times - 1)]).astype(
        ntk_train.dtype
    )
    # The outputs of an infinitely wide network at initialisation are Gaussian with mean zero;
    # starting from zero gives the mean trajectory's linear part exactly.
    trajectory = predictor(
        times, fx_train_0=0.0, fx_test_0=jnp.zeros_like(y_test), k_test_train=ntk_test_train
    )
    loss = jax.vmap(cross_entropy, in_axes=(0, None))(trajectory.fx_train, y_train)

    def accuracy(f, y):
        return jnp.mean(jnp.argmax(f, -1) == jnp.argmax(y, -1), axis=-1)

    train_accuracy = accuracy(trajectory.fx_train, y_train)
    test_accuracy = accuracy(trajectory.fx_test, y_test)
    print(
        f"t = {float(times[-1]):g}: training loss {float(loss[-1]):.4f}, "
        f"accuracy train {float(train_accuracy[-1]):.3f}, test {float(test_accuracy[-1]):.3f}"
    )

    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax_loss.plot(times[1:], loss[1:])
    ax_loss.set_xscale("log")
    ax_loss.set_xlabel(r"training time $\eta t$")
    ax_loss.set_ylabel("cross-entropy (training set)")
    ax_acc.plot(times[1:], train_accuracy[1:], label="train")
    ax_acc.plot(times[1:], test_accuracy[1:], label="test")
    ax_acc.set_xscale("log")
    ax_acc.set_xlabel(r"training time $\eta t$")
    ax_acc.set_ylabel("accuracy")
    ax_acc.legend()
    fig.suptitle("Infinitely wide ReLU network trained on the cross-entropy (diffrax ODE)")
    fig.tight_layout()
    fig.savefig(out / "ode_dynamics.png", dpi=120)
    plt.close(fig)
    return {
        "times": times,
        "loss": loss,
        "train_accuracy": train_accuracy,
        "test_accuracy": test_accuracy,
    }


if __name__ == "__main__":
    main()
