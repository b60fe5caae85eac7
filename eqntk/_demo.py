"""The digits demo behind `eqntk demo`: infinite networks against trained finite ones."""

import pathlib
from collections.abc import Callable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import matplotlib
import numpy as np
import optax
from sklearn.datasets import load_digits

from . import dynamics, nn
from .limits import limit


matplotlib.use("Agg")


def load_data(n_train: int, n_test: int, seed: int):
    """Digits as channel-first images `(N, 1, 8, 8)`, standardised, and centred one-hot labels."""
    digits = load_digits()
    n_total = len(digits.target)
    if n_train + n_test > n_total:
        raise ValueError(
            f"`n_train + n_test` must be at most {n_total} (the digits set), "
            f"got {n_train} + {n_test}."
        )
    order = np.random.default_rng(seed).permutation(n_total)
    images = digits.images.astype(np.float32)[:, None] / 16.0
    images = (images - images[order[:n_train]].mean()) / images[order[:n_train]].std()
    onehot = np.eye(10, dtype=np.float32)[digits.target]
    targets = onehot - 0.1  # centred: the mean prediction of a zero-mean prior is right
    train, test = order[:n_train], order[n_train : n_train + n_test]
    return (
        jnp.asarray(images[train]),
        jnp.asarray(targets[train]),
        jnp.asarray(images[test]),
        digits.target[test],
    )


def make_network(arch: str, depth: int, width: int, key: jax.Array) -> nn.Sequential:
    """The demo's architectures: a ReLU MLP on flattened images, or a ReLU CNN."""
    keys = jr.split(key, depth + 1)
    W_std, b_std = 2**0.5, 0.05
    if arch == "fcn":
        layers: list = [nn.Flatten()]
        n_in = 64
        for i in range(depth):
            layers += [nn.Dense(n_in, width, W_std, b_std, key=keys[i]), nn.Relu()]
            n_in = width
        layers.append(nn.Dense(n_in, 10, W_std, b_std, key=keys[-1]))
        return nn.Sequential(layers)
    layers = []
    n_in = 1
    for i in range(depth):
        layers += [
            nn.Conv(n_in, width, (3, 3), padding="SAME", W_std=W_std, b_std=b_std, key=keys[i]),
            nn.Relu(),
        ]
        n_in = width
    layers += [nn.Flatten(), nn.Dense(n_in * 64, 10, W_std, b_std, key=keys[-1])]
    return nn.Sequential(layers)


def kernel_accuracy(model, x_train, y_train, x_test, labels) -> dict[str, float]:
    """Test accuracy of exact GP inference with the NNGP and the NTK of `model`'s limit."""
    kernel_fn = eqx.filter_jit(limit(model))
    k_dd = kernel_fn(x_train, None, get=("nngp", "ntk"))
    k_td = kernel_fn(x_test, x_train, get=("nngp", "ntk"))
    predictor = dynamics.gp_inference(k_dd, y_train, diag_reg=1e-4, get=("nngp", "ntk"))
    means = predictor(k_td, get=("nngp", "ntk"))
    return {
        name: float(np.mean(np.argmax(getattr(means, name).mean, axis=1) == labels))
        for name in ("nngp", "ntk")
    }


def finite_accuracy(make: Callable, n: int, steps: int, key, x_train, y_train, x_test, labels):
    """Test accuracy of the mean prediction of `n` finite networks trained with Adam on MSE."""
    optimiser = optax.adam(3e-3)

    def train(key):
        model = make(key)
        params, static = eqx.partition(model, eqx.is_inexact_array)

        def loss(p):
            return jnp.mean((jax.vmap(eqx.combine(p, static))(x_train) - y_train) ** 2)

        def step(carry, _):
            params, state = carry
            grads = jax.grad(loss)(params)
            updates, state = optimiser.update(grads, state, params)
            return (optax.apply_updates(params, updates), state), None

        (params, _), _ = jax.lax.scan(step, (params, optimiser.init(params)), length=steps)
        return jax.vmap(eqx.combine(params, static))(x_test)

    predictions = jnp.mean(jnp.stack([eqx.filter_jit(train)(k) for k in jr.split(key, n)]), 0)
    return float(np.mean(np.argmax(predictions, axis=1) == labels))


def run_demo(
    archs: Sequence[str],
    n_train: int,
    n_test: int,
    depth: int,
    width: int,
    channels: int,
    ensemble: int,
    steps: int,
    seed: int,
    out: pathlib.Path,
    log: Callable[[str], None],
) -> dict:
    """Run the demo; return the accuracy table and write `accuracy.png` to `out`."""
    x_train, y_train, x_test, labels = load_data(n_train, n_test, seed)
    key = jr.key(seed)
    accuracy = {}
    for arch in archs:
        size = width if arch == "fcn" else channels

        def make(k, arch=arch, size=size):
            return make_network(arch, depth, size, k)

        log(f"[{arch}] NNGP and NTK of the infinite network, {n_train} x {n_train} kernels ...")
        result = kernel_accuracy(make(key), x_train, y_train, x_test, labels)
        log(f"[{arch}] training {ensemble} finite networks of width {size} for {steps} steps ...")
        # optax mixes its int32 step count with floats; allow that promotion here.
        with jax.numpy_dtype_promotion("standard"):
            result["finite"] = finite_accuracy(
                make, ensemble, steps, jr.fold_in(key, 1), x_train, y_train, x_test, labels
            )
        log(
            f"[{arch}] NNGP {result['nngp']:.3f}  NTK {result['ntk']:.3f}  "
            f"finite {result['finite']:.3f}"
        )
        accuracy[arch] = result
    _plot(accuracy, out)
    return {"n_train": n_train, "n_test": n_test, "accuracy": accuracy}


def _plot(accuracy: dict, out: pathlib.Path) -> None:
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    names = ("nngp", "ntk", "finite")
    labels = ("NNGP (infinite)", "NTK (infinite)", "finite ensemble")
    for i, (name, label) in enumerate(zip(names, labels)):
        values = [accuracy[a][name] for a in accuracy]
        ax.bar(np.arange(len(accuracy)) + 0.27 * (i - 1), values, width=0.27, label=label)
    ax.set_xticks(np.arange(len(accuracy)), [a.upper() for a in accuracy])
    ax.set_ylim(0, 1)
    ax.set_ylabel("test accuracy")
    ax.set_title("Digits: infinite networks against trained finite ones")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "accuracy.png", dpi=120)
    plt.close(fig)
