"""Kernel rules of the stock `equinox.nn` layers, with the kernels of their own initialisation.

**The limit taken.** Equinox draws every weight and bias of `Linear`, `Conv*` and
`ConvTranspose*` uniformly in $\\pm 1/\\sqrt{f}$, with $f$ the layer's fan-in (input features, or
input channels per group times the filter size): variance $1/(3f)$. This is the *standard
parameterisation* with $\\sigma_w^2 = 1/3$ and $\\sigma_b^2 = 1/(3f)$. The limit is the one of
every hidden width (channels, features) going to infinity in proportion, with each layer's
weight variance $1/(3f)$ scaling with its growing fan-in, and the uniform draws replaced by their
variance (the limit only sees second moments, by the central limit theorem). A layer maps the
kernel of its input (channel-averaged, as everywhere in eqntk) to

$$\\mathcal{K}' = \\tfrac13\\, \\bar{\\mathcal{K}} + \\tfrac{1}{3f}, \\qquad
\\Theta' = \\tfrac13\\, \\bar\\Theta + \\bar{\\mathcal{K}} + \\tfrac1f,$$

where the bar is the mean over the filter taps (the identity for `Linear`) and the bias terms
are left out for `use_bias=False`. The bias variance keeps the model's own fan-in $f$ (for a
hidden layer of width $n$ it is $1/(3n)$, a correction that vanishes as $n \\to \\infty$; keeping
it makes the kernel exactly that of the model's first layer and of any layer with a small
fan-in).

**The NTK.** In the standard parameterisation the plain empirical NTK grows with the width. The
NTK here is that of gradient descent on the model's own parameters with each layer's learning
rate divided by its fan-in, $\\Theta = \\sum_\\ell \\frac{1}{f_\\ell} J_\\ell J_\\ell^\\top$ (the
usual normalisation, under which standard-parameterised training has a limit). `LayerNorm`'s
and `GroupNorm`'s elementwise weight and bias count with factor 1; the slope of `PReLU` is
treated as a fixed hyperparameter (a single scalar shared by a whole layer has no
deterministic contribution in the limit).
"""

import math
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import jax.scipy.special as jsp
import jax.tree_util as jtu
from jax import lax
from jax.core import Tracer
from jaxtyping import Array

from ..nn import Abs, Elementwise, Erf, LeakyRelu, Relu
from ._elementwise import require_gaussian
from ._kernel import Kernel
from ._registry import AbstractRule, Requirements, apply, register, rule_for
from ._spatial import cross_variances, map_axes, self_variances, variances


# ---------------------------------------------------------------------------------------------
# Spatial linear maps on kernel arrays.


def _both_sides(a: Array, fn: Callable[[Array], Array], n_lead: int, n_spatial: int) -> Array:
    """`L K Lᵀ` in the full layout: the linear map `fn` on the positions of both examples."""
    a = map_axes(a, fn, [n_lead + 2 * d for d in range(n_spatial)])
    return map_axes(a, fn, [n_lead + 2 * d + 1 for d in range(n_spatial)])


def _one_side(a: Array, fn: Callable[[Array], Array], n_lead: int, n_spatial: int) -> Array:
    """The map `fn` on the positions of a diagonal-layout array (valid when `fn` reads one input
    position per output position, as one filter tap does)."""
    return map_axes(a, fn, list(range(n_lead, n_lead + n_spatial)))


def _map_kernel(k: Kernel, fn: Callable[[Array, int], Array], **changes) -> Kernel:
    """Apply `fn(array, n_lead)` to every covariance of `k`, changing metadata in the same step."""
    return k.replace(
        nngp=fn(k.nngp, 2),
        ntk=None if k.ntk is None else fn(k.ntk, 2),
        cov1=fn(k.cov1, 1),
        cov2=None if k.cov2 is None else fn(k.cov2, 1),
        **changes,
    )


def _no_masks(layer: object, k: Kernel) -> None:
    if k.mask1 is not None or k.mask2 is not None:
        raise ValueError(
            f"`equinox.nn.{type(layer).__name__}` does not take masked inputs (`mask1`/`mask2`); "
            f"use the eqntk layer of the same kind, which maps masks along."
        )


def _check_spatial(layer: object, n_spatial: int, k: Kernel) -> None:
    for name, shape in (("x1", k.shape1), ("x2", k.shape2)):
        if len(shape) - 1 != n_spatial:
            raise ValueError(
                f"`equinox.nn.{type(layer).__name__}` takes inputs with {n_spatial} spatial "
                f"dimension(s), shape (C, *spatial), but `{name}` has per-example shape {shape}."
            )


def _check_channels(layer: object, expected: int, k: Kernel) -> None:
    for name, shape in (("x1", k.shape1), ("x2", k.shape2)):
        if shape[0] != expected:
            raise ValueError(
                f"`equinox.nn.{type(layer).__name__}` was built for {expected} input channels, "
                f"but its input from `{name}` has {shape[0]} (per-example shape {shape})."
            )


def _uniform_affine(k: Kernel, fan_in: int, use_bias: bool, out_channels: int) -> Kernel:
    """The affine map of Equinox's initialisation, on a kernel already averaged over taps."""
    b = 1.0 / fan_in if use_bias else 0.0
    nngp = k.nngp / 3 + b / 3
    ntk = None if k.ntk is None else k.ntk / 3 + k.nngp + b
    return k.replace(
        nngp=nngp,
        ntk=ntk,
        cov1=k.cov1 / 3 + b / 3,
        cov2=None if k.cov2 is None else k.cov2 / 3 + b / 3,
        shape1=(out_channels,) + k.shape1[1:],
        shape2=(out_channels,) + k.shape2[1:],
        is_gaussian=True,
    )


# ---------------------------------------------------------------------------------------------
# Affine layers.


@register(eqx.nn.Linear)
class LinearRule(AbstractRule):
    """Kernel rule of `equinox.nn.Linear` (see the module docstring for the limit).

    `in_features="scalar"` takes inputs of one channel, `(1,)`; `out_features="scalar"` gives
    outputs of one channel (the kernel of the scalar output).
    """

    def requirements(self, layer: eqx.nn.Linear, wanted):
        return wanted

    def __call__(self, layer: eqx.nn.Linear, k: Kernel, wanted) -> Kernel:
        fan_in = 1 if layer.in_features == "scalar" else layer.in_features
        out = 1 if layer.out_features == "scalar" else layer.out_features
        if k.spatial_ndim:
            raise ValueError(
                f"`equinox.nn.Linear` takes vectors (C,), got activations of per-example shape "
                f"{k.shape1}; apply it to each position with a convolution of filter size 1, or "
                f"flatten first."
            )
        _check_channels(layer, fan_in, k)
        return _uniform_affine(k, fan_in, layer.use_bias, out)


def _tap_layers(layer: Any, n_taps: int) -> tuple[Any, Array]:
    """A one-channel copy of a convolution, and its `n_taps` one-hot filters `(T, 1, 1, *k)`.

    Built from Equinox's own class and geometry, so that padding (including the padding modes)
    and transposition are exactly the finite layer's.
    """
    common = dict(
        num_spatial_dims=layer.num_spatial_dims,
        in_channels=1,
        out_channels=1,
        kernel_size=layer.kernel_size,
        stride=layer.stride,
        padding=layer.padding,
        dilation=layer.dilation,
        groups=1,
        use_bias=False,
        padding_mode=layer.padding_mode,
        key=jr.key(0),
    )
    if isinstance(layer, eqx.nn.ConvTranspose):
        one = eqx.nn.ConvTranspose(output_padding=layer.output_padding, **common)
    else:
        one = eqx.nn.Conv(**common)
    eye = jnp.eye(n_taps).reshape((n_taps, 1, 1) + tuple(layer.kernel_size))
    return one, eye


def _conv_taps_kernel(layer: Any, k: Kernel) -> Kernel:
    """Mean over the filter taps `t` of `P_t K P_tᵀ` (the one-hot filter `t` on both examples),
    then Equinox's affine map."""
    n = layer.num_spatial_dims
    _check_spatial(layer, n, k)
    _check_channels(layer, layer.in_channels, k)
    _no_masks(layer, k)
    n_taps = math.prod(layer.kernel_size)
    with jax.ensure_compile_time_eval():
        one, eye = _tap_layers(layer, n_taps)

    def covariance(a: Array, n_lead: int) -> Array:
        def tap(w):
            conv = eqx.tree_at(lambda c: c.weight, one, w.astype(a.dtype))
            fn = lambda z: conv(z[None])[0]
            if k.diagonal_spatial:
                return _one_side(a, fn, n_lead, n)
            return _both_sides(a, fn, n_lead, n)

        return jnp.mean(jax.vmap(tap)(eye), axis=0)

    spatial = jax.eval_shape(one, jax.ShapeDtypeStruct((1,) + k.shape1[1:], k.nngp.dtype)).shape
    pooled = _map_kernel(
        k, covariance, shape1=k.shape1[:1] + spatial[1:], shape2=k.shape2[:1] + spatial[1:]
    )
    fan_in = (layer.in_channels // layer.groups) * n_taps
    return _uniform_affine(pooled, fan_in, layer.use_bias, layer.out_channels)


def _reads_one_position(layer: Any) -> bool:
    """Whether each filter tap of each output reads at most one input position (so that the
    diagonal of the input covariance suffices): all but circular transposed convolutions,
    which fold the overhang back onto the output."""
    return not (isinstance(layer, eqx.nn.ConvTranspose) and layer.padding_mode == "CIRCULAR")


@register(eqx.nn.Conv, eqx.nn.ConvTranspose)
class ConvRule(AbstractRule):
    """Kernel rule of `equinox.nn.Conv` and `ConvTranspose` (and their 1d/2d/3d forms), for all
    their paddings, strides, dilations, groups and padding modes (see the module docstring for
    the limit). Each tap of the filter is a linear map of positions, taken from the layer's own
    forward pass; the kernel is the mean over taps of that map applied to both examples."""

    def requirements(self, layer, wanted):
        if _reads_one_position(layer):
            return wanted
        return Requirements(diagonal_spatial=False)

    def __call__(self, layer, k: Kernel, wanted) -> Kernel:
        if k.diagonal_spatial and k.spatial_ndim and not _reads_one_position(layer):
            raise ValueError(
                "A circular `equinox.nn.ConvTranspose` folds several positions onto one and "
                "needs the full spatial covariance of its input, got the diagonal layout."
            )
        return _conv_taps_kernel(layer, k)


# ---------------------------------------------------------------------------------------------
# Pooling.


def _linear_positions_kernel(layer: Any, k: Kernel, fn: Callable[[Array], Array]) -> Kernel:
    """`L K Lᵀ` for a map `fn` of one channel's positions that is linear (average pooling)."""
    _no_masks(layer, k)
    if k.diagonal_spatial and k.spatial_ndim:
        raise ValueError(
            f"`equinox.nn.{type(layer).__name__}` mixes positions and needs the full spatial "
            f"covariance of its input, got the diagonal layout."
        )
    n = k.spatial_ndim
    spatial = jax.eval_shape(fn, jax.ShapeDtypeStruct(k.shape1[1:], k.nngp.dtype)).shape
    return _map_kernel(
        k,
        lambda a, n_lead: _both_sides(a, fn, n_lead, n),
        shape1=k.shape1[:1] + tuple(spatial),
        shape2=k.shape2[:1] + tuple(spatial),
    )


@register(eqx.nn.Pool)
class PoolRule(AbstractRule):
    """Kernel rule of `equinox.nn.AvgPool1d/2d/3d` (and sum pooling): `P K Pᵀ` with the pooling
    map `P` taken from the layer's own forward pass. Max pooling has no closed form."""

    def requirements(self, layer, wanted):
        _require_linear_pool(layer)
        return Requirements(diagonal_spatial=False)

    def __call__(self, layer, k: Kernel, wanted) -> Kernel:
        _require_linear_pool(layer)
        _check_spatial(layer, layer.num_spatial_dims, k)
        return _linear_positions_kernel(layer, k, lambda z: layer(z[None].astype(z.dtype))[0])


def _require_linear_pool(layer: Any) -> None:
    if layer.operation is not lax.add:
        raise NotImplementedError(
            _no_closed_form(
                layer, "the maximum of correlated Gaussians has no closed-form covariance"
            )
        )


@register(eqx.nn.AdaptivePool)
class AdaptivePoolRule(AbstractRule):
    """Kernel rule of `equinox.nn.AdaptiveAvgPool1d/2d/3d` (any target shape; a target of all
    ones is global average pooling): `P K Pᵀ` with the layer's own averaging map."""

    def requirements(self, layer, wanted):
        _require_mean_pool(layer)
        return Requirements(diagonal_spatial=False)

    def __call__(self, layer, k: Kernel, wanted) -> Kernel:
        _require_mean_pool(layer)
        _check_spatial(layer, len(layer.target_shape), k)
        return _linear_positions_kernel(layer, k, lambda z: layer(z[None])[0])


def _require_mean_pool(layer: Any) -> None:
    if layer.operation is not jnp.mean:
        raise NotImplementedError(
            _no_closed_form(layer, "only average pooling is linear in its input")
        )


# ---------------------------------------------------------------------------------------------
# Nonlinearities.


def _is_identity_function(fn: Any) -> bool:
    return getattr(fn, "__name__", None) == "_identity" and "equinox" in getattr(
        fn, "__module__", ""
    )


_KNOWN: dict[Any, Callable[[], Any]] = {
    jax.nn.relu: Relu,
    jax.nn.leaky_relu: lambda: LeakyRelu(0.01),
    jnp.abs: Abs,
    jnp.absolute: Abs,
    jsp.erf: Erf,
    lax.erf: Erf,
}


def check_elementwise(fn: Callable, where: str) -> None:
    """Raise unless `fn` maps a vector elementwise (each output entry depends on its own input
    entry only, checked on a small random vector)."""
    # The check runs on concrete values, also while a kernel function is traced under `jit`.
    with jax.ensure_compile_time_eval():
        _check_elementwise(fn, where)


def _check_elementwise(fn: Callable, where: str) -> None:
    x = jr.normal(jr.key(0), (3,))
    try:
        y = jax.eval_shape(fn, x)
    except Exception as e:
        raise ValueError(f"{where}: calling it on a vector failed ({e}).") from e
    if getattr(y, "shape", None) != (3,):
        raise ValueError(
            f"{where} must act elementwise (a vector in, a vector of the same shape out), got "
            f"output {y} for an input of shape (3,)."
        )
    jac = jax.jacfwd(fn)(x)
    off = jac * (1 - jnp.eye(3, dtype=jac.dtype))
    if bool(jnp.any(off != 0)):
        raise ValueError(
            f"{where} must act elementwise: its output at one position depends on the input at "
            f"another; the infinite-width limit of a function that mixes channels is not "
            f"defined by its kernel."
        )


def activation_layer(fn: Any, where: str) -> Any:
    """An eqntk layer with a kernel rule for the elementwise function `fn` (a closed form where
    eqntk has one, quadrature otherwise), or `None` for the identity."""
    if fn is None or _is_identity_function(fn) or isinstance(fn, eqx.nn.Identity):
        return None
    if isinstance(fn, eqx.nn.PReLU):
        return LeakyRelu(_prelu_slope(fn))
    if isinstance(fn, eqx.Module):
        rule_for(fn)  # raises a clear error when there is no rule
        return fn
    try:
        known = _KNOWN.get(fn)
    except TypeError:  # unhashable
        known = None
    if known is not None:
        return known()
    check_elementwise(fn, where)
    return Elementwise(fn)


def _prelu_slope(layer: eqx.nn.PReLU) -> Array:
    slope = layer.negative_slope
    if slope.size != 1:
        if isinstance(slope, Tracer) or not bool(jnp.all(slope == slope.ravel()[0])):
            raise ValueError(
                f"`equinox.nn.PReLU` needs one slope for all channels in the infinite-width limit "
                f"(channels are exchangeable), got `negative_slope` of shape {slope.shape}."
            )
        slope = slope.ravel()[0]
    return jax.lax.stop_gradient(jnp.reshape(slope, ()))


def _apply_activation(fn: Any, k: Kernel, wanted, where: str) -> Kernel:
    layer = activation_layer(fn, where)
    out = k if layer is None else apply(layer, k, wanted)
    assert isinstance(out, Kernel)
    return out


@register(eqx.nn.PReLU)
class PReLURule(AbstractRule):
    """Kernel rule of `equinox.nn.PReLU`: the leaky ReLU kernel with its slope (a fixed
    hyperparameter of the limit, not trained: see the module docstring)."""

    def requirements(self, layer, wanted):
        return wanted

    def __call__(self, layer: eqx.nn.PReLU, k: Kernel, wanted) -> Kernel:
        out = apply(LeakyRelu(_prelu_slope(layer)), k, wanted)
        assert isinstance(out, Kernel)
        return out


@register(eqx.nn.Lambda)
class LambdaRule(AbstractRule):
    """Kernel rule of `equinox.nn.Lambda` of an elementwise function (closed form for
    `jax.nn.relu`, `jax.nn.leaky_relu`, `jnp.abs` and `erf`, Gauss–Hermite quadrature for any
    other function; a function that is not elementwise is an error)."""

    def requirements(self, layer, wanted):
        return wanted

    def __call__(self, layer: eqx.nn.Lambda, k: Kernel, wanted) -> Kernel:
        return _apply_activation(layer.fn, k, wanted, "`equinox.nn.Lambda`'s function")


def _mlp_activation(fn: Any, index: int | None) -> Any:
    """One layer's activation out of an `equinox.nn.MLP`, which stores it vmapped per unit."""
    leaves = [x for x in jtu.tree_leaves(fn) if eqx.is_array(x)]
    if not leaves:
        return fn
    if index is not None:
        fn = jtu.tree_map(lambda x: x[index] if eqx.is_array(x) else x, fn)
    if isinstance(fn, eqx.nn.PReLU):
        # One PReLU per unit, all with the slope they were initialised with.
        return eqx.nn.PReLU(fn.negative_slope.ravel()[0])
    return fn


@register(eqx.nn.MLP)
class MLPRule(AbstractRule):
    """Kernel rule of `equinox.nn.MLP`: its `Linear` layers (see the module docstring for the
    limit) with `activation` between them and `final_activation` after the last one (any
    elementwise function, as for `equinox.nn.Lambda`). `scan=True` stacks are supported."""

    def requirements(self, layer, wanted):
        return wanted

    def __call__(self, layer: eqx.nn.MLP, k: Kernel, wanted) -> Kernel:
        linear = LinearRule()
        if layer.depth == 0:
            return linear(layer.layers[0], k, wanted)
        if layer.scan:
            first, hidden, last = layer.layers
            hidden_layers = [hidden] * (layer.depth - 1)  # the rule does not read the weights
        else:
            first, *hidden_layers, last = layer.layers
        where = "`equinox.nn.MLP`'s activation"
        for i, lin in enumerate([first, *hidden_layers]):
            k = linear(lin, k, wanted)
            k = _apply_activation(_mlp_activation(layer.activation, i), k, wanted, where)
        k = linear(last, k, wanted)
        final = _mlp_activation(layer.final_activation, None)
        if isinstance(final, eqx.Module) and not isinstance(final, eqx.nn.Identity):
            final = _mlp_activation(final, 0)
        return _apply_activation(final, k, wanted, "`equinox.nn.MLP`'s final_activation")


# ---------------------------------------------------------------------------------------------
# Normalisation.


def _check_init_value(layer: Any, name: str, value: Any, init: float, k: Kernel) -> Kernel:
    """`k` unchanged, once `value` is checked to equal `init` everywhere: at trace time when it
    is concrete, else (inside the compiled kernel function) with `eqx.error_if`."""
    if value is None:
        return k
    message = (
        f"`equinox.nn.{type(layer).__name__}`'s `{name}` must have its initial value "
        f"({init:g} everywhere) for the infinite-width limit: a trained elementwise affine "
        f"map makes channels no longer exchangeable."
    )
    if isinstance(value, Tracer):
        return k.replace(nngp=eqx.error_if(k.nngp, jnp.any(value != init), message))
    if not bool(jnp.all(value == init)):
        raise ValueError(message)
    return k


def _normalised(
    layer: Any, k: Kernel, eps: float, spatial_mean: bool, per_position: bool, affine: tuple
) -> Kernel:
    """Divide each covariance by the square roots of the two examples' mean variances (over
    all positions when `spatial_mean`, else per position), plus `eps`; the elementwise affine
    weight and bias (`affine`: which are present) add `K'` and `1` to the NTK, on the spatial
    diagonal only when they are per position."""
    n = k.spatial_ndim
    axes = tuple(range(1, 1 + n)) if spatial_mean else ()

    def normaliser(cov):
        var = variances(cov, k) + eps
        return jnp.mean(var, axis=axes, keepdims=True) if axes else var

    v1, v2 = normaliser(k.cov1), normaliser(k.cov2_or_cov1)
    q11, q22 = cross_variances(v1, v2, k.diagonal_spatial)
    norm12 = jnp.sqrt(q11 * q22)
    c11, c22 = self_variances(v1, k.diagonal_spatial)
    cov2 = None
    if k.cov2 is not None:
        d11, d22 = self_variances(v2, k.diagonal_spatial)
        cov2 = k.cov2 / jnp.sqrt(d11 * d22)
    nngp = k.nngp / norm12
    ntk = None
    if k.ntk is not None:
        ntk = k.ntk / norm12
        use_weight, use_bias = affine
        extra = (nngp if use_weight else 0.0) + (1.0 if use_bias else 0.0)
        if per_position and n and not k.diagonal_spatial and (use_weight or use_bias):
            same = jnp.ones((1,) * nngp.ndim, bool)
            for d in range(n):
                shape = [1] * nngp.ndim
                shape[2 + 2 * d] = shape[3 + 2 * d] = k.shape1[1 + d]
                same = same & jnp.eye(k.shape1[1 + d], dtype=bool).reshape(shape)
            extra = jnp.where(same, extra, 0.0)
        ntk = ntk + extra
    return k.replace(nngp=nngp, ntk=ntk, cov1=k.cov1 / jnp.sqrt(c11 * c22), cov2=cov2)


@register(eqx.nn.LayerNorm, eqx.nn.RMSNorm)
class LayerNormRule(AbstractRule):
    """Kernel rule of `equinox.nn.LayerNorm` and `equinox.nn.RMSNorm` (their `shape` is the
    whole per-example shape, so they normalise over the channels and all positions).

    `LayerNorm`: the mean over infinitely many channels of a centred Gaussian is zero and the
    variance is deterministic, so each covariance is divided by the square roots of the two
    examples' variances averaged over positions, plus `eps`. `RMSNorm` has the same limit
    without centring, so its input need not be Gaussian (the mean square over infinitely many
    channels is the kernel's variance). The elementwise weight and bias must have their
    initial values (1 and 0)."""

    def requirements(self, layer, wanted):
        return wanted

    def __call__(self, layer: eqx.nn.LayerNorm | eqx.nn.RMSNorm, k: Kernel, wanted) -> Kernel:
        if isinstance(layer, eqx.nn.LayerNorm):
            require_gaussian(k, layer)
        _check_normalised_shape(layer, k)
        k = _check_init_value(layer, "weight", layer.weight, 1.0, k)
        k = _check_init_value(layer, "bias", layer.bias, 0.0, k)
        return _normalised(layer, k, layer.eps, True, True, (layer.use_weight, layer.use_bias))


@register(eqx.nn.GroupNorm)
class GroupNormRule(AbstractRule):
    """Kernel rule of `equinox.nn.GroupNorm`: every group has infinitely many channels, so it is
    the `LayerNorm` rule; the channelwise affine weight and bias are shared over positions."""

    def requirements(self, layer, wanted):
        return wanted

    def __call__(self, layer: eqx.nn.GroupNorm, k: Kernel, wanted) -> Kernel:
        require_gaussian(k, layer)
        if layer.channels is not None:
            _check_channels(layer, layer.channels, k)
        k = _check_init_value(layer, "weight", layer.weight, 1.0, k)
        k = _check_init_value(layer, "bias", layer.bias, 0.0, k)
        affine = (layer.channelwise_affine, layer.channelwise_affine)
        return _normalised(layer, k, layer.eps, True, False, affine)


def _check_normalised_shape(layer: Any, k: Kernel) -> None:
    shape = tuple(layer.shape) if isinstance(layer.shape, tuple) else (layer.shape,)
    for name, s in (("x1", k.shape1), ("x2", k.shape2)):
        if s != shape:
            raise ValueError(
                f"`equinox.nn.{type(layer).__name__}` normalises activations of shape {shape} "
                f"(its `shape`), but `{name}` has per-example shape {s}."
            )


# ---------------------------------------------------------------------------------------------
# Layers without a closed form.


def _no_closed_form(layer: Any, why: str) -> str:
    return (
        f"`equinox.nn.{type(layer).__name__}` has no closed-form infinite-width kernel ({why}). "
        f"Estimate the kernel of the finite network instead, with "
        f"`eqntk.monte_carlo_kernel(make_model, key, x1, x2, n_samples)` (or "
        f"`eqntk.empirical_kernel` for one network), or register a rule of your own with "
        f"`@eqntk.limits.register(equinox.nn.{type(layer).__name__})`."
    )


_WHY = {
    eqx.nn.MultiheadAttention: "the softmax of correlated Gaussian scores has no closed form",
    eqx.nn.BatchNorm: "it normalises over the batch, coupling the examples of a kernel",
    eqx.nn.Embedding: "it looks up integer tokens, not a map of real-valued inputs",
    eqx.nn.GRUCell: "its gates multiply sigmoids of correlated Gaussians",
    eqx.nn.LSTMCell: "its gates multiply sigmoids of correlated Gaussians",
    eqx.nn.RotaryPositionalEmbedding: "it is only used inside attention",
}


@register(*_WHY)
class NoClosedFormRule(AbstractRule):
    """The rule of `equinox.nn` layers whose limit has no closed form: a clear error."""

    def requirements(self, layer, wanted):
        raise NotImplementedError(_no_closed_form(layer, _why(layer)))

    def __call__(self, layer, k, wanted):
        raise NotImplementedError(_no_closed_form(layer, _why(layer)))


def _why(layer: Any) -> str:
    return next(_WHY[c] for c in type(layer).__mro__ if c in _WHY)
