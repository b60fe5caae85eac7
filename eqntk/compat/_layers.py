"""neural-tangents' `(init_fn, apply_fn, kernel_fn)` layers, built on eqntk modules.

Every compat layer is a `Layer`: from the channel-first shape of one example it builds the
eqntk module (an [`eqntk.nn`][] layer) whose finite forward pass is `apply_fn` and whose
[`eqntk.limit`][] is `kernel_fn`. `init_fn` draws the parameters in neural-tangents' layouts
(`Dense` weights `(in, out)`, convolutions `HWIO`) with neural-tangents' splitting of the PRNG
key, and `apply_fn` puts them into the module. Batches are neural-tangents' batched arrays
(`NHWC` by default); the module sees one channel-first example at a time (`jax.vmap`).
"""

import abc
import functools as ft
import math
import typing
from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr

from .. import nn
from ..limits import (
    AbstractRule,
    AbstractStreamsRule,
    Kernel as EqKernel,
    Requirements,
    limit,
    register,
)
from ..limits._registry import KernelTree, RequirementsTree
from ..nn._structure import FlattenRule
from ._kernel import Kernel, cf_shape, from_cf, from_eqntk, nt_shape, to_cf, to_eqntk


Shape = Any  # a channel-first example shape `(C, *spatial)`, or a list of them (streams)

_DUMMY_KEY_SEED = 0


class Layer(abc.ABC):
    """One neural-tangents layer: shapes, parameters and the eqntk module that computes it.

    `batch_axis` and `channel_axis` give the layout of the batched arrays that enter the layer.
    """

    batch_axis: int = 0
    channel_axis: int = -1
    # Whether the layer was given a layout other than neural-tangents' default: the first such
    # layer of a `serial` sets the layout of the network's inputs and outputs.
    _explicit_axes: bool = False

    @abc.abstractmethod
    def out_shape(self, shape: Shape) -> Shape:
        """The channel-first example shape of the output, for inputs of shape `shape`."""

    def init(self, key, shape: Shape) -> Any:
        """Parameters in neural-tangents' layout; `()` for layers without parameters."""
        del key, shape
        return ()

    @abc.abstractmethod
    def build(self, shape: Shape) -> Any:
        """The eqntk module for inputs of shape `shape` (with any parameters)."""

    def with_params(self, module: Any, params: Any, shape: Shape) -> Any:
        """`module` with the parameters `params` (neural-tangents' layout) put in."""
        del params, shape
        return module

    def template(self, shape: Shape) -> Any:
        """`build(shape)`. Its weights are placeholders: callers build it inside a trace
        (`jit`, `eval_shape`), where the unused random draws cost nothing."""
        return self.build(shape)

    def module(self, shape: Shape, params: Any = None) -> Any:
        """The eqntk module for `shape`, holding `params` when given."""
        m = self.template(shape)
        return m if params is None else self.with_params(m, params, shape)


def _freeze(shape):
    if isinstance(shape, list | tuple) and shape and isinstance(shape[0], list | tuple):
        return tuple(_freeze(s) for s in shape)
    return tuple(shape)


def _is_multi(shape) -> bool:
    return isinstance(shape, list)


def dummy_key():
    return jr.key(_DUMMY_KEY_SEED)


# ----------------------------------------------------------------------------------------------
# The triple.


class InitFn:
    """neural-tangents' `init_fn(rng, input_shape) -> (output_shape, params)`."""

    def __init__(self, layer: Layer):
        self.layer = layer

    def __call__(self, rng, input_shape):
        layer = self.layer
        shape = _cf_shapes(input_shape, layer.batch_axis, layer.channel_axis)
        out = layer.out_shape(shape)
        if isinstance(layer, UserLayer) or _is_multi(shape):
            params = layer.init(rng, shape)
        else:
            # One compilation for the whole draw, not one per random array.
            params = _init_jit(layer, rng, tuple(shape))
        return _nt_shapes(out, _batch_size(input_shape, layer), layer), params


@ft.partial(jax.jit, static_argnums=(0, 2))
def _init_jit(layer, rng, shape):
    return layer.init(rng, shape)


class ApplyFn:
    """neural-tangents' `apply_fn(params, inputs, **kwargs) -> outputs`."""

    def __init__(self, layer: Layer):
        self.layer = layer

    def __call__(self, params, inputs, *, rng=None, mask_constant=None, pattern=None, **kwargs):
        del kwargs
        return _apply_jit(self.layer, params, inputs, rng, mask_constant, pattern)


@ft.partial(jax.jit, static_argnums=(0, 4))
def _apply_jit(layer, params, inputs, rng, mask_constant, pattern):
    x = jax.tree_util.tree_map(
        lambda a: to_cf(jnp.asarray(a), layer.batch_axis, layer.channel_axis), inputs
    )
    shape = _example_shapes(x)
    model = layer.module(shape, params)
    n = jax.tree_util.tree_leaves(x)[0].shape[0]
    side = {}
    if mask_constant is not None and not isinstance(x, list | tuple) and x.ndim > 2:
        # Positions whose every channel equals `mask_constant` are padding: the layers that
        # mix positions ignore them, as in the kernel function (`nn.with_inputs`).
        side["mask"] = jnp.all(x == mask_constant, axis=1)
    if pattern is not None:
        side["pattern"] = jnp.asarray(pattern)
    keys = None if rng is None else jr.split(rng, n)

    def one(e, k, s):
        m = nn.with_inputs(model, **s) if s else model
        return m(e) if k is None else m(e, key=k)

    y = jax.vmap(one)(x, keys, side)
    if "mask" in side:
        return _masked_output(y, side["mask"], layer)
    return jax.tree_util.tree_map(
        lambda a: from_cf(a, layer.batch_axis, layer.channel_axis) if a.ndim > 1 else a, y
    )


class MaskedArray(typing.NamedTuple):
    """Outputs of an `apply_fn` called with `mask_constant`: the values, and a boolean mask
    (`True` at padded positions, one entry per position) broadcastable to them."""

    masked_value: Any
    mask: Any


def _masked_output(y, mask, layer):
    """neural-tangents' `MaskedArray` output: positions that are padding at the input stay
    padding when the positions are unchanged; reduced outputs have nothing masked."""
    if y.ndim > 2 and y.shape[2:] == mask.shape[1:]:
        out_mask = mask[:, None]
        y = jnp.where(out_mask, jnp.zeros((), y.dtype), y)
    else:
        out_mask = jnp.zeros((y.shape[0], 1) + (1,) * (y.ndim - 2), bool)
    return MaskedArray(
        from_cf(y, layer.batch_axis, layer.channel_axis),
        from_cf(out_mask, layer.batch_axis, layer.channel_axis),
    )


class KernelFn:
    """neural-tangents' `kernel_fn(x1_or_kernel, x2=None, get=None, **kwargs)`."""

    def __init__(self, layer: Layer):
        self.layer = layer

    def __call__(
        self,
        x1_or_kernel,
        x2=None,
        get=None,
        *,
        diagonal_batch: bool = True,
        diagonal_spatial: bool = False,
        mask_constant=None,
        pattern=(None, None),
        **kwargs,
    ):
        if isinstance(get, list):
            get = tuple(get)
        pattern = (None, None) if pattern is None else tuple(pattern)
        names = None if get is None else (get,) if isinstance(get, str) else tuple(get)
        needs_all = names is None or "ntk" in names or not set(names) <= set(_GET_NAMES)
        out, extra = _kernel_jit(
            self.layer,
            x1_or_kernel,
            x2,
            "all" if needs_all else "nngp",
            diagonal_batch,
            diagonal_spatial,
            mask_constant,
            pattern,
        )
        return _select(out, get, diagonal_batch, extra)


@ft.partial(jax.jit, static_argnums=(0, 3, 4, 5, 6))
def _kernel_jit(layer, x1, x2, need, diagonal_batch, diagonal_spatial, mask_constant, pattern):
    # One compilation serves every `get` that needs the NTK (or only the NNGP): small kernels
    # are dominated by compilation, large ones by the NTK only when it is asked for.
    return kernel_of(layer, x1, x2, need, diagonal_batch, diagonal_spatial, mask_constant, pattern)


def triple(layer: Layer):
    """The `(init_fn, apply_fn, kernel_fn)` of `layer`."""
    return InitFn(layer), ApplyFn(layer), KernelFn(layer)


def as_layer(item: Any) -> Layer:
    """The `Layer` behind a triple (or a user triple, wrapped)."""
    if isinstance(item, Layer):
        return item
    if not isinstance(item, tuple | list) or len(item) not in (3, 4):
        raise TypeError(
            f"A layer must be an `(init_fn, apply_fn, kernel_fn)` triple, got {type(item)}."
        )
    kernel_fn = item[2]
    if isinstance(kernel_fn, KernelFn):
        return kernel_fn.layer
    return UserLayer(item[0], item[1], kernel_fn)


def _cf_shapes(input_shape, batch_axis, channel_axis):
    if isinstance(input_shape, list) or (
        isinstance(input_shape, tuple) and input_shape and isinstance(input_shape[0], tuple)
    ):
        return [_cf_shapes(s, batch_axis, channel_axis) for s in input_shape]
    return cf_shape(tuple(input_shape), batch_axis, channel_axis)


def _batch_size(input_shape, layer):
    if isinstance(input_shape, list) or (
        isinstance(input_shape, tuple) and input_shape and isinstance(input_shape[0], tuple)
    ):
        return _batch_size(input_shape[0], layer)
    return input_shape[layer.batch_axis % len(input_shape)]


def _nt_shapes(out, n, layer):
    if _is_multi(out):
        return [_nt_shapes(o, n, layer) for o in out]
    return nt_shape(tuple(out), n, layer.batch_axis, layer.channel_axis)


def _example_shapes(x):
    if isinstance(x, list | tuple):
        return [_example_shapes(a) for a in x]
    return tuple(x.shape[1:])


# ----------------------------------------------------------------------------------------------
# kernel_fn.


def kernel_of(layer, x1, x2, need, diagonal_batch, diagonal_spatial, mask_constant, pattern):
    """The compat `Kernel` (`need="all"`) or a dict of `nngp`, `cov1`, `cov2` (`"nngp"`), and
    the full-batch covariances for `diagonal_batch=False` (or None)."""
    ba, ca = layer.batch_axis, layer.channel_axis
    pattern1, pattern2 = pattern if pattern is not None else (None, None)
    if isinstance(x1, Kernel | list | tuple) and (
        isinstance(x1, Kernel) or (x1 and isinstance(x1[0], Kernel))
    ):
        if x2 is not None:
            raise ValueError("`x2` must be None when `x1` is a `Kernel`.")
        ks = [x1] if isinstance(x1, Kernel) else list(x1)
        eks = [to_eqntk(k) for k in ks]
        shape = [ek.shape1 for ek in eks] if len(eks) > 1 else eks[0].shape1
        model = layer.template(shape)
        no_ntk = any(ek.ntk is None for ek in eks)
        if no_ntk:
            eks = [ek.replace(ntk=jnp.zeros_like(ek.nngp)) for ek in eks]
        start = eks[0] if len(eks) == 1 else tuple(eks)
        out = _apply_to_kernel(model, start, diagonal_spatial)
        ba, ca = ks[0].batch_axis, ks[0].channel_axis
        return _to_compat(out, ba, ca, no_ntk), None
    x1 = jnp.asarray(x1)
    x2 = None if x2 is None else jnp.asarray(x2)
    if x2 is not None and x2.ndim != x1.ndim:
        raise ValueError(
            f"`x2` must have the rank of `x1` (shape {x1.shape}), got shape {x2.shape}."
        )
    x1_cf = to_cf(x1, ba, ca)
    x2_cf = None if x2 is None else to_cf(x2, ba, ca)
    mask1 = mask2 = None
    if mask_constant is not None:
        mask1 = jnp.all(x1_cf == mask_constant, axis=1)
        mask2 = None if x2_cf is None else jnp.all(x2_cf == mask_constant, axis=1)
        if x1_cf.ndim == 2:  # vectors have no positions to mask
            mask1 = mask2 = None
    model = layer.template(tuple(x1_cf.shape[1:]))
    fn = limit(model)
    if x2 is None:
        pattern2 = None
    out = fn(
        x1_cf,
        x2_cf,
        get=None if need == "all" else ("nngp", "cov1", "cov2"),
        diagonal_spatial=diagonal_spatial,
        mask1=mask1,
        mask2=mask2,
        pattern1=pattern1,
        pattern2=pattern2,
    )
    if need == "all":
        result = _to_compat(out, ba, ca, False)
    else:
        result = {"nngp": out.nngp, "cov1": out.cov1, "cov2": None if x2 is None else out.cov2}
    extra = None
    if not diagonal_batch:
        # neural-tangents' `diagonal_batch=False`: `cov1`/`cov2` hold every pair of a batch.
        full1 = fn(
            x1_cf, get="nngp", diagonal_spatial=diagonal_spatial, mask1=mask1, pattern1=pattern1
        )
        full2 = None
        if x2_cf is not None:
            full2 = fn(
                x2_cf, get="nngp", diagonal_spatial=diagonal_spatial, mask1=mask2, pattern1=pattern2
            )
        extra = (full1, full2)
    return result, extra


def _apply_to_kernel(model, k, diagonal_spatial):
    return limit(model)(k, get=None, diagonal_spatial=diagonal_spatial)


def _to_compat(out, ba, ca, no_ntk):
    def one(ek):
        k = from_eqntk(ek, ba, ca)
        return k.replace(ntk=None) if no_ntk else k

    if isinstance(out, tuple | list):
        return [one(ek) for ek in out]
    return one(out)


_GET_NAMES = ("nngp", "ntk", "cov1", "cov2")


class _Arrays:
    """The NNGP-only results, read like a `Kernel`."""

    def __init__(self, nngp, cov1, cov2):
        self.nngp, self.cov1, self.cov2 = nngp, cov1, cov2

    def replace(self, cov1, cov2, diagonal_batch):
        del diagonal_batch
        return _Arrays(self.nngp, cov1, cov2)


def _select(k, get, diagonal_batch, extra):
    if isinstance(k, list):
        return [_select(ki, get, diagonal_batch, extra) for ki in k]
    if isinstance(k, dict):
        k = _Arrays(**k)
    if not diagonal_batch and extra is not None:
        full1, full2 = extra
        k = k.replace(cov1=full1, cov2=full2, diagonal_batch=False)
    if get is None:
        return k
    names = (get,) if isinstance(get, str) else tuple(get)
    for name in names:
        if not isinstance(name, str) or not hasattr(k, name):
            raise ValueError(
                f"`get` must name fields of `Kernel` such as {_GET_NAMES}, got {get!r}."
            )
    values = [k.cov1 if (n == "cov2" and k.cov2 is None) else getattr(k, n) for n in names]
    if isinstance(get, str):
        return values[0]
    from .._callable import named_tuple

    return named_tuple("Kernel", names)(*values)


# ----------------------------------------------------------------------------------------------
# Combinators.


class Serial(Layer):
    def __init__(self, layers: Sequence[Layer]):
        self.layers = list(layers)
        first = next((lay for lay in self.layers if lay.__dict__.get("_explicit_axes")), None)
        if first is not None:
            self.batch_axis, self.channel_axis = first.batch_axis, first.channel_axis

    def out_shape(self, shape):
        for lay in self.layers:
            shape = lay.out_shape(shape)
        return shape

    def init(self, key, shape):
        params = []
        for lay in self.layers:
            key, sub = jr.split(key)
            params.append(lay.init(sub, shape))
            shape = lay.out_shape(shape)
        return tuple(params)

    def _shapes(self, shape):
        shapes = []
        for lay in self.layers:
            shapes.append(shape)
            shape = lay.out_shape(shape)
        return shapes

    def build(self, shape):
        return nn.Sequential([lay.template(s) for lay, s in zip(self.layers, self._shapes(shape))])

    def module(self, shape, params=None):
        if params is None:
            return self.template(shape)
        return nn.Sequential(
            [lay.module(s, p) for lay, s, p in zip(self.layers, self._shapes(shape), params)]
        )


class ParallelLayer(Layer):
    def __init__(self, layers: Sequence[Layer]):
        self.layers = list(layers)

    def out_shape(self, shape):
        return [lay.out_shape(s) for lay, s in zip(self.layers, _streams(shape, len(self.layers)))]

    def init(self, key, shape):
        keys = jr.split(key, len(self.layers))
        streams = _streams(shape, len(self.layers))
        return tuple(lay.init(k, s) for lay, k, s in zip(self.layers, keys, streams))

    def build(self, shape):
        streams = _streams(shape, len(self.layers))
        return nn.Parallel([lay.template(s) for lay, s in zip(self.layers, streams)])

    def module(self, shape, params=None):
        if params is None:
            return self.template(shape)
        streams = _streams(shape, len(self.layers))
        return nn.Parallel([lay.module(s, p) for lay, s, p in zip(self.layers, streams, params)])


def _streams(shape, n):
    if not _is_multi(shape) or len(shape) != n:
        raise ValueError(
            f"`parallel` of {n} layers expects {n} input streams (from `FanOut({n})`), got "
            f"input shape {shape}."
        )
    return shape


class RepeatLayer(Layer):
    def __init__(self, layer: Layer, n: int):
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"`n` must be a positive integer, got {n!r}.")
        self.layer, self.n = layer, n

    def out_shape(self, shape):
        out = self.layer.out_shape(shape)
        if _freeze(out) != _freeze(shape):
            raise ValueError(
                f"`repeat` needs a layer that keeps the shape of its input; it maps {shape} "
                f"to {out}. Use `serial(*([layer] * n))` instead."
            )
        return out

    def init(self, key, shape):
        def step(k, _):
            k, sub = jr.split(k)
            return k, self.layer.init(sub, shape)

        _, params = jax.lax.scan(step, key, None, self.n)
        return params

    def build(self, shape):
        m = self.layer.template(shape)
        return nn.Repeat(lambda _: m, self.n, key=dummy_key())

    def module(self, shape, params=None):
        if params is None:
            return self.template(shape)
        template = self.layer.template(shape)
        static = eqx.partition(template, eqx.is_array)[1]
        stacked = jax.vmap(lambda p: eqx.filter(self.layer.module(shape, p), eqx.is_array))(params)
        return eqx.tree_at(lambda r: r.layers, self.template(shape), eqx.combine(stacked, static))


class Simple(Layer):
    """A layer without parameters, mapped onto a fixed eqntk module."""

    def __init__(
        self,
        make: Callable[[Shape], Any],
        shape_fn: Callable[[Shape], Shape] | None = None,
        batch_axis: int = 0,
        channel_axis: int = -1,
    ):
        self.make = make
        self.shape_fn = shape_fn
        self.batch_axis, self.channel_axis = batch_axis, channel_axis

    def out_shape(self, shape):
        if self.shape_fn is not None:
            return self.shape_fn(shape)
        return traced_shape(self, shape)

    def build(self, shape):
        return self.make(shape)


def traced_shape(layer, shape):
    dtype = jnp.asarray(0.0).dtype
    if _is_multi(shape):
        x = tuple(jax.ShapeDtypeStruct(tuple(s), dtype) for s in shape)
    else:
        x = jax.ShapeDtypeStruct(tuple(shape), dtype)
    out = jax.eval_shape(lambda a: layer.build(shape)(a), x)
    if isinstance(out, list | tuple):
        return [tuple(o.shape) for o in out]
    return tuple(out.shape)


# ----------------------------------------------------------------------------------------------
# Affine layers.


class AffineLayer(Layer):
    """A layer with weights and biases (`DenseLayer`, `ConvLayer`): the parameterisation with
    its width scales `s`, the scale of parameters drawn in the standard parameterisation, and
    the arguments of the eqntk module."""

    def __init__(self, out_channels, W_std, b_std, parameterization, s):
        self.out_channels, self.W_std, self.b_std = out_channels, W_std, b_std
        self.parameterization = parameterization.lower()
        if self.parameterization not in ("ntk", "standard"):
            raise ValueError(f"Parameterization not supported: {parameterization!r}.")
        self.s = tuple(s)

    def _width(self):
        """The real number of output channels (`s1` times the nominal one when standard)."""
        return self.out_channels * (self.s[1] if self.parameterization == "standard" else 1)

    def _scale_standard(self, w, b, fan_in):
        """Drawn standard-normal parameters `(w, b)` as the layer holds them: unchanged in the
        NTK parameterisation, scaled by $\\sigma_W / \\sqrt{n}$ (nominal fan-in `fan_in`) and
        $\\sigma_b$ in the standard one."""
        if self.parameterization == "standard":
            w = w * (self.W_std / fan_in**0.5)
            b = None if b is None else b * typing.cast(float, self.b_std)
        return (w, b)

    def _module_args(self, shape) -> tuple[int, dict[str, Any]]:
        """The nominal input width of the eqntk module for inputs of shape `shape`, and its
        keyword arguments for the parameterisation."""
        s = self.s if self.parameterization == "standard" else (1, 1)
        options = dict(
            W_std=self.W_std,
            b_std=self.b_std,
            parameterization=self.parameterization,
            s=s,
            key=dummy_key(),
        )
        return shape[0] // s[0], options


def _put_params(module, w, b):
    """`module` with the weight `w` (in the module's layout) and the bias `b`, if both have one
    (the bias reshaped to the module's)."""
    module = eqx.tree_at(lambda m: m.weight, module, w)
    if b is not None and module.bias is not None:
        module = eqx.tree_at(lambda m: m.bias, module, jnp.reshape(b, module.bias.shape))
    return module


class DenseLayer(AffineLayer):
    def __init__(self, out_dim, W_std, b_std, batch_axis, channel_axis, parameterization, s):
        super().__init__(out_dim, W_std, b_std, parameterization, s)
        self.batch_axis, self.channel_axis = batch_axis, channel_axis
        self._explicit_axes = (batch_axis, channel_axis) != (0, -1)

    def out_shape(self, shape):
        return (self._width(),) + tuple(shape[1:])

    def init(self, key, shape):
        k1, k2 = jr.split(key)
        n_in = shape[0]
        w = jr.normal(k1, (n_in, self._width()))
        b = None
        if self.b_std is not None:
            b_shape = [1] * (len(shape) + 1)
            b_shape[self.channel_axis] = self._width()
            b = jr.normal(k2, tuple(b_shape))
        return self._scale_standard(w, b, n_in / self.s[0])

    def build(self, shape):
        n_in, options = self._module_args(shape)
        return nn.Dense(n_in, self.out_channels, **options)

    def with_params(self, module, params, shape):
        w, b = params
        return _put_params(module, jnp.asarray(w).T, b)


class ConvLayer(AffineLayer):
    def __init__(
        self,
        kind,
        out_chan,
        filter_shape,
        strides,
        padding,
        W_std,
        b_std,
        dimension_numbers,
        parameterization,
        s,
    ):
        super().__init__(out_chan, W_std, b_std, parameterization, s)
        self.kind = kind
        self.filter_shape = tuple(filter_shape)
        self.strides = None if strides is None else tuple(strides)
        self.padding = _padding_name(padding)
        n = len(self.filter_shape)
        if dimension_numbers is None:
            spatial = "DHW"[-n:] if n <= 3 else "".join(chr(ord("a") + i) for i in range(n))
            dimension_numbers = ("N" + spatial + "C", spatial + "IO", "N" + spatial + "C")
        lhs, rhs, out = dimension_numbers
        if lhs != out:
            raise NotImplementedError(
                f"`dimension_numbers` with different input and output layouts ({lhs!r}, "
                f"{out!r}) are not supported."
            )
        self.lhs_spec, self.rhs_spec = lhs, rhs
        self.batch_axis, self.channel_axis = lhs.index("N"), lhs.index("C")
        spatial_lhs = [c for c in lhs if c not in "NC"]
        spatial_rhs = [c for c in rhs if c not in "IO"]
        if spatial_lhs != spatial_rhs:
            raise NotImplementedError(
                f"`dimension_numbers` must order the spatial axes of the input and the filter "
                f"alike, got {dimension_numbers!r}."
            )
        self._explicit_axes = (self.batch_axis, self.channel_axis) != (0, len(lhs) - 1)

    def out_shape(self, shape):
        return traced_shape(self, shape)

    def init(self, key, shape):
        k1, k2 = jr.split(key)
        n_in = shape[0]
        width = self._width()
        spatial = iter(self.filter_shape)
        w_shape = [
            width if c == "O" else n_in if c == "I" else next(spatial) for c in self.rhs_spec
        ]
        if self.kind == "local":
            # Locally connected weights: eqntk's own layout `(out, in * taps, *spatial_out)`.
            m = eqx.filter_eval_shape(self.build, shape)
            w = jr.normal(k1, m.weight.shape)
            b = None if self.b_std is None else jr.normal(k2, m.bias.shape)
        else:
            w = jr.normal(k1, tuple(w_shape))
            b = None
            if self.b_std is not None:
                b_shape = [width if c == "C" else 1 for c in self.lhs_spec]
                b = jr.normal(k2, tuple(b_shape))
        return self._scale_standard(w, b, n_in / self.s[0] * math.prod(self.filter_shape))

    def build(self, shape):
        cls = {"conv": nn.Conv, "transpose": nn.ConvTranspose, "local": nn.ConvLocal}[self.kind]
        n_in, options = self._module_args(shape)
        return cls(
            n_in,
            self.out_channels,
            self.filter_shape,
            strides=self.strides,
            padding=self.padding,
            **options,
        )

    def with_params(self, module, params, shape):
        w, b = params
        w = jnp.asarray(w)
        if self.kind != "local":
            order = [self.rhs_spec.index("O"), self.rhs_spec.index("I")] + [
                i for i, c in enumerate(self.rhs_spec) if c not in "IO"
            ]
            w = jnp.transpose(w, order)
        return _put_params(module, w, b)


def _padding_name(padding) -> str:
    name = getattr(padding, "name", padding)
    if not isinstance(name, str) or name.upper() not in ("VALID", "SAME", "CIRCULAR"):
        raise ValueError(f"`padding` must be 'VALID', 'SAME' or 'CIRCULAR', got {padding!r}.")
    return name.upper()


# ----------------------------------------------------------------------------------------------
# Flatten in neural-tangents' order.


class FlattenLast(eqx.Module):
    """Flatten one channel-first example in neural-tangents' order: spatial axes first, then
    channels (`(h, w, c)` for an image)."""

    def __call__(self, x, *, key=None):
        return jnp.moveaxis(x, 0, -1).reshape(-1)


@register(FlattenLast)
class FlattenLastRule(AbstractRule[FlattenLast]):
    """Kernel rule of `FlattenLast`: that of [`eqntk.nn.Flatten`][] (the order of the features
    does not change the kernel)."""

    def requirements(self, layer: FlattenLast, wanted: Requirements) -> Requirements:
        return FlattenRule().requirements(nn.Flatten(), wanted)

    def __call__(self, layer: FlattenLast, k: EqKernel, wanted: Requirements) -> EqKernel:
        return FlattenRule()(nn.Flatten(), k, wanted)


# ----------------------------------------------------------------------------------------------
# User layers (`stax.layer`) and raw triples.


class UserModule(eqx.Module):
    """A layer given by neural-tangents functions: `apply_fn` on batched arrays and
    `kernel_fn` on compat `Kernel`s. `diagonal_input`: whether `kernel_fn` works on a kernel
    with only the spatial diagonal (declared with `stax.requires`)."""

    params: Any
    apply_fn: Callable = eqx.field(static=True)
    kernel_fn: Callable = eqx.field(static=True)
    batch_axis: int = eqx.field(static=True)
    channel_axis: int = eqx.field(static=True)
    diagonal_input: bool = eqx.field(static=True, default=False)

    def __call__(self, x, *, key=None):
        def batched(a):
            return from_cf(a[None], self.batch_axis, self.channel_axis)

        xb = [batched(a) for a in x] if isinstance(x, list | tuple) else batched(x)
        kwargs = {} if key is None else {"rng": key}
        y = self.apply_fn(self.params, xb, **kwargs)

        def unbatched(a):
            return to_cf(a, self.batch_axis, self.channel_axis)[0]

        return [unbatched(a) for a in y] if isinstance(y, list | tuple) else unbatched(y)


@register(UserModule)
class UserModuleRule(AbstractStreamsRule[UserModule]):
    """Kernel rule of `UserModule`: the user's `kernel_fn` on neural-tangents' `Kernel`."""

    def requirements(self, layer: UserModule, wanted: RequirementsTree) -> RequirementsTree:
        if layer.diagonal_input:
            return wanted
        # Unless declared otherwise, the user's kernel function may need the full spatial
        # covariance of every input stream.
        return jax.tree_util.tree_map(
            lambda _: Requirements(diagonal_spatial=False),
            wanted,
            is_leaf=lambda r: isinstance(r, Requirements),
        )

    def __call__(self, layer: UserModule, k: KernelTree, wanted: RequirementsTree) -> KernelTree:
        def conv(ek):
            return from_eqntk(ek, layer.batch_axis, layer.channel_axis)

        nk = [conv(e) for e in k] if isinstance(k, tuple | list) else conv(k)
        out = layer.kernel_fn(nk)
        if isinstance(out, list | tuple):
            return tuple(to_eqntk(o) for o in out)
        return to_eqntk(out)


REQUIREMENTS = "_eqntk_compat_requirements"


def user_requirements(kernel_fn: Callable) -> tuple[bool, int, int]:
    """What a user `kernel_fn` declared with `stax.requires`: whether it works on the spatial
    diagonal, and the batch and channel axes of the activations it sees."""
    reqs = dict(getattr(kernel_fn, REQUIREMENTS, {}))
    name = getattr(kernel_fn, "__name__", repr(kernel_fn))
    batch = reqs.get("diagonal_batch")
    if batch is False or (_diagonal_input(batch, "diagonal_batch") == 0):
        raise NotImplementedError(
            f"`{name}` requires `diagonal_batch={batch!r}` (the covariance of every pair of "
            "examples of a batch in `cov1`/`cov2`); eqntk's kernels hold one entry per example "
            "(`diagonal_batch=True`) only."
        )
    spatial = reqs.get("diagonal_spatial")
    if isinstance(spatial, bool):
        diagonal = spatial
    else:
        # `Bool.YES` only: `MAYBE` (diagonal iff the off-diagonal entries vanish) and `NO`
        # need the full covariance, as does a function that declared nothing.
        diagonal = _diagonal_input(spatial, "diagonal_spatial") == 2
    axes = []
    for key, default in (("batch_axis", 0), ("channel_axis", -1)):
        value = reqs.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"`{name}` requires `{key}={value!r}`; it must be an int.")
        axes.append(value)
    return diagonal, axes[0], axes[1]


def _diagonal_input(value: Any, key: str) -> int | None:
    """The `input` of a `Diagonal` requirement as `Bool` (0 no, 1 maybe, 2 yes); `None` when
    nothing was declared."""
    if value is None or isinstance(value, bool):
        return None
    given = getattr(value, "input", None)
    if given is None:
        raise TypeError(f"`requires({key}=...)` takes a bool or a `stax.Diagonal`, got {value!r}.")
    return int(given)


class UserLayer(Layer):
    def __init__(self, init_fn, apply_fn, kernel_fn):
        self.init_fn, self.apply_fn, self.kernel_fn = init_fn, apply_fn, kernel_fn
        self.diagonal_input, self.batch_axis, self.channel_axis = user_requirements(kernel_fn)
        self._explicit_axes = (self.batch_axis, self.channel_axis) != (0, -1)

    def _nt(self, shape):
        return _nt_shapes(shape, 1, self)

    def out_shape(self, shape):
        nt_in = self._nt(shape)
        with jax.ensure_compile_time_eval():
            out = self.init_fn(dummy_key(), nt_in)[0]
        return _cf_shapes(out, self.batch_axis, self.channel_axis)

    def init(self, key, shape):
        return self.init_fn(key, self._nt(shape))[1]

    def build(self, shape):
        return UserModule(
            None,
            self.apply_fn,
            self.kernel_fn,
            self.batch_axis,
            self.channel_axis,
            self.diagonal_input,
        )

    def with_params(self, module, params, shape):
        return eqx.tree_at(lambda m: m.params, module, params, is_leaf=lambda x: x is None)
