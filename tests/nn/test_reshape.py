"""`Index`, `DotGeneral` and `ImageResize`: exact cross-checks, wide finite networks, errors."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import eqntk
from eqntk import nn
from eqntk.limits._spatial import diagonal_of_pairs
from tests.helpers import mc_kernels, relative_error


def _conv_net(key, head, width=64):
    k1, k2 = jr.split(key)
    return nn.Sequential(
        [
            nn.Conv(2, width, (2, 2), padding="SAME", W_std=1.3, b_std=0.1, key=k1),
            nn.Relu(),
            head,
            nn.Dense(width, width, W_std=1.1, b_std=0.1, key=k2),
        ]
    )


HEADS = {
    "index": nn.Index([slice(1, None), 2]),
    "index_neg_step": nn.Index([slice(None, None, -2)]),
    "dot_general": nn.DotGeneral(
        jnp.array([[1.0, -0.5, 0.2, 0.0], [0.3, 0.3, 0.3, 0.3]]), axes=1, scale=1.5
    ),
    "resize_linear_down": nn.ImageResize((3, 2)),
    "resize_linear_up": nn.ImageResize((-1, 6), antialias=False),
    "resize_nearest": nn.ImageResize((2, 7), "nearest"),
}


# Sampling is costly; the golden index_*, dotgeneral_* and imageresize_* cases check these
# rules against neural-tangents by default, and the family keeps default Monte Carlo runs of
# `Index` and of the antialiased downsizing (where neural-tangents' kernel differs from the
# finite networks', so only sampling witnesses it).
SLOW_MC_HEADS = {"resize_linear_up", "resize_nearest", "index_neg_step", "dot_general"}


@pytest.mark.parametrize(
    "head",
    [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_MC_HEADS else n for n in HEADS],
    ids=list(HEADS),
)
def test_monte_carlo(head, getkey):
    x1 = jr.normal(getkey(), (2, 2, 5, 4))
    x2 = jr.normal(getkey(), (2, 2, 5, 4))
    exact = eqntk.limit(_conv_net(getkey(), HEADS[head]))(x1, x2)
    nngp, ntk = mc_kernels(lambda k: _conv_net(k, HEADS[head]), getkey(), x1, x2, n_samples=32)
    # 32 networks of width 64: relative sampling error of the kernels ~ 1/sqrt(32 * 64) per
    # entry, amplified by the position mixing; 0.1 is ~4 standard errors.
    assert relative_error(nngp, exact.nngp) < 0.1
    assert relative_error(ntk, exact.ntk) < 0.1


@pytest.mark.parametrize("head", HEADS, ids=list(HEADS))
def test_diagonal_layout_matches_full(head, getkey):
    x = jr.normal(getkey(), (3, 2, 5, 4))
    model = _conv_net(getkey(), HEADS[head])
    full = eqntk.limit(model)(x)
    diag = eqntk.limit(model)(x, diagonal_spatial=True)
    n = full.spatial_ndim
    np.testing.assert_allclose(diag.nngp, diagonal_of_pairs(full.nngp, 2, n), rtol=1e-12)
    np.testing.assert_allclose(diag.cov1, diagonal_of_pairs(full.cov1, 1, n), rtol=1e-12)


def test_resize_matrix_is_jax_image_resize(getkey):
    layer = nn.ImageResize((3, 7))
    x = jr.normal(getkey(), (2, 5, 4))
    r0 = layer.matrix(5, 3, x.dtype)
    r1 = layer.matrix(4, 7, x.dtype)
    np.testing.assert_allclose(layer(x), jnp.einsum("ps,qt,cst->cpq", r0, r1, x), atol=1e-12)


def test_dot_general_scale_squares():
    x = jnp.linspace(-1, 1, 12).reshape(3, 4)
    k = eqntk.limit(nn.DotGeneral(scale=-2.0))(x)
    k0 = eqntk.limit(nn.Identity())(x)
    np.testing.assert_allclose(k.nngp, 4 * k0.nngp)


def test_jit_and_grad():
    x = jnp.linspace(-1, 1, 40).reshape(2, 2, 5, 2)
    model = nn.Sequential(
        [nn.Conv(2, 8, (2, 2), padding="SAME", key=jr.key(0)), nn.ImageResize((3, 3))]
    )

    def loss(m):
        return eqntk.limit(m)(x, get="nngp").sum()

    grads = eqx.filter_grad(loss)(model)
    assert jnp.isfinite(grads.layers[0].W_std)


def test_bad_inputs():
    x = jnp.ones((2, 3, 4, 5))
    with pytest.raises(ValueError, match="indexes 3 spatial axes"):
        eqntk.limit(nn.Index([0, 0, 0]))(x)
    with pytest.raises(IndexError, match="position 4 is out of range"):
        eqntk.limit(nn.Index([4]))(x)
    with pytest.raises(TypeError, match=r"`spatial\[0\]`"):
        nn.Index(["a"])
    with pytest.raises(ValueError, match="must end in the sizes"):
        eqntk.limit(nn.DotGeneral(jnp.ones((2, 3)), axes=0))(x)
    with pytest.raises(ValueError, match="2 \\* len\\(axes\\)"):
        nn.DotGeneral(jnp.ones((2, 3)), axes=(0, 1))
    with pytest.raises(ValueError, match="`method`"):
        nn.ImageResize((2, 2), "cubic")
    with pytest.raises(ValueError, match="2 spatial axes"):
        eqntk.limit(nn.ImageResize((2,)))(x)
    jax.block_until_ready(eqntk.limit(nn.Index([None, 1]))(x, get="nngp"))
