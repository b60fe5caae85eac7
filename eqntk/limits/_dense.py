"""Kernel rule of `Dense`."""

from ..nn import Dense
from ._kernel import Kernel
from ._registry import AbstractRule, Requirements, register


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
    ntk = None
    if k.ntk is not None:
        if parameterization == "ntk":
            ntk = w2 * k.ntk + nngp
        else:
            ntk = w2 * k.ntk + fan_in * k.nngp + (0.0 if b_std is None else 1.0)
    return k.replace(
        nngp=nngp,
        ntk=ntk,
        cov1=w2 * k.cov1 + b2,
        cov2=None if k.cov2 is None else w2 * k.cov2 + b2,
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
