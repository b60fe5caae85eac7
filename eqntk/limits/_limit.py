"""`limit`: the transform from a finite network to the kernels of its infinite-width limit."""

import functools as ft
from typing import Any

import equinox as eqx
import jax
import jax.core
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Shaped

from .._callable import AbstractCallable, check_get
from ._blocks import DEFAULT_BLOCK_BYTES, apply_in_blocks
from ._kernel import KERNEL_NAMES, Kernel, selected
from ._registry import Requirements, conform, requirements
from ._spatial import batch_diagonal, gram, self_gram, swap_examples


Get = str | tuple[str, ...] | None


class KernelFn(AbstractCallable):
    """The kernel function of a network's infinite-width limit, as returned by [`eqntk.limit`][].

    It is an `eqx.Module` that holds the network, so it can be passed through `eqx.filter_jit`,
    `jax.vmap`, `jax.grad` (with respect to the hyperparameters inside the network) like any
    other PyTree.

    **Fields:**

    - `model`: the finite network whose limit this is.
    - `block_bytes`: the bound on one block's largest intermediate array, or `None` (see
      [`eqntk.limit`][]).
    """

    model: Any
    block_bytes: int | None = eqx.field(static=True, default=DEFAULT_BLOCK_BYTES)

    def __call__(
        self,
        # Shapes are checked by `_check_input` (a message that names the layouts), not here.
        x1: Float[Array, "..."] | Kernel,
        x2: Float[Array, "..."] | None = None,
        get: Get = None,
        *,
        diagonal_spatial: bool = False,
        mask1: Shaped[ArrayLike, "n1 *spatial"] | None = None,
        mask2: Shaped[ArrayLike, "n2 *spatial"] | None = None,
        pattern1: Shaped[ArrayLike, "n1 ..."] | None = None,
        pattern2: Shaped[ArrayLike, "n2 ..."] | None = None,
    ):
        """Compute the kernels of the network's infinite-width limit.

        **Arguments:**

        - `x1`: a batch of inputs, channel-first: `(N1, C)` vectors, `(N1, C, L)` sequences,
          `(N1, C, H, W)` images; or a [`eqntk.Kernel`][] to continue from (the kernel of
          the network's input, e.g. the output of another kernel function).
        - `x2`: a second batch of the same per-example shape, `(N2, C, ...)`, or `None` for
          `x2 = x1` (the result is then exactly symmetric and cheaper). Must be `None` when `x1`
          is a `Kernel`. Inputs in float16 or bfloat16 are computed in float32, and the kernels
          are returned in float32.
        - `get`: `None` for the whole [`eqntk.Kernel`][]; one of `"nngp"`, `"ntk"`, `"cov1"`,
          `"cov2"` for that array; or a tuple of these names for a named tuple of arrays. The
          NTK is only computed when it is asked for.
        - `diagonal_spatial`: for networks whose output has spatial axes, return only the
          spatial diagonal of the covariance (see [`eqntk.Kernel`][] for the layouts).
        - `mask1`, `mask2`: variable-length inputs: boolean arrays of shape `(N1, *spatial)` and
          `(N2, *spatial)`, `True` at the positions of `x1` / `x2` that are padding (one entry
          per position, shared by all channels). Masked positions contribute nothing: their
          input values are ignored (zero at the input of every layer), attention skips them,
          `GlobalAvgPool` averages over the unmasked positions only (window pooling divides by
          its window size, as in neural-tangents), and every kernel entry that involves one is
          zero. Layers that change the positions take the masks along: strided and `VALID`
          convolutions and pooling keep the mask at each window's centre, and a transposed
          convolution masks every output that a masked input reaches. The finite network gets
          the same semantics from [`eqntk.nn.with_inputs`][]. `None` masks nothing.
        - `pattern1`, `pattern2`: the graphs of `x1` and `x2`, one per example, for networks
          with [`eqntk.nn.Aggregate`][] layers: a dense adjacency `(N, *S, *S)` or an integer
          edge list `(N, E, 2)` / `(N, E, K, 2)` (see [`eqntk.nn.Aggregate`][]). `pattern2`
          must be given with `x2` (and be `None` when `x2` is `None`).

        **Returns:**

        A [`eqntk.Kernel`][], an array, or a named tuple of arrays, as `get` asks.

        **Example:**

        ```python
        import jax.random as jr
        import eqntk
        from eqntk import nn

        model = nn.Sequential([nn.Dense(5, 64, W_std=1.5, b_std=0.1, key=jr.key(0)), nn.Relu(),
                               nn.Dense(64, 1, W_std=1.5, b_std=0.1, key=jr.key(1))])
        kernel_fn = eqntk.limit(model)
        x1, x2 = jr.normal(jr.key(2), (3, 5)), jr.normal(jr.key(3), (4, 5))
        nngp = kernel_fn(x1, x2, "nngp")                      # (3, 4)
        nngp, ntk = kernel_fn(x1, x2, get=("nngp", "ntk"))    # a named tuple
        k = kernel_fn(x1)                                     # a Kernel, x2 = x1
        assert nngp.shape == (3, 4) and k.nngp.shape == (3, 3)
        ```
        """
        # One compiled program per architecture, input shapes and `get` (cached): evaluated op
        # by op, a CNN's kernel dispatches and compiles a few hundred small programs, and its
        # first call takes seconds longer. Under `jax.disable_jit()` it runs op by op.
        out, bad_input = _compiled_kernel(
            self,
            x1,
            x2,
            get,
            diagonal_spatial=diagonal_spatial,
            mask1=mask1,
            mask2=mask2,
            pattern1=pattern1,
            pattern2=pattern2,
        )
        return _checked_inputs(out, bad_input)


@eqx.filter_jit
def _compiled_kernel(
    kernel_fn: KernelFn,
    x1: Any,
    x2: Any,
    get: Get,
    *,
    diagonal_spatial: bool,
    mask1: Any,
    mask2: Any,
    pattern1: Any,
    pattern2: Any,
):
    names = check_get(get, KERNEL_NAMES)
    compute_ntk = names is None or "ntk" in names
    wanted_out = Requirements(diagonal_spatial=diagonal_spatial)
    wanted_in = requirements(kernel_fn.model, wanted_out)
    side = dict(mask1=mask1, mask2=mask2, pattern1=pattern1, pattern2=pattern2)
    if isinstance(x1, Kernel):
        if x2 is not None:
            raise ValueError("`x2` must be None when `x1` is a `Kernel`.")
        given = [name for name, value in side.items() if value is not None]
        if given:
            raise ValueError(
                f"`{given[0]}` must be None when `x1` is a `Kernel`; set it on the kernel "
                f"instead, e.g. `k.replace({given[0]}=...)`."
            )
        k, bad_input = _continue_from(x1, wanted_in, compute_ntk), None
    else:
        k, bad_input = _inputs_to_kernel(x1, x2, wanted_in, compute_ntk, **side)
    out = apply_in_blocks(kernel_fn.model, k, wanted_out, kernel_fn.block_bytes)
    out = jax.tree_util.tree_map(
        lambda leaf: selected(_symmetrised(leaf), get),
        out,
        is_leaf=lambda z: isinstance(z, Kernel),
    )
    return out, bad_input


def _bad_input_message(name: str, dtype: Any) -> str:
    largest = float(jnp.finfo(dtype).max)
    return (
        f"`{name}` has entries that are NaN or infinite, or so large that their mean square "
        f"overflows {jnp.dtype(dtype)} (largest {largest:.3g}); rescale the inputs or compute "
        "in float64."
    )


def _checked_inputs(out: Any, bad_input: Any) -> Any:
    """`out`, or an error when `bad_input` (0: none, 1: `x1`, 2: `x2`, with the dtype) says
    that an input's variance is not finite: a NaN or infinite input, or one whose squared norm
    overflows its dtype, is an error rather than a kernel of NaNs.

    The check is an output of the compiled kernel program rather than an `eqx.error_if` inside
    it: a program with a host callback is never written to JAX's persistent compilation cache
    (see `eqntk.enable_compilation_cache`). Called eagerly, the flag is read back (waiting for
    the kernel) and the error raised here; under a trace it becomes an `eqx.error_if` of the
    caller's program.
    """
    if bad_input is None:
        return out
    code, dtype = bad_input
    messages = [_bad_input_message(name, dtype) for name in ("x1", "x2")]
    if isinstance(code, jax.core.Tracer):
        out = eqx.error_if(out, code == 1, messages[0])
        return eqx.error_if(out, code == 2, messages[1])
    code = int(code)
    if code:
        raise eqx.EquinoxRuntimeError(messages[code - 1])
    return out


def limit(model: Any, *, block_bytes: int | None = DEFAULT_BLOCK_BYTES) -> KernelFn:
    """The infinite-width limit of a network: a function that computes its NNGP and NTK.

    `limit` walks the network's module tree and, for each layer, applies the kernel rule
    registered for its class (see [`eqntk.limits.register`][]). Before computing anything it
    works out, from the output of the network down to its input, how much of each intermediate
    kernel is needed: a CNN that ends in `Flatten` only ever holds the spatial diagonal of its
    covariances.

    The limit is taken with every hidden width to infinity; the widths of the finite network do
    not matter, except in the standard parameterisation and for channel-wise concatenation,
    where they weight the contributions of the layers.

    Working memory is bounded: when some array of the computation (a layer's NNGP or NTK, or a
    rule's temporary) for all pairs of inputs would exceed `block_bytes`, the kernel function
    computes the rows of `x1` in blocks (a `lax.map`; every kernel entry depends on one input
    of each batch only), so the peak is a few times `block_bytes` plus the result, whatever the
    size of `x1` (a block holds at least one row, so a single row against a very large `x2` can
    exceed it). The result is the same
    up to rounding (a kernel of `x1` with itself stays exactly symmetric). For kernels larger
    than memory, or spread over devices, see [`eqntk.batch`][].

    **Arguments:**

    - `model`: the finite network, built from [`eqntk.nn`][] layers or any layers with a
      registered rule.
    - `block_bytes`: the most bytes that one block's largest intermediate array may take
      (default 8 MiB), or `None` to always compute all pairs at once.

    **Returns:**

    A [`eqntk.limits.KernelFn`][] (an `eqx.Module`), called as `kernel_fn(x1, x2=None, get=None)`.

    **Example:**

    ```python
    import jax.random as jr
    import eqntk
    from eqntk import nn

    head = nn.Sequential([nn.Relu(), nn.Dense(16, 1, key=jr.key(1))])
    body = nn.Dense(3, 16, b_std=0.1, key=jr.key(0))
    x = jr.normal(jr.key(2), (4, 3))
    k = eqntk.limit(body)(x)                 # the kernel after the first layer
    ntk = eqntk.limit(head)(k, get="ntk")    # ... continued through the head
    whole = eqntk.limit(nn.Sequential([body, head]))(x, get="ntk")
    assert ntk.shape == (4, 4) and abs(ntk - whole).max() < 1e-5
    ```
    """
    if block_bytes is not None and (
        isinstance(block_bytes, bool) or not isinstance(block_bytes, int) or block_bytes <= 0
    ):
        raise ValueError(f"`block_bytes` must be a positive integer or None, got {block_bytes!r}.")
    return KernelFn(model, block_bytes)


def _inputs_to_kernel(
    x1: Any, x2: Any, wanted: Any, compute_ntk: bool, mask1, mask2, pattern1, pattern2
) -> tuple[Kernel, Any]:
    x1 = _check_input("x1", x1)
    x1_is_x2 = x2 is None
    # With `x2 = None` the kernel is of `x1` with itself.
    x2 = x1 if x2 is None else _check_input("x2", x2)
    if not x1_is_x2:
        if x2.ndim != x1.ndim:
            raise ValueError(
                f"`x2` must have the same rank as `x1` ({x1.ndim}, shape (N1, C, *spatial) = "
                f"{x1.shape}), got shape {x2.shape}."
            )
        if x2.shape[1] != x1.shape[1]:
            raise ValueError(
                f"`x2` must have the same channel size as `x1` ({x1.shape[1]}), "
                f"got {x2.shape[1]} (shape {x2.shape})."
            )
        if x2.shape[2:] != x1.shape[2:]:
            raise ValueError(
                f"`x2` must have the same spatial shape as `x1` {x1.shape[2:]}, "
                f"got {x2.shape[2:]} (shape {x2.shape})."
            )
    if isinstance(wanted, tuple):
        raise ValueError(
            "The network starts with several input streams; pass one input array and create "
            "streams inside the network with `nn.FanOut`."
        )
    if x1_is_x2:
        for name, value in (("mask2", mask2), ("pattern2", pattern2)):
            if value is not None:
                raise ValueError(f"`{name}` must be None when `x2` is None (it is `{name[:-1]}1`).")
    mask1 = _check_mask("mask1", mask1, x1, "x1")
    mask2 = None if x1_is_x2 else _check_mask("mask2", mask2, x2, "x2")
    if mask1 is None and mask2 is not None:
        mask1 = jnp.zeros((x1.shape[0],) + x1.shape[2:], bool)
    if mask2 is None and mask1 is not None and not x1_is_x2:
        mask2 = jnp.zeros((x2.shape[0],) + x2.shape[2:], bool)
    if (pattern1 is None) != (pattern2 is None) and not x1_is_x2:
        raise ValueError("`pattern1` and `pattern2` must be given together when `x2` is given.")
    pattern1 = _check_pattern("pattern1", pattern1, x1)
    pattern2 = None if x1_is_x2 else _check_pattern("pattern2", pattern2, x2)
    # Masked positions contribute nothing: their values are replaced by zeros.
    if mask1 is not None:
        x1 = jnp.where(jnp.expand_dims(mask1, 1), jnp.zeros((), x1.dtype), x1)
    if mask2 is not None:
        x2 = jnp.where(jnp.expand_dims(mask2, 1), jnp.zeros((), x2.dtype), x2)
    diagonal = wanted.diagonal_spatial
    if x1_is_x2:
        nngp = gram(x1, x1, diagonal)
        # Exact symmetry, so that every later map (elementwise or linear) keeps it.
        nngp = 0.5 * (nngp + swap_examples(nngp, diagonal))
        # `cov1` is the batch diagonal of `nngp` bit for bit: correlations on the diagonal are
        # then exactly 1, where arccos would turn a rounding error of 1e-16 into 1e-8.
        cov1 = batch_diagonal(nngp)
        cov2 = None
    else:
        nngp = gram(x1, x2, diagonal)
        cov1 = self_gram(x1, diagonal)
        cov2 = self_gram(x2, diagonal)
    # 0, or which input (1: `x1`, 2: `x2`) has a variance that is not finite: checked by the
    # caller (`_checked_inputs`).
    bad = jnp.where(jnp.all(jnp.isfinite(cov1)), 0, 1)
    if cov2 is not None:
        bad = jnp.where((bad == 0) & ~jnp.all(jnp.isfinite(cov2)), 2, bad)
    k = Kernel(
        nngp=nngp,
        ntk=jnp.zeros_like(nngp) if compute_ntk else None,
        cov1=cov1,
        cov2=cov2,
        shape1=tuple(x1.shape[1:]),
        shape2=tuple(x2.shape[1:]),
        diagonal_spatial=diagonal,
        is_gaussian=False,
        x1_is_x2=x1_is_x2,
        mask1=mask1,
        mask2=mask2,
        pattern1=pattern1,
        pattern2=pattern2,
    )
    return k, (bad, jnp.dtype(x1.dtype))


def _check_mask(name: str, mask: Any, x: Array, x_name: str) -> Array | None:
    if mask is None:
        return None
    mask = jnp.asarray(mask)
    expected = (x.shape[0],) + x.shape[2:]
    if mask.shape != expected:
        hint = " (one entry per position; per-channel masks are not supported)"
        raise ValueError(
            f"`{name}` must have shape (N, *spatial) = {expected} to match `{x_name}` of shape "
            f"{x.shape}, got {mask.shape}{hint if mask.shape == x.shape else ''}."
        )
    if mask.dtype != jnp.bool_:
        raise TypeError(f"`{name}` must be a boolean array, got dtype {mask.dtype}.")
    return mask


def _check_pattern(name: str, pattern: Any, x: Array) -> Array | None:
    if pattern is None:
        return None
    pattern = jnp.asarray(pattern)
    if pattern.ndim < 2 or pattern.shape[0] != x.shape[0]:
        raise ValueError(
            f"`{name}` must hold one graph per example, with a leading batch axis of size "
            f"{x.shape[0]}, got shape {pattern.shape}."
        )
    return pattern


def _check_input(name: str, x: Any) -> Array:
    if not isinstance(x, jax.Array | np.ndarray):
        raise TypeError(f"`{name}` must be an array of shape (N, C, *spatial), got {type(x)}.")
    if x.ndim < 2:
        raise ValueError(
            f"`{name}` must be a batch of channel-first examples with at least 2 axes, "
            f"(N, C) vectors, (N, C, L) sequences or (N, C, H, W) images; got shape {x.shape}."
        )
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"`{name}` must be a floating-point array, got dtype {x.dtype}.")
    # float16 and bfloat16 have too few bits for kernels: near-1 correlations and the
    # arc-cosine maps lose several digits (6% in bfloat16). They are computed in float32, and
    # the kernels are returned in float32.
    if jnp.finfo(x.dtype).bits < 32:
        return jnp.asarray(x, jnp.float32)
    return jnp.asarray(x)


def _continue_from(k: Kernel, wanted: Any, compute_ntk: bool) -> Kernel:
    if isinstance(wanted, tuple):
        raise ValueError("The network starts with several input streams; pass one `Kernel`.")
    if k.diagonal_spatial and not wanted.diagonal_spatial and k.spatial_ndim > 0:
        raise ValueError(
            "`x1` is a `Kernel` in the diagonal spatial layout, but this network needs the full "
            "spatial covariance of its input (it pools or mixes positions). Compute the input "
            "kernel with `diagonal_spatial=False`."
        )
    if compute_ntk and k.ntk is None:
        raise ValueError(
            "`x1` is a `Kernel` without an NTK, but the NTK was asked for. Compute the input "
            "kernel with `get=None` or a `get` that includes 'ntk'."
        )
    if not compute_ntk and k.ntk is not None:
        k = k.replace(ntk=None)
    out = conform(k, wanted)
    assert isinstance(out, Kernel)  # one stream in, one out
    return out


def _symmetrised(k: Kernel) -> Kernel:
    """A kernel of `x1` with itself, made exactly symmetric: `K[i, j] == K[j, i]` bit for bit
    (with each spatial pair swapped too).

    The rules keep symmetry only up to rounding: a window sum or a pooling adds the same terms
    in another order for `(i, j)` and `(j, i)`, and a kernel computed in blocks of rows gets
    `(i, j)` and `(j, i)` from different blocks. See `_mirrored` for how the copy is made exact.
    """
    if not k.x1_is_x2:
        return k
    mirror = ft.partial(_mirrored, k.diagonal_spatial)
    return k.map_covariances(mirror, cov_fn=lambda a: a)


@ft.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _mirrored(diagonal_spatial: bool, a: Array) -> Array:
    """`a` with every entry below the diagonal replaced by its mirror image above it.

    A plain `where(upper, a, swap(a))` is not enough under `jit`: XLA fuses the computation of
    `a` into both reads and may round the two copies of one entry differently (e.g. by
    contracting a multiply and an add into one operation in one of them only); an optimisation
    barrier does not stop it on CPU. A while loop does: its body reads its carry from one
    stored buffer, so both copies are the same bits. The loop runs while `a` is not bitwise
    symmetric, which is at most once (a selection makes it symmetric exactly) and not at all
    when it already is. The derivative is the same selection on the tangent, which needs no
    loop (its exact symmetry does not matter, and a while loop cannot be transposed).
    """
    upper = _on_or_above_diagonal(a.shape, diagonal_spatial)
    swap = ft.partial(swap_examples, diagonal_spatial=diagonal_spatial)
    bits = lambda b: jax.lax.bitcast_convert_type(b, jnp.dtype(f"uint{8 * b.dtype.itemsize}"))
    asymmetric = lambda b: jnp.any(bits(b) != bits(swap(b)))
    return jax.lax.while_loop(asymmetric, lambda b: jnp.where(upper, b, swap(b)), a)


@_mirrored.defjvp
def _mirrored_jvp(diagonal_spatial: bool, primals, tangents):
    (a,), (t,) = primals, tangents
    upper = _on_or_above_diagonal(a.shape, diagonal_spatial)
    return _mirrored(diagonal_spatial, a), jnp.where(upper, t, swap_examples(t, diagonal_spatial))


def _on_or_above_diagonal(shape: tuple[int, ...], diagonal_spatial: bool) -> Array:
    """Where the row index is at most the column index, for a kernel of `x1` with itself.

    In the diagonal spatial layout `(N, N, *S)` a row is an example; in the full layout
    `(N, N, S1, S1', S2, S2', ...)` a row is an example and one position `(i, s1, s2, ...)`, a
    column `(j, s1', s2', ...)`, compared lexicographically.
    """
    ndim = len(shape)
    axes = [0] if diagonal_spatial else [0, *range(2, ndim, 2)]
    row = jnp.zeros((), jnp.int32)
    col = jnp.zeros((), jnp.int32)
    for axis in axes:
        partner = 1 if axis == 0 else axis + 1
        size = shape[axis]
        row = row * size + jax.lax.broadcasted_iota(jnp.int32, shape, axis)
        col = col * size + jax.lax.broadcasted_iota(jnp.int32, shape, partner)
    return row <= col
