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

from ._hyperparameters import frozen, hyperparameter


Axis = Literal["channel", "spatial"] | int


class LayerNorm(eqx.Module):
    """Layer normalisation without learned scale or shift: $(x - \\mu) / \\sqrt{\\sigma^2 +
    \\epsilon}$, with the mean $\\mu$ and variance $\\sigma^2$ taken over the channels and,
    optionally, spatial axes of one example.

    Kernel rule (it needs a Gaussian input, i.e. an affine layer right before it): the
    channel mean vanishes in the limit and the variance becomes the input variance
    $q(x, s) = \\mathcal{K}(x, x)_{ss}$ averaged over the normalised positions,
    $v(x, s) = \\epsilon + \\mathrm{mean}_{s' \\sim s}\\, q(x, s')$ (the mean runs over the
    normalised spatial axes, with the other positions fixed). Then
    $\\mathcal{K}'(x_1, x_2)_{ss'} = \\mathcal{K}(x_1, x_2)_{ss'} / \\sqrt{v(x_1, s)\\,v(x_2, s')}$,
    the same for $\\Theta$. The output is Gaussian again.
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

    Kernel rule in training mode (`inference=False`), as neural-tangents defines it: the
    masks of different examples are independent, so only covariances that pair a unit with
    itself grow, by $1/\\text{keep\\_rate}$: `cov1`, `cov2` on their spatial diagonal and, when
    `x2` is `None`, the entries of `nngp` and `ntk` with the same example and position. With
    `x2` given, the cross kernel is unchanged. The output is not Gaussian: an affine layer must
    follow before any nonlinearity. With `inference=True` the kernel is unchanged.
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
