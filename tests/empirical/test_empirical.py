"""`empirical_kernel` and `empirical_ntk_vp` against explicit `jax.jacrev` Jacobian products."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import eqntk
from eqntk import nn
from eqntk.limits._spatial import swap_examples


IMPLEMENTATIONS = ["jacobian_contraction", "ntk_vector_products", "structured_derivatives", "auto"]


class _Attention(eqx.Module):
    """Self-attention on a channel-first sequence `(C, L)`."""

    attention: eqx.nn.MultiheadAttention

    def __call__(self, x):
        x = x.T
        return self.attention(x, x, x).T


class _TwoHeads(eqx.Module):
    """A model with a PyTree output: a shared body and two heads."""

    body: nn.Dense
    head: eqx.nn.Linear
    scale: jax.Array

    def __call__(self, x):
        h = jnp.tanh(self.body(x))
        return {"logits": self.head(h), "extra": (self.scale * h[:2] ** 2,)}


def _models(key):
    k = jr.split(key, 8)
    return {
        "dense": (
            nn.Sequential(
                [
                    nn.Dense(3, 6, b_std=0.1, key=k[0]),
                    nn.Relu(),
                    nn.Dense(6, 4, W_std=1.3, b_std=0.2, key=k[1]),
                ]
            ),
            (3,),
        ),
        "dense_sequence": (
            nn.Sequential(
                [nn.Dense(3, 5, b_std=0.1, key=k[0]), nn.Erf(), nn.Dense(5, 2, key=k[1])]
            ),
            (3, 4),
        ),
        "mlp": (eqx.nn.MLP(3, 2, 5, 2, activation=jnp.tanh, key=k[2]), (3,)),
        "conv": (
            eqx.nn.Sequential(
                [
                    eqx.nn.Conv2d(2, 3, 3, padding="SAME", key=k[3]),
                    eqx.nn.Lambda(jnp.tanh),
                    eqx.nn.Conv2d(
                        3, 4, (2, 3), stride=(2, 1), padding=1, dilation=(1, 2), key=k[4]
                    ),
                    eqx.nn.Lambda(jax.nn.relu),
                    # Grouped convolution: handled through its explicit Jacobian.
                    eqx.nn.Conv2d(4, 2, 1, groups=2, key=k[5]),
                ]
            ),
            (2, 5, 6),
        ),
        "attention": (
            _Attention(eqx.nn.MultiheadAttention(2, 4, key=k[6])),
            (4, 3),
        ),
        "pytree_output": (
            _TwoHeads(
                nn.Dense(3, 5, b_std=0.1, key=k[0]), eqx.nn.Linear(5, 2, key=k[7]), jnp.array(0.7)
            ),
            (3,),
        ),
    }


def _reference(model, x1, x2, trace_axes, diagonal_axes):
    """Explicit Jacobians, contracted in numpy, then traced/diagonalised one axis at a time."""
    params, static = eqx.partition(model, eqx.is_inexact_array)

    def flat_jacobian(x):
        jac = jax.jacrev(lambda p: eqx.combine(p, static)(x))(params)
        out = eqx.combine(params, static)(x)
        return jax.tree.map(
            lambda o, j: np.concatenate(
                [np.reshape(b, o.shape + (-1,)) for b in jax.tree.leaves(j)], axis=-1
            ),
            out,
            jac,
            is_leaf=lambda z: isinstance(z, jax.Array),
        )

    j1 = [flat_jacobian(x) for x in x1]
    j2 = [flat_jacobian(x) for x in x2]

    def kernel(leaf1, leaf2):
        ndim = leaf1[0].ndim - 1
        full = np.stack(
            [np.stack([np.tensordot(a, b, ((-1,), (-1,))) for b in leaf2]) for a in leaf1]
        )
        # (N1, N2, *o, *o') -> (N1, N2, o0, o0', o1, o1', ...)
        order = [0, 1] + [i for k in range(ndim) for i in (2 + k, 2 + ndim + k)]
        full = np.transpose(full, order)
        for k in reversed(range(ndim)):
            axis = 2 + 2 * k
            if k % ndim in [a % ndim for a in trace_axes]:
                full = np.trace(full, axis1=axis, axis2=axis + 1) / full.shape[axis]
            elif k % ndim in [a % ndim for a in diagonal_axes]:
                full = np.moveaxis(np.diagonal(full, axis1=axis, axis2=axis + 1), -1, axis)
        return full

    leaves1 = [jax.tree.leaves(j) for j in j1]
    leaves2 = [jax.tree.leaves(j) for j in j2]
    kernels = [
        kernel([leaf[i] for leaf in leaves1], [leaf[i] for leaf in leaves2])
        for i in range(len(leaves1[0]))
    ]
    return jax.tree.unflatten(jax.tree.structure(j1[0]), kernels)


AXES = {
    "dense": [((0,), ()), ((), ()), ((), (0,))],
    "dense_sequence": [((0,), ()), ((0,), (1,)), ((1,), ()), ((), ())],
    "mlp": [((0,), ()), ((), ())],
    "conv": [((0,), ()), ((0,), (1, 2)), ((1,), (0,)), ((), (-1,))],
    "attention": [((0,), ()), ((), (1,))],
    "pytree_output": [((0,), ()), ((), ())],
}


@pytest.mark.parametrize(
    "name, axes", [(name, axes) for name, all_axes in AXES.items() for axes in all_axes]
)
def test_implementations_match_explicit_jacobians(name, axes, getkey):
    model, shape = _models(getkey())[name]
    trace_axes, diagonal_axes = axes
    x1 = jr.normal(getkey(), (3, *shape))
    x2 = jr.normal(getkey(), (2, *shape))
    expected = _reference(model, x1, x2, trace_axes, diagonal_axes)
    for implementation in IMPLEMENTATIONS:
        ntk = eqntk.empirical_kernel(
            model,
            x1,
            x2,
            implementation=implementation,
            trace_axes=trace_axes,
            diagonal_axes=diagonal_axes,
        )
        assert jax.tree.structure(ntk) == jax.tree.structure(expected)
        for got, want in zip(jax.tree.leaves(ntk), jax.tree.leaves(expected)):
            assert got.shape == want.shape, implementation
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12, err_msg=implementation)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_x2_none_is_symmetric_and_equals_x2_x1(implementation, getkey):
    model, shape = _models(getkey())["conv"]
    x = jr.normal(getkey(), (3, *shape))
    same = eqntk.empirical_kernel(model, x, None, ("nngp", "ntk"), implementation=implementation)
    given = eqntk.empirical_kernel(model, x, x, ("nngp", "ntk"), implementation=implementation)
    for a, b in zip(same, given):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
        # K(x, x)[a, b, i, i', j, j'] == K(x, x)[b, a, i', i, j', j]: swap every pair.
        np.testing.assert_allclose(a, swap_examples(a, diagonal_spatial=False), atol=1e-12)
    assert same.ntk.shape == (3, 3, 3, 3, 4, 4)  # output (2, 3, 4): H 5 -> 3, W 6 -> 4


def test_nngp_and_vmap_axes(getkey):
    model, shape = _models(getkey())["dense_sequence"]
    x1, x2 = jr.normal(getkey(), (3, *shape)), jr.normal(getkey(), (2, *shape))
    f1, f2 = jax.vmap(model)(x1), jax.vmap(model)(x2)
    nngp = eqntk.empirical_kernel(model, x1, x2, "nngp")
    np.testing.assert_allclose(nngp, np.einsum("acs,bct->abst", f1, f2) / f1.shape[1], rtol=1e-12)
    moved = eqntk.empirical_kernel(
        model, jnp.moveaxis(x1, 0, 2), jnp.moveaxis(x2, 0, 2), ("nngp", "ntk"), vmap_axes=2
    )
    direct = eqntk.empirical_kernel(model, x1, x2, ("nngp", "ntk"))
    np.testing.assert_allclose(moved.nngp, direct.nngp, rtol=1e-12)
    np.testing.assert_allclose(moved.ntk, direct.ntk, rtol=1e-12)


def test_jit_and_filter(getkey):
    model, shape = _models(getkey())["dense"]
    x = jr.normal(getkey(), (4, *shape))
    eager = eqntk.empirical_kernel(model, x)
    jitted = eqx.filter_jit(eqntk.empirical_kernel)(model, x)
    np.testing.assert_allclose(eager, jitted, rtol=1e-12)
    # Only the last layer's weight: the NTK is the traced Gram of the last hidden layer.
    last = model.layers[2].weight
    only_last = eqntk.empirical_kernel(model, x, filter=lambda leaf: leaf is last)
    hidden = jax.vmap(model[:2])(x)
    expected = hidden @ hidden.T * (model.layers[2].W_std ** 2 / hidden.shape[1])
    np.testing.assert_allclose(only_last, expected, rtol=1e-10)


def test_ntk_vp(getkey):
    model, shape = _models(getkey())["dense_sequence"]
    x1, x2 = jr.normal(getkey(), (3, *shape)), jr.normal(getkey(), (2, *shape))
    v = jr.normal(getkey(), (2, 2, 4))
    full = eqntk.empirical_kernel(model, x1, x2, trace_axes=())  # (N1, N2, C, C', L, L')
    expected = np.einsum("abcdef,bdf->ace", full, v)
    np.testing.assert_allclose(eqntk.empirical_ntk_vp(model, x1, x2, v), expected, rtol=1e-10)
    with pytest.raises(ValueError, match="`cotangents` must have the structure and shapes"):
        eqntk.empirical_ntk_vp(model, x1, x2, v[:1])


def test_bad_inputs(getkey):
    model, shape = _models(getkey())["dense"]
    x = jr.normal(getkey(), (2, 3))
    with pytest.raises(ValueError, match="has no parameters"):
        eqntk.empirical_kernel(nn.Relu(), x)
    with pytest.raises(ValueError, match="`implementation` must be one of"):
        eqntk.empirical_kernel(model, x, implementation="fast")
    with pytest.raises(ValueError, match=r"`x2` must have the same per-example shape .*\(3,\)"):
        eqntk.empirical_kernel(model, x, jnp.ones((2, 4)))
    with pytest.raises(ValueError, match="`trace_axes` must be axes of one example's output"):
        eqntk.empirical_kernel(model, x, trace_axes=(1,))
    with pytest.raises(ValueError, match="both traced and diagonal"):
        eqntk.empirical_kernel(model, x, trace_axes=0, diagonal_axes=0)
    with pytest.raises(ValueError, match="`get` must be 'nngp', 'ntk'"):
        eqntk.empirical_kernel(model, x, get="cov1")
    with pytest.raises(ValueError, match="`vmap_axes`=2 is not an axis of `x1`"):
        eqntk.empirical_kernel(model, x, vmap_axes=2)


@pytest.mark.parametrize("batched", [True, False])
def test_applied_function_of_a_parameter_tree(getkey, batched):
    """`Applied(params, apply_fn)`: the NTK of a Flax/Haiku-style function is the Jacobian
    product over the parameter tree, whichever convention `apply_fn` follows."""
    params = {"w1": jr.normal(getkey(), (3, 16)), "w2": jr.normal(getkey(), (16, 2)) / 4}

    def one(params, x):  # one example (3,) -> (2,)
        return jnp.tanh(x @ params["w1"]) @ params["w2"]

    apply_fn = jax.vmap(one, in_axes=(None, 0)) if batched else one
    model = eqntk.empirical.Applied(params, apply_fn, batched=batched)
    x = jr.normal(getkey(), (4, 3))
    jac = jax.vmap(jax.jacrev(one), in_axes=(None, 0))(params, x)  # leaves (N, 2, *param)
    flat = jnp.concatenate([j.reshape(4, 2, -1) for j in jax.tree_util.tree_leaves(jac)], -1)
    want = jnp.einsum("icp,jcp->ij", flat, flat) / 2  # traced over the 2 outputs
    got = eqntk.empirical_kernel(model, x, get="ntk")
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert jnp.allclose(eqntk.linearize(model)(x[0]), one(params, x[0]))
