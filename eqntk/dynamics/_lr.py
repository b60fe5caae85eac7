"""`max_learning_rate`: the largest stable learning rate of gradient descent on the MSE."""

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from ._common import nonnegative


@eqx.filter_jit
def max_learning_rate(
    k_train_train: Float[ArrayLike, "..."],
    y_train_size: int | None = None,
    momentum: float | Float[ArrayLike, ""] = 0.0,
    eps: float = 1e-12,
) -> Float[Array, ""]:
    """The largest learning rate at which gradient descent on the MSE converges, as in
    neural-tangents.

    For the loss $\\frac{1}{2n}\\|f - y\\|^2$ a discrete gradient-descent step multiplies the
    training residual by $I - \\frac{\\eta}{n} k$, a contraction while
    $\\eta < 2n / \\lambda_\\text{max}(k)$; with (heavy-ball) momentum $m$ the bound is
    $2(1 + m)\\, n / \\lambda_\\text{max}(k)$. Returned: $2(1 + m)\\, n / (\\lambda_\\text{max} +
    \\epsilon)$.

    **Arguments:**

    - `k_train_train`: the train-train NTK, `(N, N)` (or interleaved `(N, N, K, K, ...)`,
      flattened to a matrix).
    - `y_train_size`: $n$, the number of training outputs (`y_train.size`); `None` for the
      number of rows of the flattened kernel (as if the kernel had no trace axes).
    - `momentum`: $m \\geq 0$.
    - `eps`: added to $\\lambda_\\text{max}$ to avoid a division by zero.

    **Returns:**

    The learning rate, a 0-d array.

    **Example:**

    ```python
    import jax.numpy as jnp
    from eqntk.dynamics import max_learning_rate

    lr = max_learning_rate(jnp.diag(jnp.array([1.0, 4.0])), y_train_size=2)
    assert jnp.allclose(lr, 1.0)
    ```
    """
    k = jnp.asarray(k_train_train)
    if k.ndim < 2 or k.ndim % 2 or k.shape[0::2] != k.shape[1::2]:
        raise ValueError(
            "`k_train_train` must be a square kernel, (N, N) or interleaved (N, N, K, K, ...), "
            f"got shape {k.shape}."
        )
    if not jnp.issubdtype(k.dtype, jnp.floating):
        raise TypeError(f"`k_train_train` must be a floating-point array, got dtype {k.dtype}.")
    n = k.ndim // 2
    size = 1
    for s in k.shape[0::2]:
        size *= s
    k = jnp.transpose(k, tuple(range(0, 2 * n, 2)) + tuple(range(1, 2 * n, 2))).reshape(size, size)
    if y_train_size is not None and (not isinstance(y_train_size, int) or y_train_size < 1):
        raise ValueError(
            f"`y_train_size` must be a positive integer or None, got {y_train_size!r}."
        )
    factor = size if y_train_size is None else y_train_size
    m = nonnegative("momentum", momentum, k.dtype)
    largest = jnp.linalg.eigvalsh(k)[-1]
    return 2 * (1 + m) * factor / (largest + eps)
