"""Shared pieces of the dynamics functions: layouts, the diagonal regulariser and input checks.

**Layouts.** As in neural-tangents, a kernel acts on the outputs $f(x)$ of a network with the
`trace_axes` of the outputs removed: for targets `y_train` of shape `(N, K)` and
`trace_axes=(-1,)` (the default) the kernel is `(N, N)` and acts identically on each of the K
outputs, $\\Theta \\otimes I_K$. In general the kernel of outputs with non-trace axes
`(a, b, ...)` has the interleaved shape `(a, a', b, b', ...)`. Internally every kernel is made a
matrix `(P, P')` (all non-trace axes flattened) and every output array a matrix `(P, C)` (the
trace axes flattened into C columns), and results are put back into the caller's layout.
1-D targets `(N,)` (one output per point) have no output axis to trace over: with them
`trace_axes` is ignored, the kernel is `(N, N)` and the outputs are 1-D too.
"""

import math
from collections.abc import Sequence
from typing import Any, TypeAlias

import equinox as eqx
import jax
import jax.core
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float


Axes: TypeAlias = int | Sequence[int]
# An array, or anything with `.nngp` / `.ntk` fields: an `eqntk.Kernel`, or the named tuple that
# `kernel_fn(x1, x2, get=("nngp", "ntk"))` returns.
KernelLike: TypeAlias = Any


class Layout(eqx.Module):
    """How the caller's output arrays map to the internal `(P, C)` matrices."""

    shape: tuple[int, ...] = eqx.field(static=True)
    trace_axes: tuple[int, ...] = eqx.field(static=True)

    @property
    def non_trace_axes(self) -> tuple[int, ...]:
        return tuple(a for a in range(len(self.shape)) if a not in self.trace_axes)

    @property
    def trace_shape(self) -> tuple[int, ...]:
        return tuple(self.shape[a] for a in self.trace_axes)

    @property
    def points_shape(self) -> tuple[int, ...]:
        return tuple(self.shape[a] for a in self.non_trace_axes)

    @property
    def n_points(self) -> int:
        """The number of rows `P` of the matrix form."""
        return math.prod(self.points_shape)

    def with_points(self, points_shape: tuple[int, ...]) -> "Layout":
        """The layout of outputs on other inputs (e.g. the test set): new non-trace sizes."""
        shape = list(self.shape)
        for a, size in zip(self.non_trace_axes, points_shape, strict=True):
            shape[a] = size
        return Layout(tuple(shape), self.trace_axes)

    def to_matrix(self, f: Array) -> Float[Array, "p c"]:
        """`(*shape)` -> `(P, C)`: non-trace axes to rows, trace axes to columns."""
        f = jnp.transpose(f, self.non_trace_axes + self.trace_axes)
        return f.reshape(self.n_points, math.prod(self.trace_shape))

    def from_matrix(self, f: Array) -> Array:
        """`(*lead, P, C)` -> `(*lead, *shape)`."""
        lead = f.shape[:-2]
        f = f.reshape(lead + self.points_shape + self.trace_shape)
        order = self.non_trace_axes + self.trace_axes
        n = len(lead)
        return jnp.transpose(
            f, tuple(range(n)) + tuple(n + order.index(a) for a in range(len(order)))
        )

    def check(self, name: str, f: Any) -> Array:
        """`f` broadcast to this layout, with a clear error when it cannot be."""
        f = jnp.asarray(f)
        try:
            return jnp.broadcast_to(f, self.shape)
        except ValueError:
            raise ValueError(
                f"`{name}` must have shape {self.shape} (or broadcast to it), got {f.shape}."
            ) from None


def layout_of(y_train: Array, trace_axes: Axes) -> Layout:
    """The layout of `y_train` with the given `trace_axes`, checked."""
    axes = (trace_axes,) if isinstance(trace_axes, int) else tuple(trace_axes)
    ndim = y_train.ndim
    if ndim == 0:
        raise ValueError(
            "`y_train` must have at least one axis (the training points), got a scalar."
        )
    for a in axes:
        if not -ndim <= a < ndim:
            raise ValueError(
                f"`trace_axes` must be axes of `y_train` (shape {y_train.shape}), got {trace_axes}."
            )
    canonical = tuple(sorted(a % ndim for a in axes))
    if len(set(canonical)) != len(canonical):
        raise ValueError(f"`trace_axes` names an axis twice: {trace_axes}.")
    if ndim == 1:
        # 1-D targets `(N,)` are one output per point: there is no output axis to trace over,
        # so the default `trace_axes=(-1,)` (or any axes) leaves the points axis alone.
        canonical = ()
    if len(canonical) == ndim:
        raise ValueError(
            f"`trace_axes` {trace_axes} leaves no axis of `y_train` (shape {y_train.shape}) for "
            "the training points."
        )
    return Layout(tuple(y_train.shape), canonical)


def kernel_to_matrix(
    name: str, k: Any, rows: tuple[int, ...], cols: tuple[int, ...]
) -> Float[Array, "p q"]:
    """An interleaved kernel `(a, a', b, b', ...)` as a matrix, after checking its shape."""
    if not isinstance(k, jax.Array | np.ndarray):
        raise TypeError(f"`{name}` must be an array, got {type(k).__name__}.")
    expected = tuple(s for pair in zip(rows, cols, strict=True) for s in pair)
    if tuple(k.shape) != expected:
        raise ValueError(
            f"`{name}` must have shape {expected} to match the targets (the non-trace axes of "
            f"the outputs, interleaved), got {tuple(k.shape)}."
        )
    if not jnp.issubdtype(k.dtype, jnp.floating):
        raise TypeError(f"`{name}` must be a floating-point array, got dtype {k.dtype}.")
    n = len(rows)
    k = jnp.transpose(jnp.asarray(k), tuple(range(0, 2 * n, 2)) + tuple(range(1, 2 * n, 2)))
    return k.reshape(math.prod(rows), math.prod(cols))


def cov_from_matrix(c: Array, points_shape: tuple[int, ...]) -> Array:
    """`(*lead, Q, Q)` -> `(*lead, a, a', b, b', ...)`, the interleaved kernel layout."""
    lead = c.shape[:-2]
    n, m = len(lead), len(points_shape)
    c = c.reshape(lead + points_shape + points_shape)
    pairs = tuple(i for a in range(m) for i in (n + a, n + m + a))
    return jnp.transpose(c, tuple(range(n)) + pairs)


def pick(k: KernelLike, name: str, argument: str) -> Any:
    """The `name` ("nngp" or "ntk") part of a kernel argument (an array serves for both)."""
    if isinstance(k, jax.Array | np.ndarray):
        return k
    value = getattr(k, name, None)
    if value is None:
        raise ValueError(
            f"`{argument}` must contain the {name!r} kernel for this prediction, got "
            f"{type(k).__name__} without it."
        )
    return value


def nonnegative(name: str, value: Any, dtype: Any) -> Float[Array, ""]:
    """A scalar argument as a 0-d array of `dtype`, checked to be finite and non-negative.

    Concrete values are checked at once; traced values (under `jit` or `vmap`) through
    `eqx.error_if`, so a bad value raises instead of propagating NaNs.
    """
    if not isinstance(value, jax.core.Tracer):
        concrete = np.asarray(value)
        if concrete.shape != ():
            raise ValueError(f"`{name}` must be a scalar, got shape {concrete.shape}.")
        if not np.isfinite(concrete) or concrete < 0:
            raise ValueError(f"`{name}` must be finite and non-negative, got {concrete}.")
    array = jnp.asarray(value)
    if array.shape != ():
        raise ValueError(f"`{name}` must be a scalar, got shape {array.shape}.")
    array = array.astype(dtype)
    return eqx.error_if(
        array, ~(jnp.isfinite(array) & (array >= 0)), f"`{name}` must be finite and non-negative."
    )


def check_finite(name: str, a: Array) -> Array:
    """`a`, raising (through `eqx.error_if`) when it holds a NaN or an infinity."""
    return eqx.error_if(
        a, ~jnp.all(jnp.isfinite(a)), f"`{name}` holds a non-finite value (NaN or inf)."
    )


def check_psd(name: str, k: Float[Array, "p p"], steps: int = 20) -> Float[Array, "p p"]:
    """`k`, raising (through `eqx.error_if`) when it is clearly not positive semi-definite.

    A few (`steps`) Lanczos iterations from a fixed start give Ritz values, Rayleigh quotients
    of $k$ that converge first to its extreme eigenvalues; one below
    $-\\delta$ = $-100 P \\epsilon \\max_i k_{ii}$ (beyond the rounding of a positive
    semi-definite kernel) proves an eigenvalue below it. The cost is `steps` matrix-vector
    products, $O(P^2)$ each: a factorisation or an eigendecomposition would cost more than
    the whole ODE solve it guards. It finds large negative eigenvalues, those that make
    gradient descent diverge quickly; one slightly below $-\\delta$ may go unnoticed.
    """
    p = k.shape[0]
    m = min(steps, p)
    dtype = k.dtype
    # A fixed start with no structure in common with kernels (a hash of the index, in
    # [-0.5, 0.5)): no random number generator in the program, which would add to its compile.
    index = jnp.arange(1, p + 1, dtype=dtype)
    start = jnp.sin(index * 12.9898) * 43758.5453
    start = start - jnp.floor(start) - 0.5
    basis = jnp.zeros((m + 1, p), dtype).at[0].set(start / jnp.linalg.norm(start))
    tiny = jnp.finfo(dtype).tiny

    def step(j, carry):
        basis, alpha, beta = carry
        w = k @ basis[j]
        alpha = alpha.at[j].set(basis[j] @ w)
        # Full reorthogonalisation (twice is enough), against the rows found so far (the
        # others are zero).
        w = w - basis.T @ (basis @ w)
        w = w - basis.T @ (basis @ w)
        norm = jnp.linalg.norm(w)
        # On an invariant subspace (norm 0) the next rows stay zero: Ritz values 0, harmless.
        basis = basis.at[j + 1].set(jnp.where(norm > tiny, w / jnp.maximum(norm, tiny), 0))
        return basis, alpha, beta.at[j].set(norm)

    zeros = jnp.zeros(m, dtype)
    _, alpha, beta = jax.lax.fori_loop(0, m, step, (basis, zeros, zeros))
    tridiagonal = jnp.diag(alpha) + jnp.diag(beta[:-1], 1) + jnp.diag(beta[:-1], -1)
    smallest = jnp.linalg.eigvalsh(tridiagonal)[0]
    delta = 100 * p * jnp.finfo(dtype).eps * jnp.max(jnp.abs(jnp.diagonal(k)))
    return eqx.error_if(
        k,
        smallest < -delta,
        f"`{name}` is not positive semi-definite (it has an eigenvalue below "
        "-100 P eps max(diag)): a kernel must be, or gradient descent diverges.",
    )


def check_symmetric(name: str, k: Float[Array, "p p"]) -> Float[Array, "p p"]:
    """`k`, raising (through `eqx.error_if`) when it is not symmetric.

    Kernels computed with `x2=None` are exactly symmetric; the tolerance, $\\sqrt{\\epsilon}$
    relative to the largest entry, only admits the rounding of kernels computed as `K(x, x)`.
    """
    tol = math.sqrt(float(jnp.finfo(k.dtype).eps)) * jnp.max(jnp.abs(k))
    return eqx.error_if(
        k, jnp.max(jnp.abs(k - k.T)) > tol, f"`{name}` must be symmetric (it is not)."
    )


def regularised(
    k: Float[Array, "p p"], diag_reg: Float[Array, ""], absolute_scale: bool
) -> Float[Array, "p p"]:
    """$k + \\lambda I$ with $\\lambda$ = `diag_reg`, times $\\mathrm{tr}(k)/P$ unless absolute."""
    scale = diag_reg if absolute_scale else diag_reg * jnp.trace(k) / k.shape[0]
    return k + scale * jnp.eye(k.shape[0], dtype=k.dtype)


def square_kernel(name: str, k: Any, layout: Layout) -> Float[Array, "p p"]:
    """A train-train kernel as a checked, finite and symmetric `(P, P)` matrix."""
    k = kernel_to_matrix(name, k, layout.points_shape, layout.points_shape)
    return check_symmetric(name, check_finite(name, k))


def training_problem(
    k_train_train: Any,
    y_train: ArrayLike,
    diag_reg: Any,
    diag_reg_absolute_scale: bool,
    trace_axes: Axes,
) -> tuple[Float[Array, "p p"], Float[Array, "p c"], Layout]:
    """The checked arguments of a kernel regression on a training set: the regularised
    train-train kernel $k + \\lambda I$ as a `(P, P)` matrix (see `regularised`), the finite
    targets as a `(P, C)` matrix of its dtype, and the targets' layout."""
    y = jnp.asarray(y_train)
    layout = layout_of(y, trace_axes)
    y = check_finite("y_train", y)
    k = square_kernel("k_train_train", k_train_train, layout)
    reg = nonnegative("diag_reg", diag_reg, k.dtype)
    a = regularised(k, reg, diag_reg_absolute_scale)
    return a, layout.to_matrix(y).astype(k.dtype), layout


def test_points(name: str, k_test_train: Any, layout: Layout) -> tuple[int, ...]:
    """The non-trace shape of the test outputs, read off a test-train kernel and checked."""
    shape = getattr(k_test_train, "shape", None)
    n = len(layout.points_shape)
    if shape is None or len(shape) != 2 * n or tuple(shape[1::2]) != layout.points_shape:
        raise ValueError(
            f"`{name}` must have shape (M, {layout.points_shape[0]}) (test points by training "
            f"points; in general the test and training non-trace axes interleaved), got "
            f"{None if shape is None else tuple(shape)}."
        )
    return tuple(shape[0::2])


def test_problem(
    layout: Layout, fx_test_0: Any, k_test_train: Any
) -> tuple[Layout, Float[Array, "q p"], Float[Array, "q c"]]:
    """The checked test-set arguments of a prediction from a training set: the layout of the
    test outputs, the test-train kernel as a `(Q, P)` matrix, and the initial test outputs as
    a `(Q, C)` matrix (both of the dtypes they came with)."""
    if k_test_train is None:
        raise ValueError("`k_test_train` is needed to predict the test outputs `fx_test_0`.")
    points = test_points("k_test_train", k_test_train, layout)
    k_td = kernel_to_matrix("k_test_train", k_test_train, points, layout.points_shape)
    test = layout.with_points(points)
    return test, k_td, test.to_matrix(test.check("fx_test_0", fx_test_0))
