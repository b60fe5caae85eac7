"""`Dense`: the fully-connected layer, acting on the channel axis."""

import math
from typing import Literal, cast

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from ..limits._kernel import Kernel
from ..limits._registry import AbstractRule, Requirements, register
from ._hyperparameters import frozen, hyperparameter


Parameterization = Literal["ntk", "standard"]


def check_parameterization(parameterization: str, s: tuple[int, int]) -> None:
    """Validate the `parameterization` and width-scale `s` arguments of an affine layer."""
    if parameterization not in ("ntk", "standard"):
        raise ValueError(
            f"`parameterization` must be 'ntk' or 'standard', got {parameterization!r}."
        )
    if len(s) != 2 or any(int(si) != si or si < 1 for si in s):
        raise ValueError(f"`s` must be a pair of positive integers, got {s!r}.")
    if parameterization == "ntk" and tuple(s) != (1, 1):
        raise ValueError(
            f"`s` only applies to the standard parameterization; got s={s!r} with 'ntk'."
        )


class Dense(eqx.Module):
    """A fully-connected layer on the channel axis: `y = W x + b` at every spatial position.

    Two parameterisations, with weights `W` and biases `b` drawn i.i.d. standard normal:

    - `"ntk"` (the default): $y = \\frac{\\sigma_W}{\\sqrt{n_{in}}} W x + \\sigma_b b$. The stored
      weights stay standard normal and the scale is applied in the forward pass, so gradient
      descent on `W` is gradient descent in the NTK parameterisation.
    - `"standard"`: the stored weights are $\\sigma_W / \\sqrt{n_{in}} \\cdot W$ and the biases
      $\\sigma_b b$, and $y = W x / \\sqrt{s_0} + b$. With the width scales `s = (s0, s1)` the
      layer really has `s0 * in_features` inputs and `s1 * out_features` outputs, while the
      kernel is that of nominal widths `in_features` (see Sohl-Dickstein et al. 2020, "On the
      infinite width limit of neural networks with a standard parameterization").

    Kernel rule (NNGP $\\mathcal{K}$, NTK $\\Theta$, per entry):
    $\\mathcal{K}' = \\sigma_W^2 \\mathcal{K} + \\sigma_b^2$; in the NTK parameterisation
    $\\Theta' = \\sigma_W^2 \\Theta + \\mathcal{K}'$, in the standard one
    $\\Theta' = \\sigma_W^2 \\Theta + n_{in} \\mathcal{K} + [\\text{bias}]$.

    `W_std` and `b_std` are array leaves: kernels can be differentiated and vmapped with respect
    to them. The finite forward pass applies `jax.lax.stop_gradient` to them, so training the
    network (e.g. with optax's `sgd` or `adam`) leaves them unchanged; an optimiser that
    changes parameters without a gradient (weight decay) must be given a filter that excludes
    them.
    """

    weight: Float[Array, "out in"]
    bias: Float[Array, " out"] | None
    W_std: Float[Array, ""]
    b_std: Float[Array, ""] | None
    in_features: int = eqx.field(static=True)
    out_features: int = eqx.field(static=True)
    parameterization: Parameterization = eqx.field(static=True)
    s: tuple[int, int] = eqx.field(static=True)

    def __init__(
        self,
        in_features: int,
        out_features: int,
        W_std: ArrayLike = 1.0,
        b_std: ArrayLike | None = None,
        parameterization: str = "ntk",
        s: tuple[int, int] = (1, 1),
        *,
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        - `in_features`: the number of input channels.
        - `out_features`: the number of output channels (the width; it does not change the
          kernel in the NTK parameterisation).
        - `W_std`: the weight standard deviation $\\sigma_W \\geq 0$.
        - `b_std`: the bias standard deviation $\\sigma_b \\geq 0$, or `None` for no bias.
        - `parameterization`: `"ntk"` or `"standard"`.
        - `s`: the width scales `(s0, s1)` of the standard parameterisation (must be `(1, 1)`
          for `"ntk"`).
        - `key`: a `jax.random` key for the initial weights.

        **Example:**

        ```python
        import jax.numpy as jnp
        import jax.random as jr
        from eqntk import nn

        layer = nn.Dense(3, 8, W_std=1.5, b_std=0.1, key=jr.key(0))
        assert layer(jnp.ones(3)).shape == (8,)
        assert layer(jnp.ones((3, 5, 5))).shape == (8, 5, 5)   # acts on the channel axis
        ```
        """
        check_parameterization(parameterization, s)
        for name, size in (("in_features", in_features), ("out_features", out_features)):
            if not isinstance(size, int) or size < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {size!r}.")
        self.in_features = in_features
        self.out_features = out_features
        self.parameterization = cast(Parameterization, parameterization)  # checked above
        self.s = (int(s[0]), int(s[1]))
        self.W_std = hyperparameter("W_std", W_std, nonnegative=True)
        self.b_std = None if b_std is None else hyperparameter("b_std", b_std, nonnegative=True)
        wkey, bkey = jr.split(key)
        n_in, n_out = self.s[0] * in_features, self.s[1] * out_features
        dtype = self.W_std.dtype
        weight = jr.normal(wkey, (n_out, n_in), dtype)
        bias = None if b_std is None else jr.normal(bkey, (n_out,), dtype)
        if parameterization == "standard":
            weight = weight * (self.W_std / math.sqrt(in_features))
            bias = None if bias is None or self.b_std is None else bias * self.b_std
        self.weight = weight
        self.bias = bias

    def __call__(
        self, x: Float[Array, "in *spatial"], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, "out *spatial"]:
        """Apply the layer to one channel-first example `x` of shape `(in, *spatial)`.

        **Arguments:**

        - `x`: one example; channels first.
        - `key`: unused (accepted for a uniform layer interface).

        **Returns:**

        The output `(out, *spatial)`.

        **Example:**

        ```python
        import jax.numpy as jnp
        import jax.random as jr
        from eqntk import nn

        assert nn.Dense(2, 4, key=jr.key(0))(jnp.ones(2)).shape == (4,)
        ```
        """
        if x.ndim == 0 or x.shape[0] != self.weight.shape[1]:
            raise ValueError(
                f"`Dense` expects inputs with {self.weight.shape[1]} channels on axis 0, "
                f"got shape {x.shape}."
            )
        y = jnp.tensordot(self.weight, x, axes=(1, 0))
        bias = None if self.bias is None else self.bias.reshape((-1,) + (1,) * (x.ndim - 1))
        if self.parameterization == "ntk":
            y = y * (frozen(self.W_std) / math.sqrt(x.shape[0]))
            if bias is not None and self.b_std is not None:
                y = y + frozen(self.b_std) * bias
        else:
            y = y / math.sqrt(self.s[0])
            if bias is not None:
                y = y + bias
        return y


# Kernel rules -------------------------------------------------------------------------------------
# Kernel rule of `Dense`.


def check_channels(layer: object, expected: int, k: Kernel) -> None:
    """Raise unless the kernel's activations have the `expected` number of channels."""
    for name, shape in (("x1", k.shape1), ("x2", k.shape2)):
        if shape[0] != expected:
            raise ValueError(
                f"`{type(layer).__name__}` was built for {expected} input channels, but its "
                f"input from `{name}` has {shape[0]} channels (per-example shape {shape})."
            )


def affine_kernel(
    k: Kernel, layer: object, W_std, b_std, fan_in: int, parameterization: str, out_channels: int
) -> Kernel:
    """The kernel after an affine map whose outputs are `W_std^2 * (mean over fan-in) + b_std^2`.

    `k` must already hold the input covariances pooled over the receptive field of each output
    (for `Dense` that is the identity). `fan_in` is the finite fan-in of one output unit, used by
    the standard parameterisation.
    """
    b2 = 0.0 if b_std is None else k.cast(b_std) ** 2
    w2 = k.cast(W_std) ** 2
    nngp = w2 * k.nngp + b2
    if parameterization == "ntk":
        ntk_fn = lambda ntk: w2 * ntk + nngp
    else:
        ntk_fn = lambda ntk: w2 * ntk + fan_in * k.nngp + (0.0 if b_std is None else 1.0)
    return k.map_covariances(
        lambda _: nngp,
        ntk_fn,
        cov_fn=lambda cov: w2 * cov + b2,
        shape1=(out_channels,) + k.shape1[1:],
        shape2=(out_channels,) + k.shape2[1:],
        is_gaussian=True,
    )


@register(Dense)
class DenseRule(AbstractRule[Dense]):
    """Kernel rule of [`eqntk.nn.Dense`][]: acts on the channel axis, positions unchanged."""

    def requirements(self, layer: Dense, wanted: Requirements) -> Requirements:
        return wanted

    def __call__(self, layer: Dense, k: Kernel, wanted: Requirements) -> Kernel:
        check_channels(layer, layer.s[0] * layer.in_features, k)
        return affine_kernel(
            k,
            layer,
            layer.W_std,
            layer.b_std,
            layer.in_features,
            layer.parameterization,
            layer.s[1] * layer.out_features,
        )
