"""The digits demo behind `eqntk demo`: infinite networks against trained finite ones."""

import pathlib
import time
from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import matplotlib
import numpy as np
import optax
from sklearn.datasets import load_digits

from . import dynamics, nn
from ._cli import _count
from .limits import limit


matplotlib.use("Agg")

Log = Callable[[str], None]


def load_data(n_train: int, n_test: int, seed: int):
    """Digits as channel-first images `(N, 1, 8, 8)`, standardised, and centred one-hot labels."""
    digits: Any = load_digits()  # a Bunch; the stubs also allow a tuple
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


def _accuracy(outputs, labels) -> float:
    return round(float(np.mean(np.argmax(outputs, axis=1) == labels)), 4)


def kernel_accuracy(model, x_train, y_train, x_test, labels, log: Log) -> dict[str, float]:
    """Test accuracy of exact GP inference with the NNGP and the NTK of `model`'s limit."""
    kernel_fn = eqx.filter_jit(limit(model))
    n_train, n_test = len(x_train), len(x_test)
    log(f"NNGP and NTK between the {n_train} training images ...")
    k_dd = kernel_fn(x_train, None, get=("nngp", "ntk"))
    log(f"NNGP and NTK between {n_test} test and {n_train} training images ...")
    k_td = kernel_fn(x_test, x_train, get=("nngp", "ntk"))
    log("exact Gaussian-process inference with each kernel ...")
    predictor = dynamics.gp_inference(k_dd, y_train, diag_reg=1e-4, get=("nngp", "ntk"))
    means = predictor(k_td, get=("nngp", "ntk"))
    return {name: _accuracy(getattr(means, name).mean, labels) for name in ("nngp", "ntk")}


def _trainer(static, optimiser: optax.GradientTransformation, batch_size: int):
    """One compiled Adam step on a random minibatch, shared by every network of an ensemble.

    The steps run from a Python loop, not `lax.scan`: XLA:CPU runs the convolution gradients
    inside a loop body tens of times slower than in a plain compiled call.
    """

    def loss(params, x, y):
        return jnp.mean((jax.vmap(eqx.combine(params, static))(x) - y) ** 2)

    @jax.jit
    def step(params, state, key, x_train, y_train):
        key, subkey = jr.split(key)
        batch = jr.choice(subkey, x_train.shape[0], (batch_size,), replace=False)
        value, grads = jax.value_and_grad(loss)(params, x_train[batch], y_train[batch])
        updates, state = optimiser.update(grads, state, params)
        return optax.apply_updates(params, updates), state, key, value

    @jax.jit
    def predict(params, x):
        return jax.vmap(eqx.combine(params, static))(x)

    return step, predict


def finite_accuracy(
    make: Callable,
    ensemble: int,
    steps: int,
    batch_size: int,
    learning_rate: float,
    key,
    x_train,
    y_train,
    x_test,
    labels,
    log: Log,
) -> dict:
    """Test accuracies of `ensemble` finite networks trained with Adam on the MSE, each alone
    and of their mean prediction."""
    keys = jr.split(key, ensemble)
    shapes = eqx.filter_eval_shape(make, keys[0])
    static = eqx.partition(shapes, lambda leaf: isinstance(leaf, jax.ShapeDtypeStruct))[1]
    optimiser = optax.adam(learning_rate)

    # One compiled call rather than dozens of small eager ones, each compiled on first use.
    @eqx.filter_jit
    def init(key):
        params = eqx.filter(make(key), eqx.is_inexact_array)
        return params, optimiser.init(params)

    # Networks are trained one after the other: an ensemble vmapped through the convolutions
    # becomes a grouped convolution, which XLA:CPU runs slower than the networks in turn.
    step, predict = _trainer(static, optimiser, min(batch_size, len(x_train)))
    report_every = max(1, steps // 4)
    outputs = []
    for i, network_key in enumerate(keys):
        init_key, batch_key = jr.split(network_key)
        params, state = init(init_key)
        start = time.perf_counter()
        for done in range(1, steps + 1):
            params, state, batch_key, loss = step(params, state, batch_key, x_train, y_train)
            if done % report_every == 0 or done == steps:
                log(
                    f"finite network {i + 1}/{ensemble}: step {done}/{steps}, "
                    f"minibatch loss {float(loss):.4f} ({time.perf_counter() - start:.1f} s)"
                )
        outputs.append(predict(params, x_test))
    return {
        "finite": _accuracy(jnp.mean(jnp.stack(outputs), axis=0), labels),
        "finite_networks": [_accuracy(output, labels) for output in outputs],
    }


def run_demo(
    archs: Sequence[str],
    n_train: int,
    n_test: int,
    depth: int,
    width: int,
    channels: int,
    ensemble: int,
    steps: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
    out: pathlib.Path,
    log: Log,
) -> dict:
    """Run the demo; return the accuracy table and write `accuracy.png` to `out`."""
    log(f"loading {n_train} training and {n_test} test digits ...")
    x_train, y_train, x_test, labels = load_data(n_train, n_test, seed)
    key = jr.key(seed)
    accuracy = {}
    seconds = {}
    for arch in archs:
        size, kind = (width, "width") if arch == "fcn" else (channels, "channels")

        def make(k, arch=arch, size=size):
            return make_network(arch, depth, size, k)

        def arch_log(message: str, arch=arch) -> None:
            log(f"{arch}: {message}")

        start = time.perf_counter()
        model = eqx.filter_jit(make)(key)  # one compiled call, not many small eager ones
        result: dict[str, Any] = {}
        result |= kernel_accuracy(model, x_train, y_train, x_test, labels, arch_log)
        kernel_seconds = time.perf_counter() - start
        arch_log(f"infinite network: NNGP {result['nngp']:.4f}, NTK {result['ntk']:.4f}")
        arch_log(
            f"training {_count(ensemble, 'finite network')} of {kind} {size}, "
            f"{steps} Adam steps each on minibatches of {min(batch_size, n_train)} ..."
        )
        start = time.perf_counter()
        # optax mixes its int32 step count with floats; allow that promotion here.
        with jax.numpy_dtype_promotion("standard"):
            result |= finite_accuracy(
                make,
                ensemble,
                steps,
                batch_size,
                learning_rate,
                jr.fold_in(key, 1),
                x_train,
                y_train,
                x_test,
                labels,
                arch_log,
            )
        seconds[arch] = {
            "infinite": round(kernel_seconds, 1),
            "finite": round(time.perf_counter() - start, 1),
        }
        each = ", ".join(f"{a:.4f}" for a in result["finite_networks"])
        arch_log(f"finite networks: {each}; ensemble {result['finite']:.4f}")
        accuracy[arch] = result
    log(f"plotting {out / 'accuracy.png'} ...")
    _plot(accuracy, ensemble, out)
    return {"n_train": n_train, "n_test": n_test, "accuracy": accuracy, "seconds": seconds}


def _plot(accuracy: dict, ensemble: int, out: pathlib.Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 3.5))
    names = ("nngp", "ntk", "finite_one", "finite")
    labels = (
        "NNGP (infinite)",
        "NTK (infinite)",
        "one finite network (mean)",
        f"ensemble of {_count(ensemble, 'finite network')}",
    )
    width = 0.8 / len(names)
    positions = np.arange(len(accuracy))
    for i, (name, label) in enumerate(zip(names, labels)):
        if name == "finite_one":
            values = [float(np.mean(accuracy[a]["finite_networks"])) for a in accuracy]
        else:
            values = [accuracy[a][name] for a in accuracy]
        offset = width * (i - (len(names) - 1) / 2)
        bars = ax.bar(positions + offset, values, width=width, label=label)
        ax.bar_label(bars, fmt="%.3f", fontsize=7, padding=2)
    ax.set_xticks(positions, [a.upper() for a in accuracy])
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("test accuracy")
    ax.set_title("Digits: infinite networks against trained finite ones")
    # Outside the axes, so that no bar is hidden behind it.
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    fig.savefig(out / "accuracy.png", dpi=120, bbox_inches="tight")
    plt.close(fig)
