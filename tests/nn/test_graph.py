"""`Aggregate`: graph networks against wide finite networks; dense and edge-list graphs; errors."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import eqntk
from eqntk import nn
from tests.helpers import mc_kernels, relative_error


class _Graphed(eqx.Module):
    """A network called on `(x, graph)` pairs, so that Monte Carlo helpers can vmap over both."""

    model: nn.Sequential

    def __call__(self, inputs, *, key=None):
        x, graph = inputs
        return nn.with_inputs(self.model, pattern=graph)(x)


def _gnn(key, width=64):
    k1, k2, k3 = jr.split(key, 3)
    return nn.Sequential(
        [
            nn.Dense(3, width, W_std=1.2, b_std=0.1, key=k1),
            nn.Relu(),
            nn.Aggregate(),
            nn.Dense(width, width, W_std=1.2, b_std=0.1, key=k2),
            nn.Relu(),
            nn.Aggregate(),
            nn.Flatten(),
            nn.Dense(width * 5, 64, key=k3),
        ]
    )


def _graphs(key, n, v=5):
    return jr.bernoulli(key, 0.4, (n, v, v)).astype(jnp.float64)


@pytest.mark.slow  # the golden graph cases check the rule by default
def test_monte_carlo(getkey):
    x1, x2 = jr.normal(getkey(), (3, 3, 5)), jr.normal(getkey(), (2, 3, 5))
    a1, a2 = _graphs(getkey(), 3), _graphs(getkey(), 2)
    exact = eqntk.limit(_gnn(getkey()))(x1, x2, pattern1=a1, pattern2=a2)
    nngp, ntk = mc_kernels(lambda k: _Graphed(_gnn(k)), getkey(), (x1, a1), (x2, a2), 32)
    # The outputs of one network share its hidden layers, whose empirical kernels (width 64)
    # deviate by ~sqrt(2 / 64) ~ 0.18 and are summed over neighbours; averaged over 32
    # networks that is ~0.03-0.05, so 0.15 is ~3-4 standard errors.
    assert relative_error(nngp, exact.nngp) < 0.15
    assert relative_error(ntk, exact.ntk) < 0.15


def test_edge_lists_match_dense(getkey):
    """Repeated edges add up and negative coordinates are padding."""
    edges = jnp.array(
        [
            [[0, 1], [1, 2], [1, 2], [4, 0], [-1, -1]],
            [[2, 2], [3, 1], [0, 4], [-1, 3], [1, -1]],
        ]
    )
    dense = jnp.zeros((2, 5, 5))
    dense = dense.at[0, 0, 1].add(1).at[0, 1, 2].add(2).at[0, 4, 0].add(1)
    dense = dense.at[1, 2, 2].add(1).at[1, 3, 1].add(1).at[1, 0, 4].add(1)
    x = jr.normal(getkey(), (2, 3, 5))
    kernel_fn = eqntk.limit(_gnn(getkey()))
    k_edges = kernel_fn(x, pattern1=edges)
    k_dense = kernel_fn(x, pattern1=dense)
    np.testing.assert_allclose(k_edges.nngp, k_dense.nngp, rtol=1e-12)
    np.testing.assert_allclose(k_edges.ntk, k_dense.ntk, rtol=1e-12)
    layer = nn.Aggregate()
    for e, d in zip(edges, dense):
        np.testing.assert_allclose(
            nn.with_inputs(layer, pattern=e)(x[0]), nn.with_inputs(layer, pattern=d)(x[0])
        )


def test_one_axis_of_an_image(getkey):
    """Aggregating over one axis leaves the other axis independent."""
    x = jr.normal(getkey(), (2, 3, 4, 5))
    a = _graphs(getkey(), 2, v=5)
    k = eqntk.limit(nn.Aggregate(axes=1))(x, pattern1=a)
    k0 = eqntk.limit(nn.Identity())(x)
    want = jnp.einsum("aji,abxyjl,blk->abxyik", a, k0.nngp, a)
    np.testing.assert_allclose(k.nngp, want, rtol=1e-12)


def test_bad_inputs(getkey):
    x = jr.normal(getkey(), (2, 3, 5))
    kernel_fn = eqntk.limit(_gnn(getkey()))
    with pytest.raises(ValueError, match=r"`pattern1` \(a dense adjacency\) must have the shape"):
        kernel_fn(x, pattern1=jnp.ones((2, 5, 4)))
    with pytest.raises(ValueError, match="`pattern1` must hold one graph per example"):
        kernel_fn(x, pattern1=jnp.ones((3, 5, 5)))
    with pytest.raises(ValueError, match=r"integer edge list\) must have shape"):
        kernel_fn(x, pattern1=jnp.ones((2, 4, 3), int))
    with pytest.raises(ValueError, match="needs the graphs"):
        kernel_fn(x)
    with pytest.raises(ValueError, match="`pattern2` must be None when `x2` is None"):
        kernel_fn(x, pattern1=jnp.ones((2, 5, 5)), pattern2=jnp.ones((2, 5, 5)))
    with pytest.raises(ValueError, match="given together"):
        kernel_fn(x, x, pattern1=jnp.ones((2, 5, 5)))
    jax.block_until_ready(kernel_fn(x, pattern1=jnp.ones((2, 5, 5)), get="nngp"))
