"""neural-tangents' `batch`, on [`eqntk.batch`][]."""

import jax

from .. import batching
from ._kernel import Kernel


def batch(kernel_fn, batch_size: int = 0, device_count: int = -1, store_on_device: bool = True):
    """Compute a kernel function's output tile by tile (neural-tangents' `batch`).

    **Arguments:**

    - `kernel_fn`: a kernel function `kernel_fn(x1, x2, get, **kwargs)`, e.g. a stax
      `kernel_fn` or `empirical_kernel_fn(apply_fn)` with `params` passed by keyword.
    - `batch_size`: the tile size in examples; `0` returns `kernel_fn` unchanged.
    - `device_count`: how many devices to spread the tiles over; `-1` for all, `0` for one.
    - `store_on_device`: `False` keeps the result in host memory.

    **Returns:**

    A kernel function with the same signature and results.

    **Example:**

    ```python
    import jax.random as jr
    import eqntk.compat as nt
    from eqntk.compat import stax

    _, _, kernel_fn = stax.serial(stax.Dense(8), stax.Relu(), stax.Dense(1))
    x = jr.normal(jr.key(0), (6, 3))
    batched = nt.batch(kernel_fn, batch_size=2)
    assert abs(batched(x, None, "nngp") - kernel_fn(x, None, "nngp")).max() < 1e-12
    ```
    """
    if not isinstance(batch_size, int) or batch_size < 0:
        raise ValueError(f"`batch_size` must be a non-negative integer, got {batch_size!r}.")
    if batch_size == 0:
        return kernel_fn
    devices = jax.devices()
    if device_count == 0:
        devices = devices[:1]
    elif device_count > 0:
        devices = devices[:device_count]
    plain = batching.batch(
        kernel_fn, batch_size, devices=devices, store_on_host=not store_on_device
    )

    def batched_kernel_fn(x1, x2=None, *args, **kwargs):
        pattern = kwargs.get("pattern")
        if pattern is not None and any(p is not None for p in pattern):
            return _tiles_with_patterns(kernel_fn, batch_size, x1, x2, args, kwargs)
        if not args or _is_get(args[0]):
            get = args[0] if args else kwargs.pop("get", None)
            out = plain(x1, x2, get, *args[1:], **kwargs)
        else:
            # Positional arguments after `x2` that are not `get` (e.g. `params` of an
            # empirical kernel function) are passed to every tile unchanged.
            def with_args(a, b, get=None, **kw):
                return kernel_fn(a, b, *args, **kw)

            out = batching.batch(
                with_args, batch_size, devices=devices, store_on_host=not store_on_device
            )(x1, x2, **kwargs)
        if isinstance(out, Kernel):
            # Tiles carry the tile's batch sizes in their metadata; restore the whole batch's.
            n1 = out.nngp.shape[0]
            n2 = out.nngp.shape[1]
            ba = out.batch_axis
            shape1 = list(out.shape1)
            shape2 = list(out.shape2)
            shape1[ba] = n1
            shape2[ba] = n2
            out = out.replace(
                shape1=tuple(shape1), shape2=tuple(shape2), x1_is_x2=x2 is None and out.x1_is_x2
            )
        return out

    return batched_kernel_fn


def _is_get(value) -> bool:
    if value is None or isinstance(value, str):
        return True
    return isinstance(value, tuple) and bool(value) and all(isinstance(v, str) for v in value)


def _tiles_with_patterns(kernel_fn, batch_size, x1, x2, args, kwargs):
    """The kernel tile by tile, each tile given the graphs of its own examples
    (`pattern=(p1, p2)` sliced like `x1` and `x2`)."""
    import jax.numpy as jnp

    p1, p2 = kwargs.pop("pattern")
    same = x2 is None
    x2_, p2_ = (x1, p1) if same else (x2, p2)
    get = args[0] if args else kwargs.pop("get", None)
    names = None if get is None else (get,) if isinstance(get, str) else tuple(get)
    if names is not None and not set(names) <= {"nngp", "ntk"}:
        raise NotImplementedError(
            f"`batch` with `pattern` computes `get=None`, 'nngp' or 'ntk', got {get!r}."
        )
    n1, n2 = len(x1), len(x2_)
    rows = []
    for i in range(0, n1, batch_size):
        s1 = slice(i, i + batch_size)
        row = []
        for j in range(0, n2, batch_size):
            s2 = slice(j, j + batch_size)
            row.append(kernel_fn(x1[s1], x2_[s2], get, pattern=(p1[s1], p2_[s2]), **kwargs))
        rows.append(row)

    def join(tiles):
        return jnp.concatenate([jnp.concatenate(row, 1) for row in tiles], 0)

    first = rows[0][0]
    if isinstance(first, Kernel):
        shape1, shape2 = list(first.shape1), list(first.shape2)
        shape1[first.batch_axis], shape2[first.batch_axis] = n1, n2
        return first.replace(
            nngp=join([[t.nngp for t in row] for row in rows]),
            ntk=None if first.ntk is None else join([[t.ntk for t in row] for row in rows]),
            cov1=jnp.concatenate([row[0].cov1 for row in rows], 0),
            cov2=None if same else jnp.concatenate([t.cov2 for t in rows[0]], 0),
            x1_is_x2=same,
            shape1=tuple(shape1),
            shape2=tuple(shape2),
            mask1=None,
            mask2=None,
        )
    if isinstance(first, tuple):
        return type(first)(
            *(join([[t[k] for t in row] for row in rows]) for k in range(len(first)))
        )
    return join(rows)
