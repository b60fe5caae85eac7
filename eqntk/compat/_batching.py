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
