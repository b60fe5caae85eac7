"""Small random problems for the dynamics tests."""

import jax.numpy as jnp
import jax.random as jr


def problem(key, n=7, m=3, k=2, d=4, jitter=0.1):
    """Positive-definite NNGP-like and NTK-like kernels on `n` train and `m` test points.

    The kernels are Gram matrices of random features of the train and test inputs together,
    so that the joint (train + test) kernels are positive semi-definite, as real ones are.
    """
    k1, k2, k3, k4 = jr.split(key, 4)
    x = jr.normal(k1, (n + m, d))
    feats = jnp.concatenate([x, jnp.tanh(x @ jr.normal(k2, (d, 2 * d)))], axis=1)
    nngp = x @ x.T / d + 0.5 + jitter * jnp.eye(n + m)
    ntk = feats @ feats.T / d + nngp
    y = jr.normal(k3, (n, k))
    parts = {}
    for name, full in (("nngp", nngp), ("ntk", ntk)):
        parts[name] = (full[:n, :n], full[n:, :n], full[n:, n:])
    return parts, y, jr.normal(k4, (n + m, k))
