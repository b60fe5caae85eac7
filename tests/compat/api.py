"""One small program per part of neural-tangents' public API, run under neural-tangents (the
reference) and `eqntk.compat` alike; see `programs.py` for how the imports switch."""

import jax.numpy as jnp
import numpy as np
from jax import random

from .programs import nt, stax


def _x(shape, seed):
    return np.random.RandomState(seed).normal(size=shape)


# Layers that neural-tangents gives no finite forward pass.
_NO_APPLY = ("exp_normalized",)


def _layer_outputs(name, network, x1, x2, key=0, **kernel_kwargs):
    init_fn, apply_fn, kernel_fn = network
    out = {}
    k = kernel_fn(x1, x2, **kernel_kwargs)
    out[f"{name}/nngp"], out[f"{name}/ntk"] = k.nngp, k.ntk
    out[f"{name}/cov1"] = k.cov1
    if name not in _NO_APPLY:
        _, params = init_fn(random.PRNGKey(key), x1.shape)
        out[f"{name}/apply"] = apply_fn(params, x1)
    return out


def _dense_head(*layers, width=1):
    return stax.serial(*layers, stax.Flatten(), stax.Dense(width))


def stax_vectors():
    """Dense, the parameterisations, every elementwise nonlinearity, combinators."""
    x1, x2 = _x((3, 4), 0), _x((2, 4), 1)
    nets = {
        "dense_ntk": stax.serial(stax.Dense(8, 1.5, 0.1), stax.Relu(), stax.Dense(2, 1.2, 0.3)),
        "dense_standard": stax.serial(
            stax.Dense(8, 1.5, 0.1, parameterization="standard"),
            stax.Relu(),
            stax.Dense(2, 1.2, 0.3, parameterization="standard"),
        ),
        "fanin_concat": stax.serial(
            stax.FanOut(2),
            stax.parallel(stax.Dense(6), stax.Dense(3, 2.0)),
            stax.FanInConcat(),
            stax.Dense(1),
        ),
        "fanin_prod": stax.serial(
            stax.FanOut(2),
            stax.parallel(stax.Dense(6), stax.Dense(6, 2.0, 0.1)),
            stax.FanInProd(),
            stax.Dense(1),
        ),
        "repeat": stax.serial(
            stax.Dense(5), stax.repeat(stax.serial(stax.Relu(), stax.Dense(5, 1.3, 0.2)), 3)
        ),
        "layer_norm": stax.serial(stax.Dense(6, 1.0, 0.5), stax.LayerNorm(), stax.Dense(1)),
    }
    activations = {
        "relu": stax.Relu(),
        "abrelu": stax.ABRelu(-0.3, 1.2),
        "leaky_relu": stax.LeakyRelu(0.1),
        "abs": stax.Abs(),
        "erf": stax.Erf(1.5, 0.7, 0.1),
        "gelu": stax.Gelu(),
        "gelu_approximate": stax.Gelu(approximate=True),
        "sigmoid_like": stax.Sigmoid_like(),
        "sign": stax.Sign(),
        "exp": stax.Exp(0.8, 0.6),
        "exp_normalized": stax.ExpNormalized(),
        "gaussian": stax.Gaussian(1.1, -0.4),
        "sin": stax.Sin(1.0, 1.3, 0.2),
        "cos": stax.Cos(0.9, 0.8, 0.1),
        "rbf": stax.Rbf(0.7),
        "gabor": stax.Gabor(),
        "monomial": stax.Monomial(3),
        "rectified_monomial": stax.RectifiedMonomial(2),
        "polynomial": stax.Polynomial([0.1, -0.5, 0.3]),
        "hermite": stax.Hermite(3),
        "elementwise": stax.Elementwise(
            jnp.tanh,
            lambda c, v1, v2: jnp.sqrt(v1 * v2) * jnp.arcsin(c / jnp.sqrt((1 + v1) * (1 + v2))),
        ),
        "elementwise_numerical": stax.ElementwiseNumerical(jnp.tanh, deg=25),
    }
    for name, act in activations.items():
        nets[name] = stax.serial(stax.Dense(6, 1.3, 0.2), act, stax.Dense(1, 1.1, 0.1))
    out = {}
    for name, net in nets.items():
        out.update(_layer_outputs(name, net, x1, x2))
    return out


def stax_images():
    """Convolutions (paddings, strides, layouts), pooling, flatten, attention, masking."""
    x1, x2 = _x((2, 5, 4, 2), 2), _x((1, 5, 4, 2), 3)
    nets = {
        "conv_valid": _dense_head(stax.Conv(4, (3, 2), b_std=0.1), stax.Relu()),
        "conv_same_strided": _dense_head(
            stax.Conv(4, (3, 3), (2, 1), "SAME", 1.4, 0.2), stax.Erf()
        ),
        "conv_circular": _dense_head(stax.Conv(4, (3, 3), padding="CIRCULAR"), stax.Relu()),
        "conv_standard": _dense_head(
            stax.Conv(4, (2, 2), W_std=1.3, b_std=0.1, parameterization="standard"), stax.Relu()
        ),
        "conv_nchw": stax.serial(
            stax.Conv(3, (2, 2), dimension_numbers=("NCHW", "OIHW", "NCHW")),
            stax.Relu(),
            stax.GlobalAvgPool(channel_axis=1),
            stax.Dense(1),
        ),
        "conv_transpose": _dense_head(stax.ConvTranspose(3, (2, 2), (2, 2), "SAME"), stax.Relu()),
        "avg_pool": _dense_head(
            stax.Conv(3, (2, 2)), stax.Relu(), stax.AvgPool((2, 2), (1, 1), "SAME")
        ),
        "avg_pool_normalized": _dense_head(
            stax.Conv(3, (1, 1)), stax.AvgPool((3, 2), padding="SAME", normalize_edges=True)
        ),
        "sum_pool": _dense_head(stax.Conv(3, (2, 2)), stax.Relu(), stax.SumPool((2, 2), (2, 1))),
        "global_avg_pool": stax.serial(
            stax.Conv(3, (2, 2)), stax.Relu(), stax.GlobalAvgPool(), stax.Dense(2)
        ),
        "global_sum_pool": stax.serial(
            stax.Conv(3, (2, 2)), stax.Relu(), stax.GlobalSumPool(), stax.Dense(1)
        ),
        "residual": stax.serial(
            stax.Conv(3, (3, 3), padding="SAME"),
            stax.FanOut(2),
            stax.parallel(
                stax.serial(stax.Relu(), stax.Conv(3, (3, 3), padding="SAME")), stax.Identity()
            ),
            stax.FanInSum(),
            stax.GlobalAvgPool(),
            stax.Dense(1),
        ),
        "layer_norm_spatial": _dense_head(
            stax.Conv(3, (2, 2), b_std=0.3), stax.LayerNorm(axis=(1, 2, 3))
        ),
        "conv_output": stax.serial(stax.Conv(3, (2, 2)), stax.Relu(), stax.Conv(1, (2, 2))),
    }
    out = {}
    for name, net in nets.items():
        a1, a2 = (x1, x2) if name != "conv_nchw" else (np.moveaxis(x1, 3, 1), np.moveaxis(x2, 3, 1))
        out.update(_layer_outputs(name, net, a1, a2))
    _, _, kernel_fn = stax.serial(
        stax.Conv(3, (2, 2)), stax.Relu(), stax.Conv(3, (2, 2)), stax.Flatten(), stax.Dense(1)
    )
    k = kernel_fn(x1, x2, diagonal_spatial=False)
    out["flatten_full/nngp"] = k.nngp
    _, _, kernel_fn = stax.serial(stax.Conv(3, (2, 2)), stax.Relu(), stax.Conv(3, (2, 2)))
    out["diagonal_spatial/nngp"] = kernel_fn(x1, x2, "nngp", diagonal_spatial=True)
    out["diagonal_batch/cov1"] = kernel_fn(x1, x2, "cov1", diagonal_batch=False)
    seq = _x((2, 6, 3), 4)
    seq[0, 4:] = 0.0
    _, _, kernel_fn = stax.serial(
        stax.Conv(4, (2,), padding="SAME"),
        stax.Relu(),
        stax.GlobalSelfAttention(4, 3, 3, 2, attention_mechanism="SOFTMAX"),
        stax.GlobalAvgPool(),
        stax.Dense(1),
    )
    out["attention_masked/nngp"], out["attention_masked/ntk"] = kernel_fn(
        seq, None, ("nngp", "ntk"), mask_constant=0.0
    )
    _, _, kernel_fn = stax.serial(
        stax.Conv(4, (2,), padding="SAME"), stax.Relu(), stax.GlobalAvgPool(), stax.Dense(1)
    )
    out["global_avg_pool_masked/nngp"] = kernel_fn(seq, None, "nngp", mask_constant=0.0)
    return out


def predict_api():
    """`gp_inference`, `gradient_descent_mse(_ensemble)` at finite times with covariances,
    `gradient_descent` with an `ODEState`, `max_learning_rate`."""
    x_train, x_test = _x((6, 3), 5), _x((3, 3), 6)
    y_train = _x((6, 2), 7)
    _, _, kernel_fn = stax.serial(stax.Dense(8, 1.5, 0.1), stax.Relu(), stax.Dense(1, 1.5, 0.1))
    k_dd = kernel_fn(x_train, None)
    k_td = kernel_fn(x_test, x_train)
    nngp_tt = kernel_fn(x_test, None, "nngp")
    out = {}
    predict_fn = nt.predict.gp_inference(k_dd, y_train, diag_reg=1e-3)
    gaussians = predict_fn(("nngp", "ntk"), k_td, nngp_tt)
    out["gp/nngp_mean"], out["gp/nngp_cov"] = gaussians.nngp
    out["gp/ntk_mean"], out["gp/ntk_cov"] = gaussians.ntk
    out["gp/ntk_only_mean"] = predict_fn("ntk", k_td)
    ensemble = nt.predict.gradient_descent_mse_ensemble(
        kernel_fn, x_train, y_train, learning_rate=0.5, diag_reg=1e-4
    )
    mean, cov = ensemble(t=np.array([0.5, 3.0]), x_test=x_test, get="ntk", compute_cov=True)
    out["ensemble/ntk_mean"], out["ensemble/ntk_cov"] = mean, cov
    mean, cov = ensemble(t=None, x_test=x_test, get="nngp", compute_cov=True)
    out["ensemble/nngp_inf_mean"], out["ensemble/nngp_inf_cov"] = mean, cov
    out["ensemble/train"] = ensemble(t=2.0, get="nngp")
    mse = nt.predict.gradient_descent_mse(k_dd.ntk, y_train, learning_rate=0.5, diag_reg=1e-4)
    fx_train_0, fx_test_0 = 0.1 * _x((6, 2), 8), 0.1 * _x((3, 2), 9)
    out["mse/train"], out["mse/test"] = mse(np.array([1.0, 4.0]), fx_train_0, fx_test_0, k_td.ntk)
    out["mse/test_only"] = mse(2.0, None, fx_test_0, k_td.ntk)
    out["mse/inf_train"] = mse(None, fx_train_0)
    loss = lambda fx, y_hat: 0.5 * jnp.sum((fx - y_hat) ** 2)
    gd = nt.predict.gradient_descent(loss, k_dd.ntk, y_train, learning_rate=0.5)
    out["gd/train"], out["gd/test"] = gd(np.array([1.0, 2.0]), fx_train_0, fx_test_0, k_td.ntk)
    state = gd(1.0, nt.predict.ODEState(fx_train_0, fx_test_0), None, k_td.ntk)
    state = gd(1.0, state, None, k_td.ntk)
    out["gd/resumed_train"], out["gd/resumed_test"] = state.fx_train, state.fx_test
    out["lr"] = jnp.asarray(nt.predict.max_learning_rate(k_dd.ntk))
    return out


def empirical_api():
    """Empirical kernels with trace/diagonal axes, `empirical_ntk_vp_fn`, `taylor_expand`,
    Monte Carlo estimates at several sample counts, `batch` of a stax kernel."""
    x1, x2 = _x((3, 4, 3), 10), _x((2, 4, 3), 11)
    init_fn, apply_fn, kernel_fn = stax.serial(
        stax.Conv(6, (2,), padding="SAME", b_std=0.1), stax.Relu(), stax.Conv(2, (2,))
    )
    _, params = init_fn(random.PRNGKey(2), x1.shape)
    out = {}
    emp = nt.empirical_kernel_fn(apply_fn, trace_axes=(-1,), diagonal_axes=(1,))
    out["emp/nngp"], out["emp/ntk"] = emp(x1, x2, ("nngp", "ntk"), params)
    out["emp/full_ntk"] = nt.empirical_ntk_fn(apply_fn, trace_axes=())(x1, None, params)
    out["emp/nngp_fn"] = nt.empirical_nngp_fn(apply_fn)(x1, x2, params)
    v = _x((2, 3, 2), 12)
    out["emp/ntk_vp"] = nt.empirical_ntk_vp_fn(apply_fn, x1, x2, params)(v)
    out["taylor"] = nt.taylor_expand(apply_fn, params, 3)(jax_tree_scale(params, 1.1), x1)
    mc_init, mc_apply, _ = stax.serial(stax.Dense(16, 1.2, 0.1), stax.Erf(), stax.Dense(1))
    mc = nt.monte_carlo_kernel_fn(mc_init, mc_apply, random.PRNGKey(5), [1, 3, 4])
    for n, k in zip([1, 3, 4], mc(x1[:, 0], x2[:, 0])):
        out[f"mc/{n}/nngp"], out[f"mc/{n}/ntk"] = k.nngp, k.ntk
    mc = nt.monte_carlo_kernel_fn(mc_init, mc_apply, random.PRNGKey(5), 2)
    out["mc/int/ntk"] = mc(x1[:, 0], None, "ntk")
    batched = nt.batch(kernel_fn, batch_size=1)
    out["batch/ntk"] = batched(x1, x2, "ntk")
    return out


def graph_and_masks():
    """`Aggregate` with dense and sparse graphs, and masked inputs through `apply_fn`."""
    x1, x2 = _x((2, 5, 3), 13), _x((1, 5, 3), 14)
    rng = np.random.RandomState(15)
    p1, p2 = (rng.rand(2, 5, 5) > 0.5) * 1.0, (rng.rand(1, 5, 5) > 0.5) * 1.0
    init_fn, apply_fn, kernel_fn = stax.serial(
        stax.Dense(4, 1.2, 0.1),
        stax.Relu(),
        stax.Aggregate(),
        stax.Dense(4),
        stax.Relu(),
        stax.GlobalSumPool(),
        stax.Dense(1),
    )
    _, params = init_fn(random.PRNGKey(6), x1.shape)
    out = {}
    out["dense/nngp"], out["dense/ntk"] = kernel_fn(x1, x2, ("nngp", "ntk"), pattern=(p1, p2))
    out["dense/apply"] = apply_fn(params, x1, pattern=p1)
    edges = np.array([[[0, 1], [1, 2], [3, 4], [4, 0]], [[2, 2], [0, 3], [1, 4], [4, 1]]])
    _, apply_s, kernel_s = stax.serial(
        stax.Dense(4, 1.2, 0.1),
        stax.Relu(),
        stax.Aggregate(implementation="SPARSE"),
        stax.Dense(4),
        stax.Relu(),
        stax.GlobalSumPool(),
        stax.Dense(1),
    )
    out["sparse/nngp"] = kernel_s(x1, None, "nngp", pattern=(edges, edges))
    out["sparse/apply"] = apply_s(params, x1, pattern=edges)
    xm = x1.copy()
    xm[0, 3:] = 0.0
    init_m, apply_m, kernel_m = stax.serial(
        stax.Conv(4, (2,), padding="SAME"), stax.Relu(), stax.GlobalAvgPool(), stax.Dense(1)
    )
    _, params_m = init_m(random.PRNGKey(7), xm.shape)
    y = apply_m(params_m, xm, mask_constant=0.0)
    out["mask/apply"], out["mask/apply_mask"] = y.masked_value, y.mask
    _, apply_c, _ = stax.serial(stax.Conv(4, (2,), padding="SAME"), stax.Relu())
    y = apply_c(params_m[:2], xm, mask_constant=0.0)
    out["mask/apply_conv"], out["mask/apply_conv_mask"] = y.masked_value, y.mask
    out["mask/nngp"] = kernel_m(xm, None, "nngp", mask_constant=0.0)
    return out


def stax_index():
    """`Index` with `Slice`; `ImageResize`'s finite outputs."""
    x1, x2 = _x((2, 5, 4, 2), 16), _x((1, 5, 4, 2), 17)
    out = _layer_outputs(
        "index",
        _dense_head(stax.Conv(3, (2, 2)), stax.Relu(), stax.Index(stax.Slice[:, ::2, 1:])),
        x1,
        x2,
    )
    resize = _dense_head(
        stax.Conv(3, (2, 2)), stax.Relu(), stax.ImageResize((-1, 6, 2, -1), "linear")
    )
    _, params = resize[0](random.PRNGKey(0), x1.shape)
    out["resize/apply"] = resize[1](params, x1)
    return out


def stax_dot_general():
    """`DotGeneral` with a constant `rhs` (a scale; a contraction of a spatial axis) or `lhs`
    (a contraction; a matrix over rows), and with spatial `dot_general` batch dimensions."""
    x1, x2 = _x((2, 3, 4, 2), 18), _x((1, 3, 4, 2), 19)
    out = {}
    out.update(
        _layer_outputs(
            "rhs_scale",
            stax.serial(stax.Conv(3, (2, 2)), stax.Relu(), stax.DotGeneral(rhs=2.0)),
            x1,
            x2,
            diagonal_spatial=True,
        )
    )
    rows = ((1,), (0,)), ((), ())  # contract the rows (H) of NHWC inputs with a vector
    out.update(
        _layer_outputs(
            "rhs_contract",
            stax.serial(
                stax.Conv(3, (1, 2), b_std=0.1),
                stax.DotGeneral(rhs=jnp.array([1.0, -0.5, 2.0]), dimension_numbers=rows),
                stax.Relu(),
                stax.Dense(2),
            ),
            x1,
            x2,
        )
    )
    out.update(
        _layer_outputs(
            "lhs_contract",
            _dense_head(
                stax.Conv(3, (1, 2)),
                stax.Erf(),
                stax.DotGeneral(
                    lhs=jnp.array([0.3, -1.0, 0.7]), dimension_numbers=(((0,), (1,)), ((), ()))
                ),
            ),
            x1,
            x2,
        )
    )
    # Padding (all-zero positions) is mapped along: a column is masked when every row of it
    # that the constant weighs is.
    xm = x1.copy()
    xm[0, :, 3] = 0.0
    xm[1, 1:, 2] = 0.0
    _, _, kernel_m = stax.serial(
        stax.Conv(3, (1, 2), padding="SAME"),
        stax.DotGeneral(rhs=jnp.array([0.0, 1.0, 2.0]), dimension_numbers=rows),
        stax.Relu(),
        stax.GlobalAvgPool(),
        stax.Dense(1),
    )
    out["masked/nngp"] = kernel_m(xm, None, "nngp", mask_constant=0.0)
    # Rows first (`HNWC`, `batch_axis=1`): a matrix mixing the rows, and a weighted sum over
    # the columns per row (rows paired as `dot_general` batch dimensions).
    y1, y2 = np.moveaxis(x1, 0, 1), np.moveaxis(x2, 0, 1)
    mix = jnp.array([[1.0, 0.5, 0.0], [0.0, -1.0, 2.0]])
    out.update(
        _layer_outputs(
            "lhs_matrix",
            stax.serial(
                stax.Dense(3, 1.2, 0.1, batch_axis=1),
                stax.Relu(),
                stax.DotGeneral(lhs=mix, dimension_numbers=(((1,), (0,)), ((), ())), batch_axis=1),
            ),
            y1,
            y2,
        )
    )
    weights = jnp.asarray(_x((3, 4), 20))
    out.update(
        _layer_outputs(
            "rhs_batch",
            stax.serial(
                stax.Dense(3, 1.2, 0.1, batch_axis=1),
                stax.Gelu(),
                stax.DotGeneral(
                    rhs=weights, dimension_numbers=(((2,), (1,)), ((0,), (0,))), batch_axis=1
                ),
                stax.Dense(1, batch_axis=1),
            ),
            y1,
            y2,
        )
    )
    return out


def kernel_methods():
    """`Kernel`'s methods on a kernel of NHWC images: slicing, reversing, transposing,
    masking, `dot_general`, arithmetic, indexing, and continuing from a reversed kernel."""
    x1, x2 = _x((3, 3, 4, 2), 21), _x((2, 3, 4, 2), 22)
    _, _, kernel_fn = stax.serial(
        stax.Conv(3, (2, 2), padding="SAME", b_std=0.1), stax.Relu(), stax.Conv(3, (1, 2))
    )
    k = kernel_fn(x1, x2)
    out = {"nngp": k.nngp}

    def fields(name, kernel, names=("nngp", "ntk", "cov1", "cov2"), shapes=True):
        for f in names:
            out[f"{name}/{f}"] = getattr(kernel, f)
        layout = (kernel.batch_axis, kernel.channel_axis)
        if shapes:  # neural-tangents' `dot_general` leaves `shape1`/`shape2` as they were
            layout += tuple(kernel.shape1) + tuple(kernel.shape2)
        out[f"{name}/layout"] = np.array(layout)

    fields("slice", k.slice(slice(0, 2), slice(1, 2)))
    fields("reverse", k.reverse())
    fields("transpose", k.transpose((1, 0)), ("nngp", "cov2"))
    m1 = np.zeros((3, 3, 3, 1), bool)
    m1[0, 2], m1[1, :, 1] = True, True
    m2 = np.zeros((2, 1, 3, 1), bool)
    m2[1, 0, 0] = True
    fields("mask", k.mask(jnp.asarray(m1), jnp.asarray(m2)))
    rows = jnp.asarray(_x((3, 3), 23))  # a weighting of the rows per example of `x1`
    rows2 = jnp.asarray(_x((2, 3), 24))
    per_example = (((1,), (1,)), ((0,), (0,)))
    fields("dot_batch", k.dot_general(rows, rows2, False, per_example), shapes=False)
    mix = jnp.asarray(_x((2, 3), 25))
    fields("dot_lhs", k.dot_general(mix, mix, True, (((1,), (1,)), ((), ()))), shapes=False)
    fields("mul", 2.0 * (k * 1.5) / 4.0)
    fields("add", -(k + 0.5))
    fields("getitem", k[:, 1:, 0])
    _, _, head = stax.serial(stax.Relu(), stax.Flatten(), stax.Dense(1))
    out["reversed_head"] = head(k.reverse()).ntk
    return out


@stax.layer
def _scale(c):
    """A user layer that works one position at a time: it declares the spatial diagonal."""

    @stax.requires(diagonal_spatial=stax.Diagonal())
    def kernel_fn(k, **kwargs):
        return c * k

    return (lambda rng, shape: (shape, ())), (lambda params, x, **kwargs: c * x), kernel_fn


@stax.layer
def _flip():
    """A user layer that reverses the positions (NWC): it needs the full covariance."""

    @stax.requires(diagonal_spatial=stax.Diagonal(input=stax.Bool.NO))
    def kernel_fn(k, **kwargs):
        return k[:, ::-1]

    return (lambda rng, shape: (shape, ())), (lambda params, x, **kwargs: x[:, ::-1]), kernel_fn


def user_layers():
    """User layers (`stax.layer` with `stax.requires`) inside networks of sequences."""
    x1, x2 = _x((3, 5, 2), 26), _x((2, 5, 2), 27)
    out = _layer_outputs(
        "diagonal",
        stax.serial(stax.Conv(3, (2,)), _scale(1.5), stax.Relu(), stax.Flatten(), stax.Dense(1)),
        x1,
        x2,
    )
    out.update(
        _layer_outputs(
            "full",
            stax.serial(
                stax.Conv(3, (2,), b_std=0.1),
                _flip(),
                stax.Relu(),
                stax.Conv(2, (3,)),
                stax.GlobalAvgPool(),
            ),
            x1,
            x2,
        )
    )
    return out


def jax_tree_scale(tree, c):
    import jax

    return jax.tree_util.tree_map(lambda a: c * a, tree)


PROGRAMS = {
    "stax_vectors": stax_vectors,
    "stax_images": stax_images,
    "predict_api": predict_api,
    "empirical_api": empirical_api,
    "graph_and_masks": graph_and_masks,
    "stax_index": stax_index,
    "stax_dot_general": stax_dot_general,
    "kernel_methods": kernel_methods,
    "user_layers": user_layers,
}
