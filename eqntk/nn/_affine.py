"""The base of affine layers (`Dense`, the convolutions): parameterisations, initialisation,
the scaled forward output and the affine kernel map."""

import abc
import math
from typing import Literal, cast

import equinox as eqx
import jax.random as jr
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from ..limits._kernel import Kernel
from ._hyperparameters import frozen, hyperparameter


Parameterization = Literal["ntk", "standard"]


def set_parameterization(
    layer: "AbstractAffine", parameterization: str, s: tuple[int, int]
) -> None:
    """Check the `parameterization` and width-scale `s` arguments of an affine layer and set
    them on `layer` (from its `__init__`)."""
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
    layer.parameterization = cast(Parameterization, parameterization)
    layer.s = (int(s[0]), int(s[1]))


def init_affine(
    layer: "AbstractAffine",
    key: PRNGKeyArray,
    W_std: ArrayLike,
    b_std: ArrayLike | None,
    weight_shape: tuple[int, ...],
    bias_shape: tuple[int, ...],
) -> None:
    """Set `W_std`, `b_std`, `weight` and `bias` of a new affine layer whose parameterisation
    and widths are set: the hyperparameters as array leaves, and standard-normal weights and
    biases, pre-scaled in the standard parameterisation (by the nominal `layer.fan_in`)."""
    W_std = hyperparameter("W_std", W_std, nonnegative=True)
    b_std = None if b_std is None else hyperparameter("b_std", b_std, nonnegative=True)
    wkey, bkey = jr.split(key)
    dtype = W_std.dtype
    weight = jr.normal(wkey, weight_shape, dtype)
    bias = None if b_std is None else jr.normal(bkey, bias_shape, dtype)
    if layer.parameterization == "standard":
        weight = weight * (W_std / math.sqrt(layer.fan_in))
        bias = None if bias is None or b_std is None else bias * b_std
    layer.W_std, layer.b_std, layer.weight, layer.bias = W_std, b_std, weight, bias


class AbstractAffine(eqx.Module):
    """An affine layer `y = W x + b` over a receptive field, in the NTK or the standard
    parameterisation (see [`eqntk.nn.Dense`][]).

    Weights and biases are drawn i.i.d. standard normal (built by `init_affine`). Its kernel
    rule pools the input covariances over each output's receptive field and then applies
    `affine_kernel` (for `Dense` the pooling is the identity).
    """

    weight: eqx.AbstractVar[Float[Array, "out ..."]]
    bias: eqx.AbstractVar[Float[Array, "out ..."] | None]
    W_std: eqx.AbstractVar[Float[Array, ""]]
    b_std: eqx.AbstractVar[Float[Array, ""] | None]
    parameterization: eqx.AbstractVar[Parameterization]
    s: eqx.AbstractVar[tuple[int, int]]

    @property
    @abc.abstractmethod
    def fan_in(self) -> int:
        """The fan-in of one output unit (nominal widths)."""

    @property
    @abc.abstractmethod
    def widths(self) -> tuple[int, int]:
        """The nominal numbers of input and output channels."""

    def scale_output(self, y: Array, bias: Array | None) -> Array:
        """Scale the raw weighted sum `y` and add the `bias` (broadcast to `y`), as the
        parameterisation says."""
        if self.parameterization == "ntk":
            y = y * (frozen(self.W_std) / math.sqrt(self.fan_in))
            if bias is not None and self.b_std is not None:
                y = y + frozen(self.b_std) * bias
        else:
            y = y / math.sqrt(self.s[0])
            if bias is not None:
                y = y + bias
        return y


# Kernel rules -------------------------------------------------------------------------------------
# The affine map shared by the rules of every affine layer.


def check_channels(layer: AbstractAffine, k: Kernel) -> None:
    """Raise unless the kernel's activations have the layer's (finite) number of input channels."""
    expected = layer.s[0] * layer.widths[0]
    for name, shape in (("x1", k.shape1), ("x2", k.shape2)):
        if shape[0] != expected:
            raise ValueError(
                f"`{type(layer).__name__}` was built for {expected} input channels, but its "
                f"input from `{name}` has {shape[0]} channels (per-example shape {shape})."
            )


def affine_kernel(layer: AbstractAffine, k: Kernel) -> Kernel:
    """The kernel after the layer's affine map: outputs `W_std^2 * (mean over fan-in) + b_std^2`.

    `k` must already hold the input covariances pooled over the receptive field of each output
    (for `Dense` that is the identity). The standard parameterisation uses the fan-in of one
    output unit.
    """
    b_std, fan_in = layer.b_std, layer.fan_in
    out_channels = layer.s[1] * layer.widths[1]
    b2 = 0.0 if b_std is None else k.cast(b_std) ** 2
    w2 = k.cast(layer.W_std) ** 2
    nngp = w2 * k.nngp + b2
    if layer.parameterization == "ntk":
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
