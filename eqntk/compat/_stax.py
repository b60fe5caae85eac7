"""neural-tangents' `stax` layers and combinators, each an `(init_fn, apply_fn, kernel_fn)`."""

import dataclasses
import enum
import functools
from collections.abc import Callable, Sequence
from typing import Any, Literal

from .. import nn
from ._dot import DotGeneralLayer
from ._layers import (
    REQUIREMENTS,
    ConvLayer,
    DenseLayer,
    FlattenLast,
    MaskedArray,
    ParallelLayer,
    RepeatLayer,
    Serial,
    Simple,
    UserLayer,
    as_layer,
    dummy_key,
    triple,
)


class Padding(enum.Enum):
    """Padding of convolutions and pooling: `VALID`, `SAME` or `CIRCULAR`."""

    CIRCULAR = "CIRCULAR"
    SAME = "SAME"
    VALID = "VALID"


class PositionalEmbedding(enum.Enum):
    """Positional embeddings of `GlobalSelfAttention`."""

    NONE = "NONE"
    SUM = "SUM"
    CONCAT = "CONCAT"


class AttentionMechanism(enum.Enum):
    """Attention functions of `GlobalSelfAttention`."""

    SOFTMAX = "SOFTMAX"
    IDENTITY = "IDENTITY"
    ABS = "ABS"
    RELU = "RELU"


class AggregateImplementation(enum.Enum):
    """How `Aggregate` reads its graphs: dense adjacency or sparse edge lists."""

    DENSE = "DENSE"
    SPARSE = "SPARSE"


# ----------------------------------------------------------------------------------------------
# Combinators.


def serial(*layers):
    """Compose layers in sequence (neural-tangents' `stax.serial`).

    **Arguments:**

    - `*layers`: `(init_fn, apply_fn, kernel_fn)` triples.

    **Returns:**

    The `(init_fn, apply_fn, kernel_fn)` of the composition; its eqntk module is an
    [`eqntk.nn.Sequential`][].

    **Example:**

    ```python
    import jax.random as jr
    from eqntk.compat import stax

    init_fn, apply_fn, kernel_fn = stax.serial(stax.Dense(16), stax.Relu(), stax.Dense(1))
    _, params = init_fn(jr.key(0), (-1, 3))
    x = jr.normal(jr.key(1), (4, 3))
    assert apply_fn(params, x).shape == (4, 1) and kernel_fn(x, x, "ntk").shape == (4, 4)
    ```
    """
    return triple(Serial([as_layer(lay) for lay in layers]))


def parallel(*layers):
    """Apply one layer to each input stream (neural-tangents' `stax.parallel`).

    **Arguments:**

    - `*layers`: one triple per stream.

    **Returns:**

    The triple of an [`eqntk.nn.Parallel`][].

    **Example:**

    ```python
    import jax.random as jr
    from eqntk.compat import stax

    _, _, kernel_fn = stax.serial(
        stax.FanOut(2), stax.parallel(stax.Dense(8), stax.Dense(8, 2.0)), stax.FanInSum())
    assert kernel_fn(jr.normal(jr.key(0), (3, 2)), get="nngp").shape == (3, 3)
    ```
    """
    return triple(ParallelLayer([as_layer(lay) for lay in layers]))


def repeat(layer, n: int):
    """Apply `layer` `n` times in a compiled loop (neural-tangents' `stax.repeat`).

    **Arguments:**

    - `layer`: a triple whose output has the shape of its input.
    - `n`: the number of repetitions.

    **Returns:**

    The triple of an [`eqntk.nn.Repeat`][]; `init_fn` draws `n` stacked parameter sets.

    **Example:**

    ```python
    import jax.random as jr
    from eqntk.compat import stax

    block = stax.serial(stax.Dense(8), stax.Relu())
    _, _, kernel_fn = stax.serial(stax.Dense(8), stax.repeat(block, 3))
    assert kernel_fn(jr.normal(jr.key(0), (2, 3)), get="ntk").shape == (2, 2)
    ```
    """
    return triple(RepeatLayer(as_layer(layer), n))


def FanOut(num: int):
    """Copy the input into `num` streams. Example: see [`parallel`][eqntk.compat.stax.parallel]."""
    return triple(Simple(lambda shape: nn.FanOut(num), lambda shape: [shape] * num))


def FanInSum():
    """Sum the streams. Example: see `parallel`."""
    return triple(Simple(lambda shape: nn.FanInSum(), lambda shape: shape[0]))


def FanInProd():
    """Multiply the streams elementwise. Example: see `parallel`."""
    return triple(Simple(lambda shape: nn.FanInProd(), lambda shape: shape[0]))


def FanInConcat(axis: int = -1):
    """Concatenate the streams along `axis` of the batched arrays (`-1`: the channels)."""
    return triple(Simple(lambda shape: nn.FanInConcat(_eq_axis(axis, len(shape[0]) + 1))))


def _eq_axis(
    axis: int, ndim: int, batch_axis: int = 0, channel_axis: int = -1
) -> Literal["channel"] | int:
    """An axis of a batched neural-tangents array as eqntk names it: `"channel"`, or the
    index of a spatial axis."""
    a, b, c = axis % ndim, batch_axis % ndim, channel_axis % ndim
    if a == c:
        return "channel"
    if a == b:
        raise ValueError(f"axis {axis} is the batch axis; it cannot be used here.")
    spatial = [i for i in range(ndim) if i not in (b, c)]
    return spatial.index(a)


# ----------------------------------------------------------------------------------------------
# Affine layers.


def Dense(
    out_dim: int,
    W_std: float = 1.0,
    b_std: float | None = None,
    batch_axis: int = 0,
    channel_axis: int = -1,
    parameterization: str = "ntk",
    s: tuple[int, int] = (1, 1),
):
    """A fully-connected layer on the channel axis (neural-tangents' `stax.Dense`).

    Parameters `(W, b)`: `W` of shape `(in, out)`, `b` of shape `(1, ..., out)` or `None`; the
    module is an [`eqntk.nn.Dense`][].

    **Arguments:** as neural-tangents: `out_dim`, `W_std`, `b_std` (`None`: no bias),
    `batch_axis`, `channel_axis`, `parameterization` (`"ntk"` or `"standard"`), `s`.

    **Returns:**

    `(init_fn, apply_fn, kernel_fn)`.

    **Example:**

    ```python
    import jax.random as jr
    from eqntk.compat import stax

    init_fn, apply_fn, kernel_fn = stax.Dense(4, W_std=1.5, b_std=0.1)
    out_shape, (W, b) = init_fn(jr.key(0), (-1, 3))
    assert out_shape == (-1, 4) and W.shape == (3, 4) and b.shape == (1, 4)
    ```
    """
    return triple(DenseLayer(out_dim, W_std, b_std, batch_axis, channel_axis, parameterization, s))


def _conv(kind):
    def make(
        out_chan: int,
        filter_shape: Sequence[int],
        strides: Sequence[int] | None = None,
        padding: str = "VALID",
        W_std: float = 1.0,
        b_std: float | None = None,
        dimension_numbers: tuple[str, str, str] | None = None,
        parameterization: str = "ntk",
        s: tuple[int, int] = (1, 1),
    ):
        return triple(
            ConvLayer(
                kind,
                out_chan,
                filter_shape,
                strides=strides,
                padding=padding,
                W_std=W_std,
                b_std=b_std,
                dimension_numbers=dimension_numbers,
                parameterization=parameterization,
                s=s,
            )
        )

    return make


Conv = _conv("conv")
Conv.__name__ = Conv.__qualname__ = "Conv"
Conv.__doc__ = """A convolution (neural-tangents' `stax.Conv`): `NHWC` inputs, `HWIO` weights.

**Arguments:** as neural-tangents: `out_chan`, `filter_shape`, `strides`, `padding`
(`"VALID"`, `"SAME"`, `"CIRCULAR"`), `W_std`, `b_std`, `dimension_numbers`,
`parameterization`, `s`. The module is an [`eqntk.nn.Conv`][].

**Returns:**

`(init_fn, apply_fn, kernel_fn)`.

**Example:**

```python
import jax.random as jr
from eqntk.compat import stax

init_fn, apply_fn, kernel_fn = stax.serial(stax.Conv(8, (3, 3), padding="SAME"), stax.Relu(),
                                           stax.Flatten(), stax.Dense(1))
out_shape, params = init_fn(jr.key(0), (-1, 5, 5, 2))
assert out_shape == (-1, 1) and params[0][0].shape == (3, 3, 2, 8)
```
"""
ConvTranspose = _conv("transpose")
ConvTranspose.__name__ = ConvTranspose.__qualname__ = "ConvTranspose"
ConvTranspose.__doc__ = """A transposed convolution (neural-tangents' `stax.ConvTranspose`);
arguments as `Conv`, module [`eqntk.nn.ConvTranspose`][]."""
ConvLocal = _conv("local")
ConvLocal.__name__ = ConvLocal.__qualname__ = "ConvLocal"
ConvLocal.__doc__ = """A locally connected layer (neural-tangents' `stax.ConvLocal`);
arguments as `Conv`, module [`eqntk.nn.ConvLocal`][]. Its weights use eqntk's layout
`(out, in * taps, *spatial_out)`."""


# ----------------------------------------------------------------------------------------------
# Pooling, reshaping, normalisation.


def _with_axes(make, shape_fn=None, batch_axis=0, channel_axis=-1):
    layer = Simple(make, shape_fn, batch_axis, channel_axis)
    layer._explicit_axes = (batch_axis, channel_axis) != (0, -1)
    return triple(layer)


def AvgPool(
    window_shape: Sequence[int],
    strides: Sequence[int] | None = None,
    padding: str = "VALID",
    normalize_edges: bool = False,
    batch_axis: int = 0,
    channel_axis: int = -1,
):
    """Average pooling over windows (neural-tangents' `stax.AvgPool`; strides default to 1)."""
    pad: Any = getattr(padding, "name", padding)
    return _with_axes(
        lambda shape: nn.AvgPool(window_shape, strides, pad, normalize_edges),
        batch_axis=batch_axis,
        channel_axis=channel_axis,
    )


def SumPool(
    window_shape: Sequence[int],
    strides: Sequence[int] | None = None,
    padding: str = "VALID",
    batch_axis: int = 0,
    channel_axis: int = -1,
):
    """Sum pooling over windows (neural-tangents' `stax.SumPool`)."""
    pad: Any = getattr(padding, "name", padding)
    return _with_axes(
        lambda shape: nn.SumPool(window_shape, strides, pad),
        batch_axis=batch_axis,
        channel_axis=channel_axis,
    )


def GlobalAvgPool(batch_axis: int = 0, channel_axis: int = -1):
    """Average over every spatial position (neural-tangents' `stax.GlobalAvgPool`)."""
    return _with_axes(
        lambda shape: nn.GlobalAvgPool(), lambda shape: shape[:1], batch_axis, channel_axis
    )


def GlobalSumPool(batch_axis: int = 0, channel_axis: int = -1):
    """Sum over every spatial position (neural-tangents' `stax.GlobalSumPool`)."""
    return _with_axes(
        lambda shape: nn.GlobalSumPool(), lambda shape: shape[:1], batch_axis, channel_axis
    )


def Flatten(batch_axis: int = 0, batch_axis_out: int = 0):
    """Flatten every non-batch axis in neural-tangents' order (`(h, w, c)` for `NHWC`).

    **Example:**

    ```python
    import jax.numpy as jnp
    import jax.random as jr
    from eqntk.compat import stax

    _, apply_fn, _ = stax.Flatten()
    x = jr.normal(jr.key(0), (2, 3, 4, 5))
    assert (apply_fn((), x) == x.reshape(2, -1)).all()
    ```
    """
    if batch_axis_out != 0:
        raise NotImplementedError("`Flatten` supports `batch_axis_out=0` only.")

    def size(shape):
        n = 1
        for d in shape:
            n *= d
        return (n,)

    return _with_axes(lambda shape: FlattenLast(), size, batch_axis, -1)


def DotGeneral(
    *,
    lhs=None,
    rhs=None,
    dimension_numbers=(((), ()), ((), ())),
    precision=None,
    batch_axis: int = 0,
    channel_axis: int = -1,
):
    """`jax.lax.dot_general` with a constant, untrained factor (neural-tangents'
    `stax.DotGeneral`).

    `apply_fn` computes `dot_general(inputs, rhs, dimension_numbers, precision)` (or
    `dot_general(lhs, inputs, ...)`): a scale, or a fixed linear map that contracts spatial axes
    with the constant, or pairs them with its axes as `dot_general` batch dimensions. The
    kernel is that map on both sides of every covariance. With neither `lhs` nor `rhs` the layer
    is the identity.

    **Arguments:** as neural-tangents: `lhs` or `rhs` (an array or a number), `dimension_numbers`
    `((lhs_contracting, rhs_contracting), (lhs_batch, rhs_batch))`, `precision`,
    `batch_axis`, `channel_axis`. The dimension numbers may name spatial axes of the inputs
    only, and the output must keep the input's `batch_axis` and `channel_axis` (as the layers
    after it require); other layouts raise an error.

    **Returns:**

    `(init_fn, apply_fn, kernel_fn)`; `init_fn` gives no parameters.

    **Example:**

    ```python
    import jax.numpy as jnp
    import jax.random as jr
    from eqntk.compat import stax

    # The first row minus the second, of NHWC images: (N, 2, W, C) -> (N, W, C).
    diff = stax.DotGeneral(rhs=jnp.array([1.0, -1.0]), dimension_numbers=(((1,), (0,)), ((), ())))
    _, apply_fn, kernel_fn = stax.serial(stax.Conv(4, (1, 2)), stax.Relu(), diff)
    x = jr.normal(jr.key(0), (3, 2, 5, 2))
    assert kernel_fn(x, get="nngp").shape == (3, 3, 4, 4)
    ```
    """
    return triple(DotGeneralLayer(lhs, rhs, dimension_numbers, precision, batch_axis, channel_axis))


def Identity():
    """The identity layer (neural-tangents' `stax.Identity`)."""
    return triple(Simple(lambda shape: nn.Identity(), lambda shape: shape))


def LayerNorm(axis=-1, eps: float = 1e-12, batch_axis: int = 0, channel_axis: int = -1):
    """Layer normalisation over `axis` of the batched arrays (neural-tangents' `LayerNorm`)."""
    axes = (axis,) if isinstance(axis, int) else tuple(axis)

    def make(shape):
        ndim = len(shape) + 1
        eq_axes: list[Literal["channel"] | int] = [
            _eq_axis(a, ndim, batch_axis, channel_axis) for a in axes
        ]
        return nn.LayerNorm(eq_axes, eps)

    return _with_axes(make, lambda shape: shape, batch_axis, channel_axis)


def Dropout(rate: float, mode: str = "train"):
    """Dropout with keep probability `rate` (neural-tangents' `stax.Dropout`); `apply_fn`
    needs `rng=` in `"train"` mode."""
    if mode not in ("train", "test"):
        raise ValueError(f"`mode` must be 'train' or 'test', got {mode!r}.")
    return triple(
        Simple(lambda shape: nn.Dropout(rate, inference=mode == "test"), lambda shape: shape)
    )


def GlobalSelfAttention(
    n_chan_out: int,
    n_chan_key: int,
    n_chan_val: int,
    n_heads: int,
    linear_scaling: bool = True,
    W_key_std: float = 1.0,
    W_value_std: float = 1.0,
    W_query_std: float = 1.0,
    W_out_std: float = 1.0,
    b_std: float | None = None,
    attention_mechanism: str = "SOFTMAX",
    pos_emb_type: str = "NONE",
    pos_emb_p_norm: float = 2,
    pos_emb_decay_fn: Callable | None = None,
    n_chan_pos_emb: int | None = None,
    W_pos_emb_std: float = 1.0,
    val_pos_emb: bool = False,
    batch_axis: int = 0,
    channel_axis: int = -1,
):
    """Global self-attention (neural-tangents' `stax.GlobalSelfAttention`), on an
    [`eqntk.nn.GlobalSelfAttention`][]; its parameters use eqntk's layout."""
    mech = getattr(attention_mechanism, "name", attention_mechanism).lower()
    pos = getattr(pos_emb_type, "name", pos_emb_type).lower()

    def make(shape):
        return nn.GlobalSelfAttention(
            shape[0],
            n_chan_out,
            n_chan_key,
            n_chan_val,
            n_heads,
            linear_scaling=linear_scaling,
            W_key_std=W_key_std,
            W_value_std=W_value_std,
            W_query_std=W_query_std,
            W_out_std=W_out_std,
            b_std=b_std,
            attention=mech,
            pos_emb=pos,
            pos_emb_p_norm=float(pos_emb_p_norm),
            pos_emb_decay=pos_emb_decay_fn,
            pos_emb_channels=n_chan_pos_emb,
            W_pos_emb_std=W_pos_emb_std,
            val_pos_emb=val_pos_emb,
            spatial_shape=tuple(shape[1:]),
            key=dummy_key(),
        )

    return _with_axes(
        make, lambda shape: (n_chan_out,) + tuple(shape[1:]), batch_axis, channel_axis
    )


def ImageResize(
    shape,
    method,
    antialias: bool = True,
    precision=None,
    batch_axis: int = 0,
    channel_axis: int = -1,
):
    """Resize the spatial axes (neural-tangents' `stax.ImageResize`; `shape` is the batched
    output shape, `-1` keeping an axis)."""
    method = getattr(method, "name", method).lower()

    def make(in_shape):
        ndim = len(in_shape) + 1
        b, c = batch_axis % ndim, channel_axis % ndim
        full = list(shape)
        spatial_in = list(in_shape[1:])
        spatial = [full[i] for i in range(ndim) if i not in (b, c)]
        spatial = [s if s != -1 else d for s, d in zip(spatial, spatial_in)]
        return nn.ImageResize(spatial, method, antialias)

    return _with_axes(make, None, batch_axis, channel_axis)


class _SliceMaker:
    """neural-tangents' `stax.Slice`: `Slice[:, 1:3, ::2]` gives the index tuple."""

    def __getitem__(self, idx):
        return idx


Slice = _SliceMaker()


def Index(idx, batch_axis: int = 0, channel_axis: int = -1):
    """Index the spatial axes (neural-tangents' `stax.Index`), on [`eqntk.nn.Index`][]. `idx`
    indexes the batched array (e.g. `stax.Slice[:, ::2, 1:]`); the batch and channel axes must
    be left whole."""
    entries = idx if isinstance(idx, tuple) else (idx,)

    def make(shape):
        ndim = len(shape) + 1
        full = list(entries)
        if any(e is Ellipsis for e in full):
            i = full.index(Ellipsis)
            full[i : i + 1] = [slice(None)] * (ndim - len(full) + 1)
        full += [slice(None)] * (ndim - len(full))
        b, c = batch_axis % ndim, channel_axis % ndim
        for axis in (b, c):
            if full[axis] != slice(None):
                raise NotImplementedError(
                    f"`Index` can only index spatial axes; got {idx!r} on axis {axis}."
                )
        return nn.Index([full[i] for i in range(ndim) if i not in (b, c)])

    return _with_axes(make, None, batch_axis, channel_axis)


def Aggregate(
    aggregate_axis=None,
    batch_axis: int = 0,
    channel_axis: int = -1,
    to_dense=None,
    implementation: str = "DENSE",
):
    """Aggregate over a graph (neural-tangents' `stax.Aggregate`), on [`eqntk.nn.Aggregate`][].

    Graphs go to `apply_fn(..., pattern=p)` and `kernel_fn(..., pattern=(p1, p2))`: dense
    adjacencies `(N, *S, *S)` (`implementation="DENSE"`) or integer edge lists `(N, E, 2)`
    (`"SPARSE"`; negative entries are padding). `to_dense` must be left at its default.
    """
    if to_dense is not None and not getattr(to_dense, "_identity", False):
        del to_dense  # neural-tangents' default `to_dense` is the identity
    impl = getattr(implementation, "name", implementation)
    if str(impl).upper() not in ("DENSE", "SPARSE"):
        raise ValueError(f"`implementation` must be 'DENSE' or 'SPARSE', got {implementation!r}.")

    def make(shape):
        if aggregate_axis is None:
            return nn.Aggregate(None)
        axes = (aggregate_axis,) if isinstance(aggregate_axis, int) else aggregate_axis
        ndim = len(shape) + 1
        eq_axes = [_eq_axis(a, ndim, batch_axis, channel_axis) for a in axes]
        if "channel" in eq_axes:
            raise ValueError(f"`aggregate_axis` must be spatial axes, got {aggregate_axis!r}.")
        return nn.Aggregate([int(a) for a in eq_axes])

    return _with_axes(make, lambda shape: shape, batch_axis, channel_axis)


# ----------------------------------------------------------------------------------------------
# Elementwise nonlinearities.


def _elementwise(make):
    return triple(Simple(lambda shape: make(), lambda shape: shape))


def Relu(do_stabilize: bool = False):
    """$\\max(x, 0)$."""
    return _elementwise(lambda: nn.Relu(do_stabilize))


def ABRelu(a: float, b: float, do_stabilize: bool = False):
    """$a \\min(x, 0) + b \\max(x, 0)$."""
    return _elementwise(lambda: nn.ABRelu(a, b, do_stabilize))


def LeakyRelu(alpha: float, do_stabilize: bool = False):
    """$\\max(x, \\alpha x)$."""
    return _elementwise(lambda: nn.LeakyRelu(alpha, do_stabilize))


def Abs(do_stabilize: bool = False):
    """$|x|$."""
    return _elementwise(lambda: nn.Abs(do_stabilize))


def Erf(a: float = 1.0, b: float = 1.0, c: float = 0.0):
    """$a \\operatorname{erf}(b x) + c$."""
    return _elementwise(lambda: nn.Erf(a, b, c))


def Gelu(approximate: bool = False):
    """The Gaussian error linear unit."""
    return _elementwise(lambda: nn.Gelu(approximate))


def Sigmoid_like():
    """A sigmoid-like function built from `erf`."""
    return _elementwise(nn.SigmoidLike)


def Sign():
    """$\\operatorname{sign}(x)$."""
    return _elementwise(nn.Sign)


def Exp(a: float = 1.0, b: float = 1.0):
    """$a e^{b x}$."""
    return _elementwise(lambda: nn.Exp(a, b))


def ExpNormalized(gamma: float = 1, shift: float = -1, do_clip: bool = False):
    """The normalised exponential (an RBF of the normalised inputs)."""
    return _elementwise(lambda: nn.ExpNormalized(gamma, shift, do_clip))


def Gaussian(a: float = 1, b: float = -1):
    """$a e^{b x^2}$."""
    return _elementwise(lambda: nn.Gaussian(a, b))


def Sin(a: float = 1.0, b: float = 1.0, c: float = 0.0):
    """$a \\sin(b x + c)$."""
    return _elementwise(lambda: nn.Sin(a, b, c))


def Cos(a: float = 1.0, b: float = 1.0, c: float = 0.0):
    """$a \\cos(b x + c)$."""
    return _elementwise(lambda: nn.Cos(a, b, c))


def Rbf(gamma: float = 1.0):
    """Random Fourier features of an RBF kernel."""
    return _elementwise(lambda: nn.Rbf(gamma))


def Gabor():
    """$e^{-x^2} \\sin x$."""
    return _elementwise(nn.Gabor)


def Monomial(degree: int):
    """$x^d$."""
    return _elementwise(lambda: nn.Monomial(degree))


def RectifiedMonomial(degree: int):
    """$\\max(x, 0)^d$."""
    return _elementwise(lambda: nn.RectifiedMonomial(degree))


def Polynomial(coef: Sequence[float]):
    """$\\sum_i c_i x^i$."""
    return _elementwise(lambda: nn.Polynomial(coef))


def Hermite(degree: int):
    """The normalised Hermite polynomial of degree `degree`."""
    return _elementwise(lambda: nn.Hermite(degree))


def Elementwise(fn=None, nngp_fn=None, d_nngp_fn=None):
    """Any elementwise function (neural-tangents' `stax.Elementwise`): `nngp_fn(cov12, var1,
    var2)` in closed form, or `None` for a numerical kernel."""
    return _elementwise(lambda: nn.Elementwise(fn, nngp_fn, d_nngp_fn))


def ElementwiseNumerical(fn, deg: int, df=None):
    """Any elementwise function, its kernel by Gauss-Hermite quadrature of degree `deg`
    (neural-tangents' `stax.ElementwiseNumerical`; `df` is unused, autodiff gives it)."""
    del df
    return _elementwise(lambda: nn.Elementwise(fn, deg=deg))


# ----------------------------------------------------------------------------------------------
# User layers.


def layer(layer_fn):
    """Make a user layer from a function returning `(init_fn, apply_fn, kernel_fn)` where
    `kernel_fn` maps a compat `Kernel` to a `Kernel` (neural-tangents' `stax.layer`).

    **Example:**

    ```python
    import jax.random as jr
    from eqntk.compat import stax

    @stax.layer
    def Scale(c):
        init_fn = lambda rng, shape: (shape, ())
        apply_fn = lambda params, x, **kw: c * x
        kernel_fn = lambda k, **kw: k.replace(nngp=c**2 * k.nngp, cov1=c**2 * k.cov1,
                                              ntk=None if k.ntk is None else c**2 * k.ntk)
        return init_fn, apply_fn, kernel_fn

    _, _, kernel_fn = stax.serial(stax.Dense(4), Scale(2.0))
    _, _, base_fn = stax.Dense(4)
    x = jr.normal(jr.key(0), (2, 3))
    assert abs(kernel_fn(x, get="nngp") - 4 * base_fn(x, get="nngp")).max() < 1e-6
    ```
    """

    @functools.wraps(layer_fn)
    def wrapped(*args, **kwargs):
        fns = layer_fn(*args, **kwargs)
        return triple(UserLayer(fns[0], fns[1], fns[2]))

    return wrapped


def requires(**static_reqs):
    """Declare what a user `kernel_fn` needs of its input kernel (neural-tangents'
    `stax.requires`).

    **Arguments:**

    - `diagonal_spatial`: `Diagonal(input=Bool.YES)` (the default `Diagonal()`) or `True`:
      the function works on kernels that hold only the spatial diagonal, and receives one
      when the layers above it need no more (e.g. a CNN that ends in `Flatten`). Anything else
      (`Bool.MAYBE`, `Bool.NO`, `False`), or no declaration: it receives the full spatial
      covariance.
    - `diagonal_batch`: `True` (or unset): `cov1`/`cov2` hold one entry per example. `False`
      (the covariance of every pair of examples) is not available: building the layer
      raises `NotImplementedError`.
    - `batch_axis`, `channel_axis`: the layout of the activations that the layer's functions
      see (`Kernel.shape1`, `Kernel.batch_axis`, `apply_fn`'s inputs); default `0` and `-1`.

    Other keywords are accepted and ignored, as in neural-tangents.

    **Returns:**

    A decorator for the user's `kernel_fn`.

    **Example:**

    ```python
    import jax.random as jr
    from eqntk.compat import stax

    seen = []

    @stax.layer
    def Scale(c):
        @stax.requires(diagonal_spatial=stax.Diagonal())  # one position at a time
        def kernel_fn(k, **kwargs):
            seen.append(k.diagonal_spatial)
            return c * k  # neural-tangents' `Kernel.__mul__`: covariances times c**2

        return (lambda rng, shape: (shape, ())), (lambda params, x, **kw: c * x), kernel_fn

    _, _, kernel_fn = stax.serial(stax.Conv(4, (2,)), Scale(2.0), stax.Flatten(), stax.Dense(1))
    kernel_fn(jr.normal(jr.key(0), (2, 5, 3)), get="nngp")
    assert seen == [True]  # the spatial diagonal suffices: no full covariance computed
    ```
    """

    def decorate(kernel_fn):
        @functools.wraps(kernel_fn)
        def with_requirements(*args, **kwargs):
            return kernel_fn(*args, **kwargs)

        setattr(with_requirements, REQUIREMENTS, dict(static_reqs))
        return with_requirements

    return decorate


def supports_masking(remask_kernel: bool):
    """Mark a user layer as supporting masks (neural-tangents' `stax.supports_masking`); masks
    reach the user `kernel_fn` as `Kernel.mask1`/`mask2`, unchanged by this decorator."""
    del remask_kernel
    return lambda fn: fn


_ = MaskedArray


class Bool(enum.IntEnum):
    """neural-tangents' tri-state booleans for `Diagonal`."""

    NO = 0
    MAYBE = 1
    YES = 2


@dataclasses.dataclass(frozen=True)
class Diagonal:
    """neural-tangents' requirement marker for `requires(diagonal_spatial=Diagonal(...))`:
    `input` says whether the layer works on kernels that hold only the diagonal
    (`Bool.YES`, the default), `output` is accepted and not used."""

    input: Bool = Bool.YES
    output: Bool = Bool.NO
