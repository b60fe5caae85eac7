"""Fit `W_std`, `b_std` and the observation noise of an infinite network by maximising the GP
marginal likelihood, on scikit-learn's diabetes regression data.

The NNGP kernel of a network is a differentiable function of its hyperparameters (they are array
leaves of the layers), so the log marginal likelihood
[`eqntk.dynamics.marginal_log_likelihood`][] can be maximised with gradients through
[`eqntk.limit`][], here with optax's Adam. The test error of the GP posterior mean is printed
before and after.

    python examples/hyperparameter_fitting.py
"""

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
from sklearn.datasets import load_diabetes

import eqntk
from eqntk import nn


def load_data(n_train: int, seed: int = 0):
    """The diabetes data (442 patients, 10 features), standardised, split at random."""
    x, y = load_diabetes(return_X_y=True)
    order = np.random.default_rng(seed).permutation(len(y))
    train, test = order[:n_train], order[n_train:]
    x = (x - x[train].mean(0)) / x[train].std(0)
    y = (y - y[train].mean()) / y[train].std()
    as_array = lambda a: jnp.asarray(a, dtype=jnp.result_type(float))
    return as_array(x[train]), as_array(y[train, None]), as_array(x[test]), as_array(y[test, None])


def network(W_std, b_std, depth: int) -> nn.Sequential:
    """A ReLU network with `depth` hidden layers; its widths do not matter for the kernel."""
    keys = jr.split(jr.key(0), depth + 1)
    layers: list = []
    n_in = 10
    for key in keys[:-1]:
        layers += [nn.Dense(n_in, 64, W_std, b_std, key=key), nn.Relu()]
        n_in = 64
    layers.append(nn.Dense(n_in, 1, W_std, b_std, key=keys[-1]))
    return nn.Sequential(layers)


def unpack(params: dict) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The hyperparameters are optimised as logarithms, so that they stay positive."""
    return jnp.exp(params["log_W_std"]), jnp.exp(params["log_b_std"]), jnp.exp(params["log_noise"])


def negative_log_likelihood(params: dict, x, y, depth: int) -> jax.Array:
    W_std, b_std, noise = unpack(params)
    k = eqntk.limit(network(W_std, b_std, depth))(x, get="nngp")
    # The noise is the variance of the observations, added to the kernel's diagonal as is.
    return -eqntk.dynamics.marginal_log_likelihood(k, y, noise, diag_reg_absolute_scale=True)


def test_error(params: dict, x_train, y_train, x_test, y_test, depth: int) -> float:
    """Mean squared error of the GP posterior mean on the test set (targets have variance 1)."""
    W_std, b_std, noise = unpack(params)
    kernel_fn = eqntk.limit(network(W_std, b_std, depth))
    predictor = eqntk.dynamics.gp_inference(
        kernel_fn(x_train, get="nngp"), y_train, noise, diag_reg_absolute_scale=True
    )
    mean = predictor(kernel_fn(x_test, x_train, get="nngp"), get="nngp").mean
    return float(jnp.mean((mean - y_test) ** 2))


def main(n_train: int = 300, steps: int = 200, depth: int = 2, learning_rate: float = 0.05):
    """Fit the hyperparameters; return the likelihoods, test errors and fitted values."""
    x_train, y_train, x_test, y_test = load_data(n_train)
    dtype = x_train.dtype
    params = {
        name: jnp.log(jnp.asarray(value, dtype))
        for name, value in (("log_W_std", 1.0), ("log_b_std", 1.0), ("log_noise", 1.0))
    }
    optimiser = optax.adam(learning_rate)
    loss_and_grad = jax.jit(jax.value_and_grad(negative_log_likelihood), static_argnums=3)

    @jax.jit
    def update(grads, state, params):
        updates, state = optimiser.update(grads, state)
        return optax.apply_updates(params, updates), state

    before = test_error(params, x_train, y_train, x_test, y_test, depth)
    state = optimiser.init(params)
    history = []
    for step in range(steps):
        loss, grads = loss_and_grad(params, x_train, y_train, depth)
        history.append(-float(loss))
        # optax mixes its int32 step count with floats; allow that promotion here.
        with jax.numpy_dtype_promotion("standard"):
            params, state = update(grads, state, params)
        if step % max(1, steps // 5) == 0:
            print(f"step {step:4d}  log marginal likelihood {history[-1]:9.2f}")
    history.append(-float(negative_log_likelihood(params, x_train, y_train, depth)))
    after = test_error(params, x_train, y_train, x_test, y_test, depth)
    W_std, b_std, noise = (float(v) for v in unpack(params))
    print(f"fitted W_std {W_std:.3f}, b_std {b_std:.3f}, noise variance {noise:.3f}")
    print(f"log marginal likelihood: {history[0]:.2f} -> {history[-1]:.2f}")
    print(f"test mean squared error: {before:.3f} -> {after:.3f}  (targets have variance 1)")
    return {
        "log_likelihood": history,
        "test_error_before": before,
        "test_error_after": after,
        "W_std": W_std,
        "b_std": b_std,
        "noise": noise,
    }


if __name__ == "__main__":
    main()
