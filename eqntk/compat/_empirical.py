"""neural-tangents' finite-width tools on (apply_fn, params) pairs: empirical kernels,
`linearize`, `taylor_expand`, Monte Carlo kernels; computed by [`eqntk.empirical`][]."""

import enum
from collections.abc import Callable, Iterable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr

from .. import empirical
from .._callable import named_tuple
from ..empirical import Applied


class NtkImplementation(enum.IntEnum):
    """How the empirical NTK is computed (neural-tangents' `NtkImplementation`); every choice
    gives the same numbers."""

    AUTO = 0
    JACOBIAN_CONTRACTION = 1
    NTK_VECTOR_PRODUCTS = 2
    STRUCTURED_DERIVATIVES = 3


_IMPLEMENTATIONS = {
    0: "auto",
    1: "jacobian_contraction",
    2: "ntk_vector_products",
    3: "structured_derivatives",
}


def _with_kwargs(f, kwargs):
    if not kwargs:
        return f
    return _Partial(f, tuple(sorted(kwargs.items(), key=lambda kv: kv[0])))


class _Partial:
    """`f(params, x, **kwargs)`, hashable by identity (a static field of a module)."""

    def __init__(self, f, items):
        self.f, self.items = f, items

    def __call__(self, params, x):
        return self.f(params, x, **dict(self.items))


def _arrays(tree):
    """NumPy inputs as JAX arrays (eqntk's entry points take JAX arrays)."""
    return None if tree is None else jax.tree_util.tree_map(jnp.asarray, tree)


def _example_axes(axes, out_ndim: int):
    """neural-tangents' axes of the batched output as axes of one example's output."""
    axes = (axes,) if isinstance(axes, int) else tuple(axes)
    result = []
    for a in axes:
        a = a % out_ndim
        if a == 0:
            raise ValueError("`trace_axes` and `diagonal_axes` cannot contain the batch axis.")
        result.append(a - 1)
    return tuple(result)


def _vmap_axis(vmap_axes) -> int:
    if vmap_axes is None:
        return 0
    if isinstance(vmap_axes, int):
        return vmap_axes
    raise NotImplementedError(
        f"`vmap_axes` must be None or an integer batch axis of the inputs, got {vmap_axes!r}."
    )


def _kernels(
    f, params, x1, x2, names, trace_axes, diagonal_axes, vmap_axes, implementation, kwargs
):
    axis = _vmap_axis(vmap_axes)
    x1, x2 = _arrays(x1), _arrays(x2)
    model = Applied(params, _with_kwargs(f, kwargs), batch_axis=axis)
    example = jax.tree_util.tree_map(lambda a: jnp.take(a, 0, axis=axis), x1)
    out = jax.eval_shape(model, example)
    ndim = jax.tree_util.tree_leaves(out)[0].ndim + 1
    return empirical.empirical_kernel(
        model,
        x1,
        x2,
        get=names,
        implementation=_IMPLEMENTATIONS[int(implementation)],
        trace_axes=_example_axes(trace_axes, ndim),
        diagonal_axes=_example_axes(diagonal_axes, ndim),
        vmap_axes=axis,
    )


def empirical_kernel_fn(
    f,
    trace_axes=(-1,),
    diagonal_axes=(),
    vmap_axes=None,
    implementation=NtkImplementation.JACOBIAN_CONTRACTION,
    **_unused,
):
    """The empirical NNGP and NTK of `f(params, x)` (neural-tangents'
    `empirical_kernel_fn`), computed by [`eqntk.empirical_kernel`][].

    `f` is any function of parameters (a PyTree) and a batch of inputs, e.g. a stax
    `apply_fn` or a Flax/Haiku `apply`; each example is fed as a batch of one.

    **Returns:**

    `kernel_fn(x1, x2, get, params, **apply_fn_kwargs)`: an array for a string `get`, a named
    tuple for a tuple or `None` (`("nngp", "ntk")`).

    **Example:**

    ```python
    import jax.random as jr
    import eqntk.compat as nt
    from eqntk.compat import stax

    init_fn, apply_fn, _ = stax.serial(stax.Dense(32), stax.Relu(), stax.Dense(2))
    _, params = init_fn(jr.key(0), (-1, 3))
    kernel_fn = nt.empirical_kernel_fn(apply_fn)
    x = jr.normal(jr.key(1), (4, 3))
    nngp, ntk = kernel_fn(x, None, ("nngp", "ntk"), params)
    assert ntk.shape == (4, 4)
    ```
    """

    def kernel_fn(x1, x2, get, params, **apply_fn_kwargs):
        names = ("nngp", "ntk") if get is None else (get,) if isinstance(get, str) else get
        out = _kernels(
            f,
            params,
            x1,
            x2,
            tuple(names),
            trace_axes,
            diagonal_axes,
            vmap_axes,
            implementation,
            apply_fn_kwargs,
        )
        if isinstance(get, str):
            return out if not isinstance(out, tuple) else getattr(out, get)
        values = out if isinstance(out, tuple) else (out,)
        return named_tuple("EmpiricalKernel", tuple(names))(*values)

    return kernel_fn


def empirical_ntk_fn(
    f,
    trace_axes=(-1,),
    diagonal_axes=(),
    vmap_axes=None,
    implementation=NtkImplementation.JACOBIAN_CONTRACTION,
    **_unused,
):
    """The empirical NTK of `f(params, x)` (neural-tangents' `empirical_ntk_fn`).

    **Returns:** `ntk_fn(x1, x2, params, **apply_fn_kwargs)`.

    **Example:**

    ```python
    import jax.random as jr
    import eqntk.compat as nt
    from eqntk.compat import stax

    init_fn, apply_fn, _ = stax.serial(stax.Dense(32), stax.Relu(), stax.Dense(1))
    _, params = init_fn(jr.key(0), (-1, 3))
    x = jr.normal(jr.key(1), (4, 3))
    assert nt.empirical_ntk_fn(apply_fn)(x, None, params).shape == (4, 4)
    ```
    """
    kernel_fn = empirical_kernel_fn(f, trace_axes, diagonal_axes, vmap_axes, implementation)
    return lambda x1, x2, params, **kw: kernel_fn(x1, x2, "ntk", params, **kw)


def empirical_nngp_fn(f, trace_axes=(-1,), diagonal_axes=()):
    """The empirical NNGP of `f(params, x)` (neural-tangents' `empirical_nngp_fn`).

    **Returns:** `nngp_fn(x1, x2, params, **apply_fn_kwargs)`.

    **Example:**

    ```python
    import jax.random as jr
    import eqntk.compat as nt
    from eqntk.compat import stax

    init_fn, apply_fn, _ = stax.serial(stax.Dense(32), stax.Relu(), stax.Dense(1))
    _, params = init_fn(jr.key(0), (-1, 3))
    x = jr.normal(jr.key(1), (4, 3))
    assert nt.empirical_nngp_fn(apply_fn)(x, None, params).shape == (4, 4)
    ```
    """
    kernel_fn = empirical_kernel_fn(f, trace_axes, diagonal_axes)
    return lambda x1, x2, params, **kw: kernel_fn(x1, x2, "nngp", params, **kw)


def empirical_ntk_vp_fn(f, x1, x2, params, **apply_fn_kwargs):
    """The product of the empirical NTK of `f` with cotangents (neural-tangents'
    `empirical_ntk_vp_fn`), by [`eqntk.empirical_ntk_vp`][].

    **Returns:** `ntk_vp_fn(cotangents)`, `cotangents` shaped like `f(params, x2)`.

    **Example:**

    ```python
    import jax.numpy as jnp
    import jax.random as jr
    import eqntk.compat as nt
    from eqntk.compat import stax

    init_fn, apply_fn, _ = stax.serial(stax.Dense(16), stax.Relu(), stax.Dense(1))
    _, params = init_fn(jr.key(0), (-1, 3))
    x = jr.normal(jr.key(1), (4, 3))
    v = jr.normal(jr.key(2), (4, 1))
    ntk = nt.empirical_ntk_fn(apply_fn)(x, None, params)
    assert jnp.allclose(nt.empirical_ntk_vp_fn(apply_fn, x, None, params)(v), ntk @ v)
    ```
    """
    model = Applied(params, _with_kwargs(f, apply_fn_kwargs))
    x1, x2 = _arrays(x1), _arrays(x2)
    return lambda cotangents: empirical.empirical_ntk_vp(model, x1, x2, _arrays(cotangents))


class _Batched(eqx.Module):
    """`f(params, *args)`: the whole call, not one example, for Taylor expansions."""

    params: Any
    f: Callable = eqx.field(static=True)

    def __call__(self, args, *, key=None):
        return self.f(self.params, *args)


def taylor_expand(f, params, degree: int):
    """`f` expanded to degree `degree` in its parameters around `params` (neural-tangents'
    `taylor_expand`), by [`eqntk.taylor_expand`][].

    **Returns:** `f_tayl(p, *args, **kwargs)`.

    **Example:**

    ```python
    import jax.numpy as jnp
    import eqntk.compat as nt

    f = lambda p, x: jnp.sin(p * x)
    f2 = nt.taylor_expand(f, 0.5, 2)
    x = jnp.ones(3)
    assert jnp.allclose(f2(0.5, x), f(0.5, x))
    ```
    """

    def f_tayl(p, *args, **kwargs):
        fk = _with_kwargs(lambda q, a, **kw: f(q, *a, **kw), kwargs)
        # Python scalars are parameters too: as arrays, they are leaves the expansion sees.
        expansion = empirical.taylor_expand(
            _Batched(_arrays(params), lambda q, *a: fk(q, a)), degree
        )
        new = eqx.filter(_Batched(_arrays(p), expansion.model.f), eqx.is_inexact_array)
        expansion = eqx.tree_at(lambda e: e.params, expansion, new)
        return expansion(args)

    return f_tayl


def linearize(f, params):
    """`f` linearised in its parameters around `params` (neural-tangents' `linearize`), by
    [`eqntk.linearize`][].

    **Returns:** `f_lin(p, *args, **kwargs)`.

    **Example:**

    ```python
    import jax.numpy as jnp
    import eqntk.compat as nt

    f = lambda p, x: jnp.sin(p["w"] * x)
    f_lin = nt.linearize(f, {"w": jnp.array(0.5)})
    x = jnp.ones(3)
    expected = jnp.sin(0.5 * x) + jnp.cos(0.5 * x) * x * 0.1
    assert jnp.allclose(f_lin({"w": jnp.array(0.6)}, x), expected)
    ```
    """
    return taylor_expand(f, params, 1)


def monte_carlo_kernel_fn(
    init_fn,
    apply_fn,
    key,
    n_samples,
    batch_size=0,
    device_count=-1,
    store_on_device=True,
    trace_axes=(-1,),
    diagonal_axes=(),
    vmap_axes=None,
    implementation=NtkImplementation.JACOBIAN_CONTRACTION,
    **_unused,
):
    """Monte Carlo estimates of the NNGP and NTK over random initialisations (neural-tangents'
    `monte_carlo_kernel_fn`), with neural-tangents' keys: sample `s` uses
    `init_fn(split(k_s)[0], x1.shape)` and `rng=split(k_s)[1]`, `k_s` the `s`-th key of the
    chain `key, k_s = split(key)`.

    `n_samples` is an integer, or a collection of integers: then `kernel_fn` returns a
    generator of the estimates at each sample count (sorted), from one pass over the samples.
    `batch_size`, `device_count` and `store_on_device` are accepted; the samples are scanned.

    **Returns:** `kernel_fn(x1, x2=None, get=None, **apply_fn_kwargs)`.

    **Example:**

    ```python
    import jax.random as jr
    import eqntk.compat as nt
    from eqntk.compat import stax

    init_fn, apply_fn, _ = stax.serial(stax.Dense(64), stax.Relu(), stax.Dense(1))
    x = jr.normal(jr.key(1), (3, 2))
    kernel_fn = nt.monte_carlo_kernel_fn(init_fn, apply_fn, jr.key(0), [2, 4])
    estimates = list(kernel_fn(x, None, "nngp"))
    assert len(estimates) == 2 and estimates[1].shape == (3, 3)
    ```
    """
    del batch_size, device_count, store_on_device
    if isinstance(n_samples, int):
        counts, as_generator = [n_samples], False
    elif isinstance(n_samples, Iterable):
        counts, as_generator = sorted(set(n_samples)), True
    else:
        raise TypeError(f"`n_samples` must be an integer or integers, got {type(n_samples)}.")
    if not counts or any(not isinstance(n, int) or n <= 0 for n in counts):
        raise ValueError(f"`n_samples` must hold positive integers, got {n_samples!r}.")
    kernel_fn = empirical_kernel_fn(apply_fn, trace_axes, diagonal_axes, vmap_axes, implementation)

    def sample_keys(n):
        keys, k = [], key
        for _ in range(n):
            k, sub = jr.split(k)
            keys.append(sub)
        return jnp.stack(keys)

    def estimates(x1, x2, get, kwargs):
        names = ("nngp", "ntk") if get is None else (get,) if isinstance(get, str) else get
        shape = jax.tree_util.tree_map(lambda a: a.shape, x1)

        def one(k):
            init_key, dropout_key = jr.split(k)
            _, params = init_fn(init_key, shape)
            kw = dict(kwargs)
            kw.setdefault("rng", dropout_key)
            return kernel_fn(x1, x2, tuple(names), params, **_accepted(apply_fn, kw))

        @jax.jit
        def add(total, keys):
            def step(acc, k):
                return jax.tree_util.tree_map(jnp.add, acc, one(k)), None

            return jax.lax.scan(step, total, keys)[0]

        keys = sample_keys(counts[-1])
        total = jax.tree_util.tree_map(jnp.zeros_like, jax.eval_shape(one, keys[0]))
        done = 0
        for n in counts:
            total = add(total, keys[done:n])
            done = n
            mean = jax.tree_util.tree_map(lambda a: a / n, total)
            yield mean if not isinstance(get, str) else mean[0]

    def mc_kernel_fn(x1, x2=None, get=None, **apply_fn_kwargs):
        gen = estimates(x1, x2, get, apply_fn_kwargs)
        if as_generator:
            return gen
        return next(iter(gen))

    return mc_kernel_fn


def _accepted(apply_fn, kwargs):
    """Drop `rng` for apply functions that take no keyword arguments."""
    import inspect

    try:
        sig = inspect.signature(apply_fn)
    except (TypeError, ValueError):
        return kwargs
    params = sig.parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return kwargs
    names = {p.name for p in params}
    return {k: v for k, v in kwargs.items() if k in names}
