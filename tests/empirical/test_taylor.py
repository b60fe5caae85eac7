"""`linearize` and `taylor_expand`: exactness, error orders, training with optax, ensembles."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
import pytest

import eqntk
from eqntk import nn


def _smooth(key):
    k1, k2, k3 = jr.split(key, 3)
    return nn.Sequential(
        [
            nn.Dense(3, 8, b_std=0.2, key=k1),
            nn.Erf(),
            nn.Dense(8, 8, b_std=0.2, key=k2),
            nn.Erf(),
            nn.Dense(8, 2, key=k3),
        ]
    )


_call = eqx.filter_jit(lambda model, x: model(x))
_empirical_kernel = eqx.filter_jit(eqntk.empirical_kernel)


def _weights(leaf):
    # Weights and biases; the 0-d hyperparameters (W_std, b_std) are read through
    # `stop_gradient`, so perturbing them is not a move in parameter space.
    return eqx.is_inexact_array(leaf) and leaf.ndim > 0


def _perturbed(expansion, direction, eps):
    params = jax.tree.map(lambda p, d: p + eps * d, expansion.params, direction)
    return eqx.tree_at(lambda e: e.params, expansion, params)


def _direction(expansion, key):
    leaves, tree = jax.tree.flatten(expansion.params)
    keys = jr.split(key, len(leaves))
    return jax.tree.unflatten(tree, [jr.normal(k, p.shape) for k, p in zip(keys, leaves)])


def _model_at(expansion, direction, eps):
    params = jax.tree.map(lambda p, d: p + eps * d, expansion.params, direction)
    return eqx.combine(params, eqx.filter(expansion.model, lambda v: not _weights(v)))


def test_exact_for_a_model_linear_in_its_parameters(getkey):
    model = nn.Dense(3, 4, b_std=0.5, key=getkey())  # y = W x + b is linear in (W, b)
    lin = eqntk.linearize(model, filter=_weights)
    direction = _direction(lin, getkey())
    x = jr.normal(getkey(), (3,))
    for eps in (0.0, 0.3, 5.0):
        np.testing.assert_allclose(
            _call(_perturbed(lin, direction, eps), x),
            _call(_model_at(lin, direction, eps), x),
            rtol=1e-12,
        )


@pytest.mark.parametrize("degree", [1, 2])
def test_error_order(degree, getkey):
    # The remainder of a degree-d expansion is O(eps^(d+1)): halving eps divides it by 2^(d+1).
    model = _smooth(getkey())
    expansion = eqntk.taylor_expand(model, degree, filter=_weights)
    direction = _direction(expansion, getkey())
    x = jr.normal(getkey(), (3,))
    errors = [
        float(
            jnp.abs(
                _call(_perturbed(expansion, direction, e), x)
                - _call(_model_at(expansion, direction, e), x)
            ).max()
        )
        for e in (2e-2, 1e-2)
    ]
    ratio = errors[0] / errors[1]
    assert 0.8 * 2 ** (degree + 1) < ratio < 1.2 * 2 ** (degree + 1), ratio


def test_degree_one_is_linearize_and_degree_zero_is_constant(getkey):
    model = _smooth(getkey())
    lin = eqntk.linearize(model, filter=_weights)
    taylor = eqntk.taylor_expand(model, 1, filter=_weights)
    direction = _direction(lin, getkey())
    x = jr.normal(getkey(), (3,))
    np.testing.assert_array_equal(
        _call(_perturbed(lin, direction, 0.1), x), _call(_perturbed(taylor, direction, 0.1), x)
    )
    constant = eqntk.taylor_expand(model, 0, filter=_weights)
    np.testing.assert_allclose(
        _call(_perturbed(constant, direction, 0.1), x), _call(model, x), rtol=1e-12
    )
    # At the expansion point the linearised network has the network's NTK.
    xs = jr.normal(getkey(), (4, 3))
    np.testing.assert_allclose(_empirical_kernel(lin, xs), _empirical_kernel(model, xs), rtol=1e-10)


def _train(expansion, x, y, steps=20):
    optimiser = optax.sgd(5e-2)
    state = optimiser.init(eqx.filter(expansion, eqx.is_inexact_array))

    def loss(m):
        return jnp.mean((jax.vmap(m)(x) - y) ** 2)

    @eqx.filter_jit
    def step(m, state):
        value, grads = eqx.filter_value_and_grad(loss)(m)
        updates, state = optimiser.update(grads, state, eqx.filter(m, eqx.is_inexact_array))
        return eqx.apply_updates(m, updates), state, value

    losses = []
    for _ in range(steps):
        expansion, state, value = step(expansion, state)
        losses.append(float(value))
    return expansion, losses


def test_trains_with_optax_and_keeps_the_expansion_point(getkey):
    model = _smooth(getkey())
    x, y = jr.normal(getkey(), (8, 3)), jr.normal(getkey(), (8, 2))
    trained, losses = _train(eqntk.linearize(model), x, y)
    assert losses[-1] < 0.9 * losses[0], losses
    assert eqx.tree_equal(trained.model, model)
    assert not eqx.tree_equal(trained.params, eqx.filter(model, eqx.is_inexact_array))


def test_ensemble(getkey):
    ensemble = eqx.filter_vmap(_smooth)(jr.split(getkey(), 3))
    lins = eqx.filter_vmap(eqntk.linearize)(ensemble)
    x = jr.normal(getkey(), (5, 3))
    outputs = eqx.filter_jit(eqx.filter_vmap(lambda m: jax.vmap(m)(x)))
    out, expected = outputs(lins), outputs(ensemble)
    np.testing.assert_allclose(out, expected, rtol=1e-12)
    y = jr.normal(getkey(), (3, 5, 2))

    @eqx.filter_jit
    def loss(ms):
        return jnp.mean((eqx.filter_vmap(lambda m: jax.vmap(m)(x))(ms) - y) ** 2)

    grads = eqx.filter_grad(loss)(lins)
    lins2 = eqx.apply_updates(lins, jax.tree.map(lambda g: -0.1 * g, grads))
    assert loss(lins2) < loss(lins)
    assert eqx.tree_equal(lins2.model, ensemble)


def test_bad_inputs(getkey):
    with pytest.raises(ValueError, match="`degree` must be a non-negative integer"):
        eqntk.taylor_expand(_smooth(getkey()), -1)
    with pytest.raises(ValueError, match="has no parameters"):
        eqntk.linearize(nn.Relu())
