"""The shared machinery of elementwise nonlinearities' kernel rules."""

from collections.abc import Callable
from typing import TypeVar

from jaxtyping import Array

from ._kernel import Kernel
from ._registry import AbstractRule, Requirements
from ._spatial import cross_variances, self_variances, swap_examples, variances


# `fn(q11, q12, q22, ntk)` -> `(nngp', ntk')`: the NNGP and NTK after the nonlinearity, entry by
# entry, from the input variances q11, q22, covariance q12 and NTK (None when not computed).
EntryMap = Callable[[Array, Array, Array, Array | None], tuple[Array, Array | None]]


_Layer = TypeVar("_Layer")


class AbstractElementwiseRule(AbstractRule[_Layer]):
    """A rule of an elementwise nonlinearity: it asks of its input what is asked of its output
    (an elementwise map keeps the spatial layout)."""

    def requirements(self, layer: _Layer, wanted: Requirements) -> Requirements:
        return wanted


def require_gaussian(k: Kernel, layer: object) -> None:
    """Raise unless `k` describes Gaussian activations (the output of an affine layer)."""
    if not k.is_gaussian:
        raise ValueError(
            f"`{type(layer).__name__}` needs Gaussian inputs in the infinite-width limit: put an "
            f"affine layer (`Dense`, `Conv`, ...) directly before it. Its input here is not "
            f"the output of an affine layer."
        )


def symmetrized(a: Array, diagonal_spatial: bool) -> Array:
    """The symmetric part of a kernel of a batch with itself."""
    return 0.5 * a + 0.5 * swap_examples(a, diagonal_spatial)  # no overflow near the max


def map_entries(k: Kernel, fn: EntryMap) -> Kernel:
    """Apply an elementwise nonlinearity's kernel map to every covariance in `k`."""
    var1 = variances(k.cov1, k)
    var2 = variances(k.cov2_or_cov1, k)
    q11, q22 = cross_variances(var1, var2, k.diagonal_spatial)
    nngp, ntk = fn(q11, k.nngp, q22, k.ntk)
    if k.x1_is_x2:
        # Entry maps built from per-example factors can round differently at (a, b) and (b, a);
        # K(x, x) stays exactly symmetric.
        nngp = symmetrized(nngp, k.diagonal_spatial)
        ntk = None if ntk is None else symmetrized(ntk, k.diagonal_spatial)
    c11, c22 = self_variances(var1, k.diagonal_spatial)
    cov1, _ = fn(c11, k.cov1, c22, None)
    cov2 = None
    if k.cov2 is not None:
        c11, c22 = self_variances(var2, k.diagonal_spatial)
        cov2, _ = fn(c11, k.cov2, c22, None)
    return k.replace(nngp=nngp, ntk=ntk, cov1=cov1, cov2=cov2, is_gaussian=False)
