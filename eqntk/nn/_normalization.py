"""Normalisation and regularisation layers: `LayerNorm` and `Dropout`."""

from collections.abc import Sequence
from typing import Literal, cast

import equinox as eqx
import jax
import jax.core
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from ..limits._elementwise import require_gaussian
from ..limits._kernel import Kernel
from ..limits._registry import AbstractRule, Requirements, register
from ..limits._spatial import cross_variances, self_variances, variances
from ._hyperparameters import frozen, hyperparameter


Axis = Literal["channel", "spatial"] | int


class LayerNorm(eqx.Module):
    """Layer normalisation without learned scale or shift: $(x - \\mu) / \\sqrt{\\sigma^2 +
    \\epsilon}$, with the mean $\\mu$ and variance $\\sigma^2$ taken over the channels and,
    optionally, spatial axes of one example.

    Kernel rule: each covariance divided by the square roots of the two examples' variances,
    averaged over the normalised positions; it needs a Gaussian input (an affine layer right
    before it), and its output is Gaussian again.
    """

    axis: tuple[Axis, ...] = eqx.field(static=True)
    eps: float = eqx.field(static=True)

    def __init__(self, axis: Axis | Sequence[Axis] = ("channel",), eps: float = 1e-12):
        """**Arguments:**

        - `axis`: the axes to normalise over. Must include `"channel"` (the limit exists only
          then); may add `"spatial"` (every spatial axis) or spatial axis indices `k >= 0`
          (`0` is the first axis after the channels).
        - `eps`: a small positive number added to the variance. It must be positive: an
          input whose normalised entries are all equal (e.g. all zero) has variance 0, and
          its output (and kernel) would be $0/0$; with `eps > 0` both are 0.

        **Example:**

        ```python
        import jax.numpy as jnp
        from eqntk import nn

        y = nn.LayerNorm()(jnp.array([1.0, 2.0, 3.0]))
        assert abs(float(y.mean())) < 1e-6 and abs(float((y**2).mean()) - 1) < 1e-6
        z = nn.LayerNorm(("channel", "spatial"))(jnp.ones((4, 5, 5)))  # whole image
        ```
        """
        axes: tuple[Axis, ...]
        if isinstance(axis, str | int):
            axes = (cast(Axis, axis),)
        else:
            axes = tuple(axis)
        for a in axes:
            if a not in ("channel", "spatial") and not (isinstance(a, int) and a >= 0):
                raise ValueError(
                    f"`LayerNorm` axes must be 'channel', 'spatial' or spatial axis indices "
                    f"(integers >= 0), got {a!r} in `axis={axes!r}`."
                )
        if "channel" not in axes:
            raise ValueError(
                f"`LayerNorm` must normalise over the channels: `axis` must include 'channel', "
                f"got {axes!r}."
            )
        if isinstance(eps, bool) or not isinstance(eps, int | float | np.integer | np.floating):
            raise TypeError(f"`eps` must be a positive real number, got {eps!r}.")
        if not (np.isfinite(eps) and eps > 0):
            raise ValueError(
                f"`eps` must be a positive real number, got {eps!r}: with `eps=0` an input whose "
                f"entries are all equal (e.g. all zero) has a 0/0 output."
            )
        self.axis = axes
        self.eps = float(eps)

    def spatial_axes(self, n_spatial: int) -> tuple[int, ...]:
        """The spatial axes (numbered from 0) normalised for inputs with `n_spatial` of them.

        **Arguments:**

        - `n_spatial`: the number of spatial axes of the input.

        **Returns:**

        The sorted spatial axis indices.
        """
        axes = set()
        for a in self.axis:
            if a == "spatial":
                axes.update(range(n_spatial))
            elif isinstance(a, int):
                if a >= n_spatial:
                    raise ValueError(
                        f"`LayerNorm(axis={self.axis!r})` normalises over spatial axis {a}, but "
                        f"its input has {n_spatial} spatial axes."
                    )
                axes.add(a)
        return tuple(sorted(axes))

    def __call__(
        self, x: Float[Array, "*shape"], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, "*shape"]:
        """Normalise one channel-first example `x` of shape `(C, *spatial)`."""
        axes = (0,) + tuple(1 + a for a in self.spatial_axes(x.ndim - 1))
        mean = jnp.mean(x, axis=axes, keepdims=True)
        var = jnp.var(x, axis=axes, keepdims=True)
        return (x - mean) / jnp.sqrt(var + self.eps)


class Dropout(eqx.Module):
    """Dropout: keep each unit with probability `keep_rate` and scale the kept ones by
    `1 / keep_rate`.

    The finite layer draws a fresh mask at every call (from `key`); with `inference=True` it
    is the identity. `keep_rate` is the probability of **keeping** a unit, like the `rate`
    argument of neural-tangents' `stax.Dropout` (and unlike `equinox.nn.Dropout`, whose `p` is
    the probability of dropping one: `keep_rate = 1 - p`).

    Kernel rule in training mode, as neural-tangents defines it: the covariances that pair a
    unit with itself grow by $1/\\text{keep\\_rate}$, and the output is not Gaussian (an affine
    layer must follow before any nonlinearity); with `inference=True` the kernel is unchanged.
    """

    keep_rate: Float[Array, ""]
    inference: bool = eqx.field(static=True)

    def __init__(self, keep_rate: ArrayLike, inference: bool = False):
        """**Arguments:**

        - `keep_rate`: the probability of keeping a unit, a real number in `(0, 1]`
          (neural-tangents' `rate`). With `keep_rate = 0` every unit is dropped and the
          rescaling $1/\\text{keep\\_rate}$ has no limit.
        - `inference`: `True` to turn dropout off (the identity).

        **Example:**

        ```python
        import jax.numpy as jnp
        import jax.random as jr
        from eqntk import nn

        layer = nn.Dropout(keep_rate=0.5)
        y = layer(jnp.ones(1000), key=jr.key(0))
        assert set(y.tolist()) <= {0.0, 2.0}
        assert (layer(jnp.ones(3), inference=True) == 1).all()
        ```
        """
        self.keep_rate = hyperparameter("keep_rate", keep_rate)
        # Under `jax.vmap` or `jit` the value is a tracer: the kernel rule checks it then.
        if not isinstance(self.keep_rate, jax.core.Tracer) and not 0 < self.keep_rate <= 1:
            raise ValueError(f"`keep_rate` must be in (0, 1], got {float(self.keep_rate)}.")
        self.inference = inference

    def __call__(
        self,
        x: Float[Array, "*shape"],
        *,
        key: PRNGKeyArray | None = None,
        inference: bool | None = None,
    ) -> Float[Array, "*shape"]:
        """Apply dropout to one example `x`.

        **Arguments:**

        - `x`: one example, of any shape.
        - `key`: a `jax.random` key for the mask; needed unless in inference mode.
        - `inference`: overrides the layer's `inference` flag for this call.

        **Returns:**

        `x` with dropped units set to 0 and kept ones scaled by `1 / keep_rate`.
        """
        inference = self.inference if inference is None else inference
        if inference:
            return x
        if key is None:
            raise ValueError(
                "`Dropout` needs a `key` in training mode: call it with `key=...`, or pass "
                "`inference=True` to turn it off."
            )
        keep_rate = frozen(self.keep_rate).astype(x.dtype)
        keep = jr.bernoulli(key, keep_rate, x.shape)
        return jnp.where(keep, x / keep_rate, jnp.zeros((), x.dtype))


# Kernel rules -------------------------------------------------------------------------------------
# Kernel rules of `LayerNorm` and `Dropout` (also `equinox.nn.Dropout`).


@register(LayerNorm)
class LayerNormRule(AbstractRule[LayerNorm]):
    """Kernel rule of [`eqntk.nn.LayerNorm`][], for a Gaussian input.

    The channel mean vanishes in the limit and the variance becomes the input variance
    $q(x, s) = \\mathcal{K}(x, x)_{ss}$ averaged over the normalised positions,
    $v(x, s) = \\epsilon + \\mathrm{mean}_{s' \\sim s}\\, q(x, s')$ (the mean runs over the
    normalised spatial axes, with the other positions fixed). Then
    $\\mathcal{K}'(x_1, x_2)_{ss'} = \\mathcal{K}(x_1, x_2)_{ss'} / \\sqrt{v(x_1, s)\\,v(x_2, s')}$,
    the same for $\\Theta$. The output is Gaussian again.

    Only the variances of single positions are used, so the rule works in both spatial
    layouts.
    """

    def requirements(self, layer: LayerNorm, wanted: Requirements) -> Requirements:
        return wanted

    def __call__(self, layer: LayerNorm, k: Kernel, wanted: Requirements) -> Kernel:
        require_gaussian(k, layer)
        mean_axes = tuple(1 + a for a in layer.spatial_axes(k.spatial_ndim))
        eps = k.cast(layer.eps)

        def normaliser(cov):
            var = variances(cov, k) + eps
            return jnp.mean(var, axis=mean_axes, keepdims=True) if mean_axes else var

        v1 = normaliser(k.cov1)
        v2 = normaliser(k.cov2_or_cov1)
        q11, q22 = cross_variances(v1, v2, k.diagonal_spatial)
        norm12 = jnp.sqrt(q11 * q22)
        c11, c22 = self_variances(v1, k.diagonal_spatial)

        def cov2_fn(a: Array) -> Array:
            d11, d22 = self_variances(v2, k.diagonal_spatial)
            return a / jnp.sqrt(d11 * d22)

        return k.map_covariances(
            lambda a: a / norm12, cov1_fn=lambda a: a / jnp.sqrt(c11 * c22), cov2_fn=cov2_fn
        )


def dropout_kernel(k: Kernel, keep_rate: Array | float, name: str = "keep_rate") -> Kernel:
    """The kernel after dropout in training mode, as neural-tangents defines it.

    Masks of different examples are independent, so only the entries that pair a unit with
    itself are scaled, by $1/\\text{keep\\_rate}$: `cov1`/`cov2` on their spatial diagonal, and
    `nngp`/`ntk` on the batch and spatial diagonal when `x2` is `None` (with `x2` given, the
    cross kernel is unchanged). The output is not Gaussian. `keep_rate` must be in
    `(0, 1]` (checked at trace time when concrete, else with `eqx.error_if`; `name` is what the
    error calls it).
    """
    rate = k.cast(keep_rate)
    message = (
        f"Dropout in training mode needs `{name}` (the probability of keeping a unit) in (0, 1]"
    )
    if isinstance(rate, jax.core.Tracer):
        rate = eqx.error_if(rate, ~((rate > 0) & (rate <= 1)), message + "; got a value outside.")
    elif not 0 < rate <= 1:
        raise ValueError(f"{message}, got {float(rate)}.")
    factor = 1 / rate
    # Entries of different examples pair different dropout masks: only with `x2 = None` do
    # `nngp` and `ntk` hold entries of an example with itself.
    return k.map_covariances(
        (lambda a: _scale_diagonal(a, factor, k, n_lead=2)) if k.x1_is_x2 else None,
        cov_fn=lambda a: _scale_diagonal(a, factor, k, n_lead=1),
        is_gaussian=False,
    )


def _scale_diagonal(a: Array, factor: Array, k: Kernel, n_lead: int) -> Array:
    """Multiply by `factor` the entries of `a` that pair a unit with itself.

    With two leading (batch) axes those are the entries of the same example; in the full
    spatial layout, also of the same position (`i == i'` for every spatial pair).
    """
    pairs = [(0, 1)] if n_lead == 2 else []
    if not k.diagonal_spatial:
        pairs += [(n_lead + 2 * d, n_lead + 2 * d + 1) for d in range(k.spatial_ndim)]
    same = jnp.ones((1,) * a.ndim, bool)
    for p, q in pairs:
        shape = [1] * a.ndim
        shape[p] = shape[q] = a.shape[p]
        same = same & jnp.eye(a.shape[p], dtype=bool).reshape(shape)
    return jnp.where(same, a * factor, a)


@register(Dropout)
class DropoutRule(AbstractRule[Dropout]):
    """Kernel rule of [`eqntk.nn.Dropout`][]: [`dropout_kernel`] in training mode, the identity
    with `inference=True`."""

    def requirements(self, layer: Dropout, wanted: Requirements) -> Requirements:
        return wanted

    def __call__(self, layer: Dropout, k: Kernel, wanted: Requirements) -> Kernel:
        return k if layer.inference else dropout_kernel(k, layer.keep_rate)


@register(eqx.nn.Dropout)
class EquinoxDropoutRule(AbstractRule[eqx.nn.Dropout]):
    """Kernel rule of `equinox.nn.Dropout`, whose `p` is the probability of dropping a unit:
    the rule of [`eqntk.nn.Dropout`][] with `keep_rate = 1 - p`."""

    def requirements(self, layer: eqx.nn.Dropout, wanted: Requirements) -> Requirements:
        return wanted

    def __call__(self, layer: eqx.nn.Dropout, k: Kernel, wanted: Requirements) -> Kernel:
        p = layer.p
        if not isinstance(p, jax.core.Tracer):
            # Static checks first: `p=1` drops every unit (no limit), `p` outside [0, 1) is not a
            # probability; both would otherwise give infinite or negative variances.
            hyperparameter("p", p)  # a finite real number
            p = float(np.asarray(p))  # compared here, at trace time (not a traced array)
            if not 0 <= p <= 1:
                raise ValueError(
                    f"`equinox.nn.Dropout` needs its drop probability `p` in [0, 1], "
                    f"got {float(p)}."
                )
            if p == 1 and not layer.inference:
                raise ValueError(
                    "`equinox.nn.Dropout(p=1.0)` in training mode drops every unit: the rescaling "
                    "1/(1 - p) has no infinite-width limit. Use `p` in [0, 1), or "
                    "`inference=True` to turn dropout off."
                )
        if layer.inference:
            return k
        return dropout_kernel(k, 1 - jnp.asarray(p), name="1 - p")
