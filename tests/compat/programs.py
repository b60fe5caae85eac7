"""neural-tangents' example programs and README snippets, run unchanged but for the imports.

With `EQNTK_COMPAT_REFERENCE=1` (in the reference environment) the programs import
neural-tangents itself; otherwise `eqntk.compat`. Dataset downloads are replaced by small
generated data (`numpy.random.RandomState`, the same stream in both environments). Each
program returns a dict of named arrays; `make_reference.py` stores neural-tangents' numbers and
the tests compare.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
from jax import grad, jit, random
from jax.example_libraries import optimizers
from jax.nn import log_softmax


if os.environ.get("EQNTK_COMPAT_REFERENCE"):
    import neural_tangents as nt
    from neural_tangents import stax
else:
    import eqntk.compat as nt
    from eqntk.compat import stax


def _data(n_train, n_test, shape, n_classes, seed=0):
    """Stand-in for `datasets.get_dataset`: inputs and one-hot targets (centred like the
    example's)."""
    rng = np.random.RandomState(seed)
    x_train = rng.normal(size=(n_train,) + shape)
    x_test = rng.normal(size=(n_test,) + shape)
    y_train = np.eye(n_classes)[rng.randint(n_classes, size=n_train)] - 1.0 / n_classes
    y_test = np.eye(n_classes)[rng.randint(n_classes, size=n_test)] - 1.0 / n_classes
    return x_train, y_train, x_test, y_test


def infinite_fcn(batch_size=0):
    """examples/infinite_fcn.py."""
    x_train, y_train, x_test, y_test = _data(24, 8, (12,), 3)
    _, _, kernel_fn = stax.serial(stax.Dense(1, 2.0, 0.05), stax.Relu(), stax.Dense(1, 2.0, 0.05))
    kernel_fn = nt.batch(kernel_fn, device_count=0, batch_size=batch_size)
    predict_fn = nt.predict.gradient_descent_mse_ensemble(
        kernel_fn, x_train, y_train, diag_reg=1e-3
    )
    fx_test_nngp, fx_test_ntk = predict_fn(x_test=x_test)
    return dict(fx_test_nngp=fx_test_nngp, fx_test_ntk=fx_test_ntk)


def function_space():
    """examples/function_space.py."""
    learning_rate, train_time = 1.0, 20.0
    x_train, y_train, x_test, y_test = _data(16, 8, (10,), 3)
    init_fn, apply_fn, _ = stax.serial(
        stax.Dense(64, 1.0, 0.05), stax.Erf(), stax.Dense(3, 1.0, 0.05)
    )
    key = random.PRNGKey(0)
    _, params = init_fn(key, (-1, 10))
    opt_init, opt_apply, get_params = optimizers.sgd(learning_rate)
    state = opt_init(params)
    loss = lambda fx, y_hat: 0.5 * jnp.mean((fx - y_hat) ** 2)
    grad_loss = jit(grad(lambda params, x, y: loss(apply_fn(params, x), y)))
    ntk = nt.batch(nt.empirical_ntk_fn(apply_fn, vmap_axes=0), batch_size=8, device_count=0)
    g_dd = ntk(x_train, None, params)
    g_td = ntk(x_test, x_train, params)
    predictor = nt.predict.gradient_descent_mse(g_dd, y_train)
    fx_train = apply_fn(params, x_train)
    fx_test = apply_fn(params, x_test)
    for i in range(int(train_time // learning_rate)):
        params = get_params(state)
        state = opt_apply(i, grad_loss(params, x_train, y_train), state)
    fx_train_lin, fx_test_lin = predictor(train_time, fx_train, fx_test, g_td)
    return dict(
        g_dd=g_dd,
        g_td=g_td,
        fx_train_lin=fx_train_lin,
        fx_test_lin=fx_test_lin,
        fx_train=apply_fn(params, x_train),
        fx_test=apply_fn(params, x_test),
    )


def weight_space():
    """examples/weight_space.py (a few minibatches)."""
    x_train, y_train, x_test, y_test = _data(32, 8, (10,), 3)
    init_fn, f, _ = stax.serial(stax.Dense(64, 1.0, 0.05), stax.Erf(), stax.Dense(3, 1.0, 0.05))
    key = random.PRNGKey(0)
    _, params = init_fn(key, (-1, 10))
    f_lin = nt.linearize(f, params)
    opt_init, opt_apply, get_params = optimizers.momentum(1.0, 0.9)
    opt_apply = jit(opt_apply)
    state = opt_init(params)
    state_lin = opt_init(params)
    loss = lambda fx, y_hat: -jnp.mean(log_softmax(fx) * y_hat)
    grad_loss = jit(grad(lambda params, x, y: loss(f(params, x), y)))
    grad_loss_lin = jit(grad(lambda params, x, y: loss(f_lin(params, x), y)))
    for i in range(4):
        x, y = x_train[8 * i : 8 * (i + 1)], y_train[8 * i : 8 * (i + 1)]
        params = get_params(state)
        state = opt_apply(i, grad_loss(params, x, y), state)
        params_lin = get_params(state_lin)
        state_lin = opt_apply(i, grad_loss_lin(params_lin, x, y), state_lin)
    params, params_lin = get_params(state), get_params(state_lin)
    return dict(f=f(params, x_test), f_lin=f_lin(params_lin, x_test))


def empirical_ntk():
    """examples/empirical_ntk.py."""
    key1, key2, key3 = random.split(random.PRNGKey(1), 3)
    x1 = random.normal(key1, (2, 8, 8, 3))
    x2 = random.normal(key2, (3, 8, 8, 3))
    init_fn, f, _ = stax.serial(
        stax.Conv(8, (3, 3)),
        stax.Relu(),
        stax.Conv(8, (3, 3)),
        stax.Relu(),
        stax.Conv(8, (3, 3)),
        stax.Flatten(),
        stax.Dense(10),
    )
    _, params = init_fn(key3, x1.shape)
    kwargs = dict(f=f, trace_axes=(), vmap_axes=0)
    out = {}
    for impl in ("JACOBIAN_CONTRACTION", "NTK_VECTOR_PRODUCTS", "STRUCTURED_DERIVATIVES"):
        fn = nt.empirical_ntk_fn(**kwargs, implementation=getattr(nt.NtkImplementation, impl))
        out[impl.lower()] = fn(x2, x1, params)
    out["apply"] = f(params, x1)
    return out


def elementwise():
    """examples/elementwise.py."""

    def nngp_fn(cov12, var1, var2):
        prod = jnp.sqrt(var1 * var2)
        return prod * jnp.exp(cov12 / prod - 1)

    _, _, kernel_fn = stax.serial(stax.Dense(1), stax.Elementwise(nngp_fn=nngp_fn))
    _, _, kernel_fn_manual = stax.serial(stax.Dense(1), stax.ExpNormalized())
    key = random.PRNGKey(1)
    x1 = random.normal(key, (10, 2))
    x2 = random.normal(key, (20, 2))
    return dict(k_auto=kernel_fn(x1, x2, "ntk"), k_manual=kernel_fn_manual(x1, x2, "ntk"))


def elementwise_numerical():
    """examples/elementwise_numerical.py."""
    key1, key2 = random.split(random.PRNGKey(1))
    x1 = random.normal(key1, (10, 3))
    x2 = random.normal(key2, (20, 3))
    _, _, kernel_fn_closed_form = stax.serial(stax.Dense(1), stax.Gelu(), stax.Dense(1))
    kernel_closed_form = kernel_fn_closed_form(x1, x2)
    _, _, kernel_fn_numerical = stax.serial(
        stax.Dense(1), stax.ElementwiseNumerical(jax.nn.gelu, deg=25), stax.Dense(1)
    )
    kernel_numerical = kernel_fn_numerical(x1, x2)
    return dict(
        closed_nngp=kernel_closed_form.nngp,
        closed_ntk=kernel_closed_form.ntk,
        numerical_nngp=kernel_numerical.nngp,
        numerical_ntk=kernel_numerical.ntk,
    )


def readme_kernels():
    """README: kernels, `get` selections, continuing from a `Kernel`, ensemble predictions."""
    init_fn, apply_fn, kernel_fn = stax.serial(
        stax.Dense(512), stax.Relu(), stax.Dense(512), stax.Relu(), stax.Dense(1)
    )
    key1, key2 = random.split(random.PRNGKey(1))
    x1 = random.normal(key1, (10, 100))
    x2 = random.normal(key2, (20, 100))
    nngp = kernel_fn(x1, x2, "nngp")
    ntk = kernel_fn(x1, x2, "ntk")
    both = kernel_fn(x1, x2, ("nngp", "ntk"))
    kernel = kernel_fn(x1, x2)
    kernel = kernel_fn(kernel)
    x_train, x_test = x1, x2
    y_train = random.uniform(key1, shape=(10, 1))
    predict_fn = nt.predict.gradient_descent_mse_ensemble(kernel_fn, x_train, y_train)
    y_test_nngp = predict_fn(x_test=x_test, get="nngp")
    y_test_ntk = predict_fn(x_test=x_test, get="ntk")
    both_pred = predict_fn(x_test=x_test, get=("nngp", "ntk"))
    _, params = init_fn(key1, input_shape=x1.shape)
    return dict(
        nngp=nngp,
        ntk=ntk,
        both_nngp=both.nngp,
        both_ntk=both.ntk,
        kernel_kernel_nngp=kernel.nngp,
        kernel_kernel_ntk=kernel.ntk,
        y_test_nngp=y_test_nngp,
        y_test_ntk=y_test_ntk,
        both_pred_ntk=both_pred.ntk,
        apply=apply_fn(params, x1),
    )


def readme_wide_resnet():
    """README: the Wide ResNet (one block per group, on 32x32 images)."""

    def WideResnetBlock(channels, strides=(1, 1), channel_mismatch=False):
        Main = stax.serial(
            stax.Relu(),
            stax.Conv(channels, (3, 3), strides, padding="SAME"),
            stax.Relu(),
            stax.Conv(channels, (3, 3), padding="SAME"),
        )
        Shortcut = (
            stax.Identity()
            if not channel_mismatch
            else stax.Conv(channels, (3, 3), strides, padding="SAME")
        )
        return stax.serial(stax.FanOut(2), stax.parallel(Main, Shortcut), stax.FanInSum())

    def WideResnetGroup(n, channels, strides=(1, 1)):
        blocks = [WideResnetBlock(channels, strides, channel_mismatch=True)]
        for _ in range(n - 1):
            blocks += [WideResnetBlock(channels, (1, 1))]
        return stax.serial(*blocks)

    def WideResnet(block_size, k, num_classes):
        return stax.serial(
            stax.Conv(16, (3, 3), padding="SAME"),
            WideResnetGroup(block_size, int(16 * k)),
            WideResnetGroup(block_size, int(32 * k), (2, 2)),
            WideResnetGroup(block_size, int(64 * k), (2, 2)),
            stax.AvgPool((8, 8)),
            stax.Flatten(),
            stax.Dense(num_classes, 1.0, 0.0),
        )

    init_fn, apply_fn, kernel_fn = WideResnet(block_size=1, k=0.25, num_classes=2)
    x = random.normal(random.PRNGKey(3), (2, 32, 32, 3))
    _, params = init_fn(random.PRNGKey(4), x.shape)
    nngp, ntk = kernel_fn(x, None, ("nngp", "ntk"))
    return dict(nngp=nngp, ntk=ntk, apply=apply_fn(params, x))


def readme_linearize_and_empirical():
    """README: `linearize` and `empirical_kernel_fn` of a plain function of a PyTree."""

    def apply_fn(params, x):
        W, b = params
        return jnp.dot(x, W) + b

    W_0 = jnp.array([[1.0, 0.0], [0.0, 1.0]])
    b_0 = jnp.zeros((2,))
    apply_fn_lin = nt.linearize(apply_fn, (W_0, b_0))
    W = jnp.array([[1.5, 0.2], [0.1, 0.9]])
    b = b_0 + 0.2
    x = jnp.array([[0.3, 0.2], [0.4, 0.5], [1.2, 0.2]])
    logits = apply_fn_lin((W, b), x)

    params = (W_0, b_0)
    key1, key2 = random.split(random.PRNGKey(1), 2)
    x_train = random.normal(key1, (3, 2))
    x_test = random.normal(key2, (4, 2))
    y_train = random.uniform(key1, shape=(3, 2))
    kernel_fn = nt.empirical_kernel_fn(apply_fn)
    ntk_train_train = kernel_fn(x_train, None, "ntk", params)
    ntk_test_train = kernel_fn(x_test, x_train, "ntk", params)
    mse_predictor = nt.predict.gradient_descent_mse(ntk_train_train, y_train)
    t = 5.0
    y_train_0 = apply_fn(params, x_train)
    y_test_0 = apply_fn(params, x_test)
    y_train_t, y_test_t = mse_predictor(t, y_train_0, y_test_0, ntk_test_train)
    taylor = nt.taylor_expand(lambda p, x: jnp.tanh(apply_fn(p, x)), params, 2)((W, b), x)
    return dict(logits=logits, y_train_t=y_train_t, y_test_t=y_test_t, taylor=taylor)


PROGRAMS = {
    "infinite_fcn": infinite_fcn,
    "infinite_fcn_batched": lambda: infinite_fcn(batch_size=4),
    "function_space": function_space,
    "weight_space": weight_space,
    "empirical_ntk": empirical_ntk,
    "elementwise": elementwise,
    "elementwise_numerical": elementwise_numerical,
    "readme_kernels": readme_kernels,
    "readme_wide_resnet": readme_wide_resnet,
    "readme_linearize_and_empirical": readme_linearize_and_empirical,
}
