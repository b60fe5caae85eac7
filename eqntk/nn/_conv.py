"""Convolutions over any number of spatial dimensions: `Conv`, `ConvTranspose`, `ConvLocal`."""

import abc
import dataclasses
import math
from collections.abc import Sequence

import equinox as eqx
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, ArrayLike, Bool, Float, PRNGKeyArray

from .._geometry import (
    Padding,
    Window,
    centre_mask,
    check_spatial_rank,
    check_window_args,
    conv_transpose_windows,
    conv_windows,
    fold,
    mask_inputs,
    reach_mask,
    window_sum,
)
from ..limits._kernel import Kernel
from ..limits._masking import output_masks
from ..limits._registry import AbstractRule, Requirements, register
from ..limits._spatial import to_diagonal_spatial
from ._affine import (
    AbstractAffine,
    Parameterization,
    affine_kernel,
    check_channels,
    init_affine,
    set_parameterization,
)
from ._masked import AbstractMaskedLayer


def _check_input(layer: "AbstractWindowedAffine", x: Array) -> None:
    check_spatial_rank(layer, len(layer.filter_shape), x.shape, "x")
    expected = layer.s[0] * layer.in_channels
    if x.shape[0] != expected:
        raise ValueError(
            f"`{type(layer).__name__}` expects inputs with {expected} channels on axis 0, "
            f"got shape {x.shape}."
        )


def _set_window_fields(
    layer: "AbstractWindowedAffine",
    in_channels: int,
    out_channels: int,
    filter_shape: Sequence[int],
    strides: Sequence[int] | None,
    padding: Padding,
    dilation: Sequence[int] | None,
) -> None:
    """Check and set the sizes, the window geometry and the mask of a convolution (from its
    `__init__`, after the parameterisation)."""
    for name, size in (("in_channels", in_channels), ("out_channels", out_channels)):
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise ValueError(f"`{name}` must be a positive integer, got {size!r}.")
    layer.filter_shape, layer.strides, layer.dilation = check_window_args(
        "filter_shape", filter_shape, strides, dilation, padding
    )
    layer.in_channels, layer.out_channels = in_channels, out_channels
    layer.padding = padding
    layer.mask = None


def _pad_input(x: Array, windows: tuple[Window, ...]) -> tuple[Array, list[tuple[int, int]]]:
    """Wrap-pad a `CIRCULAR` input; otherwise return the zero paddings for `lax`."""
    if windows and windows[0].circular:
        widths = [(0, 0)] + [(w.pad_lo, w.pad_hi) for w in windows]
        return jnp.pad(x, widths, mode="wrap"), [(0, 0)] * len(windows)
    return x, [(w.pad_lo, w.pad_hi) for w in windows]


def _conv_output_mask(layer: "Conv | ConvLocal", mask: Array) -> Array:
    """The mask at each window's centre (see `centre_mask`)."""
    n = len(layer.filter_shape)
    windows = conv_windows(
        layer, mask.shape[-n:], layer.filter_shape, layer.strides, layer.dilation, layer.padding
    )
    return centre_mask(mask, windows)


def _conv_one_example(
    x: Array, weight: Array, window_strides: Sequence[int], padding, **options
) -> Array:
    """`lax.conv_general_dilated` of one channel-first example `(in, *spatial)` with a weight
    `(out, in, *filter)`, computed channel-last.

    Same result as the channel-first call; XLA:CPU runs a channel-first convolution inside a
    loop (`lax.scan`, `lax.map`: `nn.repeat`, `monte_carlo_kernel`, tiled kernels) about 20x
    slower than outside one, and a channel-last one at full speed in both places.
    """
    n = weight.ndim - 2
    spec = (0, n + 1, *range(1, n + 1))  # batch, channels, spatial of (1, *spatial, C)
    numbers = lax.ConvDimensionNumbers(lhs_spec=spec, rhs_spec=(n + 1, n, *range(n)), out_spec=spec)
    lhs = jnp.moveaxis(x, 0, -1)[None]
    rhs = jnp.moveaxis(weight, (0, 1), (-1, -2))  # (*filter, in, out)
    y = lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, dimension_numbers=numbers, **options
    )
    return jnp.moveaxis(y[0], -1, 0)


def _channel_bias(bias: Array | None, n_spatial: int) -> Array | None:
    return None if bias is None else bias.reshape((-1,) + (1,) * n_spatial)


class AbstractWindowedAffine(AbstractAffine, AbstractMaskedLayer):
    """An affine layer whose every output reads one window of input positions through a
    filter: the convolutions ([`eqntk.nn.Conv`][], [`eqntk.nn.ConvTranspose`][]) and
    [`eqntk.nn.ConvLocal`][]. Each final class holds the fields; the window geometry, the
    fan-in and the widths are read from them the same way."""

    in_channels: eqx.AbstractVar[int]
    out_channels: eqx.AbstractVar[int]
    filter_shape: eqx.AbstractVar[tuple[int, ...]]
    strides: eqx.AbstractVar[tuple[int, ...]]
    padding: eqx.AbstractVar[Padding]
    dilation: eqx.AbstractVar[tuple[int, ...]]

    @property
    def fan_in(self) -> int:
        """The fan-in $C_{in} \\prod_d f_d$ of one output unit (nominal widths)."""
        return self.in_channels * math.prod(self.filter_shape)

    @property
    def widths(self) -> tuple[int, int]:
        """The nominal widths `(in_channels, out_channels)`."""
        return self.in_channels, self.out_channels


class AbstractConvolution(AbstractWindowedAffine):
    """A convolution with weights shared over positions: [`eqntk.nn.Conv`][] and
    [`eqntk.nn.ConvTranspose`][], which differ only in their windows (`windows`) and masks.

    Both have one kernel rule, registered here: shift-and-add each covariance over the windows,
    then the affine map of [`eqntk.nn.Dense`][].
    """

    weight: Float[Array, "out in *filter"]
    bias: Float[Array, " out"] | None
    W_std: Float[Array, ""]
    b_std: Float[Array, ""] | None
    mask: Bool[Array, "*spatial"] | None
    in_channels: int = eqx.field(static=True)
    out_channels: int = eqx.field(static=True)
    filter_shape: tuple[int, ...] = eqx.field(static=True)
    strides: tuple[int, ...] = eqx.field(static=True)
    padding: Padding = eqx.field(static=True)
    dilation: tuple[int, ...] = eqx.field(static=True)
    parameterization: Parameterization = eqx.field(static=True)
    s: tuple[int, int] = eqx.field(static=True)

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        filter_shape: Sequence[int],
        strides: Sequence[int] | None = None,
        padding: Padding = "VALID",
        dilation: Sequence[int] | None = None,
        W_std: ArrayLike = 1.0,
        b_std: ArrayLike | None = None,
        parameterization: Parameterization = "ntk",
        s: tuple[int, int] = (1, 1),
        *,
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        - `in_channels`: the number of input channels.
        - `out_channels`: the number of output channels (the width).
        - `filter_shape`: the filter size along each spatial dimension, e.g. `(3, 3)`.
        - `strides`: the stride along each spatial dimension (for `ConvTranspose`, the
          upsampling factor); `None` for ones.
        - `padding`: `"VALID"` (none), `"SAME"` (zeros; output length `ceil(L / stride)`, or
          `L * stride` for `ConvTranspose`) or `"CIRCULAR"` (the same amounts, wrapped around
          periodically).
        - `dilation`: the filter dilation along each spatial dimension; `None` for ones.
        - `W_std`: the weight standard deviation $\\sigma_W \\geq 0$.
        - `b_std`: the bias standard deviation $\\sigma_b \\geq 0$, or `None` for no bias.
        - `parameterization`: `"ntk"` or `"standard"`, as for [`eqntk.nn.Dense`][], with
          fan-in `in_channels * prod(filter_shape)`.
        - `s`: the width scales `(s0, s1)` of the standard parameterisation (must be `(1, 1)`
          for `"ntk"`).
        - `key`: a `jax.random` key for the initial weights.
        """
        set_parameterization(self, parameterization, s)
        _set_window_fields(
            self, in_channels, out_channels, filter_shape, strides, padding, dilation
        )
        n_out, n_in = self.s[1] * out_channels, self.s[0] * in_channels
        init_affine(self, key, W_std, b_std, (n_out, n_in) + self.filter_shape, (n_out,))

    @property
    @abc.abstractmethod
    def mixes_positions(self) -> bool:
        """Whether the layer adds up outputs of different positions (then its kernel rule
        needs the full spatial covariance of its input)."""

    @abc.abstractmethod
    def windows(self, spatial_shape: tuple[int, ...]) -> tuple[Window, ...]:
        """The window of each spatial dimension for inputs of `spatial_shape`."""


class Conv(AbstractConvolution):
    """A convolution (cross-correlation) over any number of spatial dimensions.

    Acts on one channel-first example `(in_channels, *spatial)` like
    `lax.conv_general_dilated`; the number of spatial dimensions is `len(filter_shape)`. Weights
    and biases are drawn i.i.d. standard normal; in the NTK parameterisation
    $y = \\frac{\\sigma_W}{\\sqrt{n}} W \\star x + \\sigma_b b$ with fan-in
    $n = C_{in} \\prod_d f_d$, and in the standard one the stored weights carry that scale (see
    [`eqntk.nn.Dense`][]).

    Kernel rule: per spatial dimension, with the padded input covariance $\\tilde K$,
    $K'[o, o'] = \\frac{1}{f} \\sum_{k<f} \\tilde K[s o + d k, s o' + d k]$ (a shift-and-add
    along the diagonal of each pair of spatial axes, or along the one axis of the diagonal
    layout), then the affine map of `Dense`: $\\mathcal{K}' = \\sigma_W^2 K' + \\sigma_b^2$,
    $\\Theta' = \\sigma_W^2 \\Theta_{pooled} + \\mathcal{K}'$ (NTK parameterisation) or
    $\\sigma_W^2 \\Theta_{pooled} + n \\mathcal{K}_{pooled} + [\\text{bias}]$ (standard).
    It keeps the spatial layout, so a CNN that ends in `Flatten` only ever holds the diagonal.

    Masks (variable-length inputs): with a mask set by [`eqntk.nn.with_inputs`][] the layer
    zeroes its input at masked positions; an output position is masked when the input position
    at the centre of its window is (`output_mask`), as in neural-tangents.

    **Example:**

    ```python
    import jax.numpy as jnp
    import jax.random as jr
    from eqntk import nn

    conv = nn.Conv(3, 16, (3, 3), padding="SAME", W_std=1.5, b_std=0.1, key=jr.key(0))
    assert conv(jnp.ones((3, 8, 8))).shape == (16, 8, 8)
    ```
    """

    __init__ = AbstractConvolution.__init__  # (for type checkers: Equinox inherits it anyway)

    @property
    def mixes_positions(self) -> bool:
        """`False`: each output position is one window of the input."""
        return False

    def windows(self, spatial_shape: tuple[int, ...]) -> tuple[Window, ...]:
        """The window of each spatial dimension for inputs of `spatial_shape`."""
        return conv_windows(
            self, spatial_shape, self.filter_shape, self.strides, self.dilation, self.padding
        )

    def output_mask(self, mask: Bool[Array, "..."]) -> Bool[Array, "..."]:
        """The mask of the layer's output: each output position takes the mask of the input
        position at the centre of its window (the identity for `SAME` with stride 1).

        **Arguments:**

        - `mask`: `True` at masked positions; its trailing axes are the input's spatial axes
          (leading axes, e.g. a batch, are kept).

        **Returns:**

        The mask over the output positions.

        **Example:**

        ```python
        import jax.numpy as jnp
        import jax.random as jr
        from eqntk import nn

        conv = nn.Conv(1, 4, (3,), strides=(2,), padding="SAME", key=jr.key(0))
        mask = jnp.arange(5) >= 3                  # length 3 of 5
        assert conv.output_mask(mask).tolist() == [False, False, True]
        ```
        """
        return _conv_output_mask(self, mask)

    def __call__(
        self, x: Float[Array, "in *spatial"], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, "out ..."]:
        """Apply the convolution to one channel-first example `x` of shape `(in, *spatial)`.

        **Arguments:**

        - `x`: one example; channels first.
        - `key`: unused (accepted for a uniform layer interface).

        **Returns:**

        The output `(out, *spatial_out)`.
        """
        _check_input(self, x)
        x = mask_inputs(self, self.mask, x)
        x, pads = _pad_input(x, self.windows(x.shape[1:]))
        y = _conv_one_example(x, self.weight, self.strides, pads, rhs_dilation=self.dilation)
        return self.scale_output(y, _channel_bias(self.bias, len(self.filter_shape)))


class ConvTranspose(AbstractConvolution):
    """A transposed convolution over any number of spatial dimensions.

    Acts like `lax.conv_transpose` (with `transpose_kernel=False`): the input is spread out by
    the strides and convolved with stride 1. `SAME` gives output length `L * stride`, `VALID`
    gives `(L - 1) * stride + max(f, stride)`, and `CIRCULAR` computes the `VALID` result and
    folds it periodically onto the `SAME` length (entries past either end are added to the
    positions they wrap to, with the crop centred). Parameterisations as for
    [`eqntk.nn.Conv`][], with fan-in $C_{in} \\prod_d f_d$.

    Kernel rule: the covariance is spread out and padded the same way along both axes of each
    spatial pair, summed along the diagonal over the filter taps and divided by $f$, folded for
    `CIRCULAR`, then mapped by the affine rule of `Conv`. The diagonal layout suffices except for
    `CIRCULAR` padding with a filter wider than the stride, whose folding mixes positions.

    Masks: with a mask set by [`eqntk.nn.with_inputs`][] the layer zeroes its input at masked
    positions; an output position is masked when any masked input position reaches it
    (`output_mask`), as in neural-tangents.

    **Example:**

    ```python
    import jax.numpy as jnp
    import jax.random as jr
    from eqntk import nn

    up = nn.ConvTranspose(3, 8, (3, 3), strides=(2, 2), padding="SAME", key=jr.key(0))
    assert up(jnp.ones((3, 4, 4))).shape == (8, 8, 8)
    ```
    """

    __init__ = AbstractConvolution.__init__  # (for type checkers: Equinox inherits it anyway)

    @property
    def mixes_positions(self) -> bool:
        """Whether `CIRCULAR` folding adds up outputs of different positions."""
        return self.padding == "CIRCULAR" and any(
            (f - 1) * d + 1 > s for f, d, s in zip(self.filter_shape, self.dilation, self.strides)
        )

    def windows(self, spatial_shape: tuple[int, ...]) -> tuple[Window, ...]:
        """The window of each spatial dimension for inputs of `spatial_shape`."""
        return conv_transpose_windows(
            spatial_shape, self.filter_shape, self.strides, self.dilation, self.padding
        )

    def output_mask(self, mask: Bool[Array, "..."]) -> Bool[Array, "..."]:
        """The mask of the layer's output: an output position is masked when any masked input
        position reaches it (`CIRCULAR` as `SAME`, without the folding), as in neural-tangents.

        **Arguments:**

        - `mask`: `True` at masked positions; its trailing axes are the input's spatial axes
          (leading axes, e.g. a batch, are kept).

        **Returns:**

        The mask over the output positions.

        **Example:**

        ```python
        import jax.numpy as jnp
        import jax.random as jr
        from eqntk import nn

        up = nn.ConvTranspose(1, 4, (3,), strides=(2,), padding="SAME", key=jr.key(0))
        mask = jnp.array([False, False, True])
        assert up.output_mask(mask).tolist() == [False] * 4 + [True] * 2
        ```
        """
        padding = "SAME" if self.padding == "CIRCULAR" else self.padding
        n = len(self.filter_shape)
        windows = conv_transpose_windows(
            mask.shape[-n:], self.filter_shape, self.strides, self.dilation, padding
        )
        return reach_mask(mask, windows)

    def __call__(
        self, x: Float[Array, "in *spatial"], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, "out ..."]:
        """Apply the transposed convolution to one channel-first example `x`.

        **Arguments:**

        - `x`: one example `(in, *spatial)`.
        - `key`: unused.

        **Returns:**

        The output `(out, *spatial_out)`.
        """
        _check_input(self, x)
        x = mask_inputs(self, self.mask, x)
        windows = self.windows(x.shape[1:])
        y = _conv_one_example(
            x,
            self.weight,
            (1,) * len(windows),
            [(w.pad_lo, w.pad_hi) for w in windows],
            lhs_dilation=self.strides,
            rhs_dilation=self.dilation,
        )
        for axis, w in enumerate(windows, start=1):
            if w.fold_len is not None:
                y = fold(y, axis, w)
        return self.scale_output(y, _channel_bias(self.bias, len(self.filter_shape)))


class ConvLocal(AbstractWindowedAffine):
    """A locally connected layer: a convolution with an independent filter at each position.

    Like [`eqntk.nn.Conv`][] (same padding, strides and dilation), but the weights and biases are
    not shared between output positions, so the layer is built for one input spatial shape.

    Kernel rule: the output covariance between different positions vanishes (independent
    weights and biases there), and on the spatial diagonal it is that of `Conv`. So the rule
    only ever needs the diagonal of its input covariance, and returns a full layout by placing
    the diagonal (zeros elsewhere) when a later layer mixes positions. Masks as for `Conv`.
    """

    weight: Float[Array, "out in_taps *spatial_out"]
    bias: Float[Array, "out ..."] | None
    W_std: Float[Array, ""]
    b_std: Float[Array, ""] | None
    mask: Bool[Array, "*spatial"] | None
    in_channels: int = eqx.field(static=True)
    out_channels: int = eqx.field(static=True)
    filter_shape: tuple[int, ...] = eqx.field(static=True)
    strides: tuple[int, ...] = eqx.field(static=True)
    padding: Padding = eqx.field(static=True)
    dilation: tuple[int, ...] = eqx.field(static=True)
    spatial_shape: tuple[int, ...] = eqx.field(static=True)
    parameterization: Parameterization = eqx.field(static=True)
    s: tuple[int, int] = eqx.field(static=True)

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        filter_shape: Sequence[int],
        strides: Sequence[int] | None = None,
        padding: Padding = "VALID",
        dilation: Sequence[int] | None = None,
        W_std: ArrayLike = 1.0,
        b_std: ArrayLike | None = None,
        parameterization: Parameterization = "ntk",
        s: tuple[int, int] = (1, 1),
        *,
        spatial_shape: Sequence[int],
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        - `in_channels`, `out_channels`, `filter_shape`, `strides`, `padding`, `dilation`,
          `W_std`, `b_std`, `parameterization`, `s`, `key`: as for [`eqntk.nn.Conv`][].
        - `spatial_shape`: the spatial shape of the inputs (there is one filter per output
          position).

        **Example:**

        ```python
        import jax.numpy as jnp
        import jax.random as jr
        from eqntk import nn

        local = nn.ConvLocal(3, 8, (3, 3), spatial_shape=(6, 6), key=jr.key(0))
        assert local(jnp.ones((3, 6, 6))).shape == (8, 4, 4)
        ```
        """
        set_parameterization(self, parameterization, s)
        _set_window_fields(
            self, in_channels, out_channels, filter_shape, strides, padding, dilation
        )
        n = len(self.filter_shape)
        self.spatial_shape = tuple(int(v) for v in spatial_shape)
        if len(self.spatial_shape) != n or any(v < 1 for v in self.spatial_shape):
            raise ValueError(
                f"`spatial_shape` must hold {n} positive sizes (one per entry of "
                f"`filter_shape`), got {spatial_shape!r}."
            )
        windows = conv_windows(
            self, self.spatial_shape, self.filter_shape, self.strides, self.dilation, padding
        )
        out_spatial = tuple(w.out_len for w in windows)
        n_out, n_in = self.s[1] * out_channels, self.s[0] * in_channels
        weight_shape = (n_out, n_in * math.prod(self.filter_shape)) + out_spatial
        init_affine(self, key, W_std, b_std, weight_shape, (n_out,) + out_spatial)

    def output_mask(self, mask: Bool[Array, "..."]) -> Bool[Array, "..."]:
        """The mask of the layer's output, as for [`eqntk.nn.Conv.output_mask`][].

        **Arguments:**

        - `mask`: `True` at masked positions; its trailing axes are the input's spatial axes.

        **Returns:**

        The mask over the output positions.
        """
        return _conv_output_mask(self, mask)

    def __call__(
        self, x: Float[Array, "in *spatial"], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, "out ..."]:
        """Apply the layer to one channel-first example `x` of shape `(in, *spatial_shape)`.

        **Arguments:**

        - `x`: one example.
        - `key`: unused.

        **Returns:**

        The output `(out, *spatial_out)`.
        """
        _check_input(self, x)
        x = mask_inputs(self, self.mask, x)
        if x.shape[1:] != self.spatial_shape:
            raise ValueError(
                f"`ConvLocal` was built for inputs of spatial shape {self.spatial_shape}, got "
                f"shape {x.shape}."
            )
        windows = conv_windows(
            self, x.shape[1:], self.filter_shape, self.strides, self.dilation, self.padding
        )
        x, pads = _pad_input(x, windows)
        patches = lax.conv_general_dilated_patches(
            x[None], self.filter_shape, self.strides, pads, rhs_dilation=self.dilation
        )[0]
        y = jnp.einsum("oj...,j...->o...", self.weight, patches)
        return self.scale_output(y, self.bias)


# Kernel rules -------------------------------------------------------------------------------------
# Kernel rules of the convolutions: `Conv`, `ConvTranspose` and `ConvLocal`.
#
# Per spatial dimension a convolution maps the covariance of its input by a shift-and-add along
# the diagonal of each pair of axes (the formula is in `Conv`'s docstring), with the input
# covariance padded with zeros for `SAME` and wrapped around for `CIRCULAR`. All dimensions are
# done in one pass (a sum of strided slices of the padded array, see `window_sum`), and the
# affine map of `Dense` follows.
# With masks, the masked entries of the input covariance are zero, and each batch's masks go to
# the output positions (`layer.output_mask`: the window centres, or for `ConvTranspose` every
# output that a masked input reaches).


def window_groups(
    windows: tuple[Window, ...], diagonal_spatial: bool
) -> list[tuple[tuple[int, ...], Window]]:
    """The axes each window acts on in a kernel array, counted from the end (so that the same
    groups serve `nngp`, with two batch axes, and `cov1`, with one)."""
    n = len(windows)
    if diagonal_spatial:
        return [((d - n,), w) for d, w in enumerate(windows)]
    return [((2 * d - 2 * n, 2 * d - 2 * n + 1), w) for d, w in enumerate(windows)]


def check_spatial_input(layer: object, n_spatial: int, k: Kernel) -> None:
    """Raise unless both inputs of `k` have `n_spatial` spatial dimensions."""
    check_spatial_rank(layer, n_spatial, k.shape1, "x1")
    check_spatial_rank(layer, n_spatial, k.shape2, "x2")


def _conv_kernel(layer: AbstractWindowedAffine, k: Kernel, windows: tuple[Window, ...]) -> Kernel:
    """Shift-and-add every covariance over the windows, then apply the affine map; the masks
    go to the output positions (`layer.output_mask`)."""
    groups = window_groups(windows, k.diagonal_spatial)
    n_taps = math.prod(layer.filter_shape)
    spatial = tuple(w.length for w in windows)
    pooled = k.map_covariances(
        lambda a: window_sum(a, groups) / n_taps,
        shape1=k.shape1[:1] + spatial,
        shape2=k.shape2[:1] + spatial,
        **output_masks(layer, k),
    )
    return affine_kernel(layer, pooled)


def _check_affine_input(layer: AbstractWindowedAffine, k: Kernel) -> None:
    check_spatial_input(layer, len(layer.filter_shape), k)
    check_channels(layer, k)


@register(AbstractConvolution)
class ConvolutionRule(AbstractRule[AbstractConvolution]):
    """Kernel rule of [`eqntk.nn.Conv`][] and [`eqntk.nn.ConvTranspose`][]: keeps the spatial
    layout it is asked for, except that a layer that folds positions together (`CIRCULAR`
    `ConvTranspose` with a filter wider than the stride) needs the full covariance of its
    input."""

    def requirements(self, layer: AbstractConvolution, wanted: Requirements) -> Requirements:
        if layer.mixes_positions:
            return dataclasses.replace(wanted, diagonal_spatial=False)
        return wanted

    def __call__(self, layer: AbstractConvolution, k: Kernel, wanted: Requirements) -> Kernel:
        _check_affine_input(layer, k)
        if k.diagonal_spatial and layer.mixes_positions:
            raise ValueError(
                f"`{type(layer).__name__}` with padding='CIRCULAR' and a filter wider than its "
                "stride folds different positions together and needs the full spatial "
                "covariance of its input, got the diagonal layout."
            )
        return _conv_kernel(layer, k, layer.windows(k.shape1[1:]))


def _diagonal_to_full(a: Array, n_spatial: int) -> Array:
    """Place a diagonal-layout covariance on the spatial diagonal of the full layout."""
    lead, spatial = a.shape[:-n_spatial], a.shape[-n_spatial:]
    out = a.reshape(lead + sum(((s, 1) for s in spatial), ()))
    for d, s in enumerate(spatial):
        eye = jnp.eye(s, dtype=a.dtype)
        out = out * eye.reshape((1,) * (len(lead) + 2 * d) + (s, s) + (1, 1) * (n_spatial - d - 1))
    return out


@register(ConvLocal)
class ConvLocalRule(AbstractRule[ConvLocal]):
    """Kernel rule of [`eqntk.nn.ConvLocal`][] (its docstring says why the spatial diagonal of
    the input covariance always suffices)."""

    def requirements(self, layer: ConvLocal, wanted: Requirements) -> Requirements:
        return dataclasses.replace(wanted, diagonal_spatial=True)

    def __call__(self, layer: ConvLocal, k: Kernel, wanted: Requirements) -> Kernel:
        _check_affine_input(layer, k)
        if k.shape1[1:] != layer.spatial_shape or k.shape2[1:] != layer.spatial_shape:
            raise ValueError(
                f"`ConvLocal` was built for inputs of spatial shape {layer.spatial_shape}, got "
                f"per-example shapes {k.shape1} (x1) and {k.shape2} (x2)."
            )
        windows = conv_windows(
            layer, k.shape1[1:], layer.filter_shape, layer.strides, layer.dilation, layer.padding
        )
        out = _conv_kernel(layer, to_diagonal_spatial(k), windows)
        if wanted.diagonal_spatial:
            return out
        n = len(windows)
        return out.map_covariances(lambda a: _diagonal_to_full(a, n), diagonal_spatial=False)
