"""Functions of a parameter PyTree (Flax, Haiku or `stax` style) as Equinox modules."""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp


class Applied(eqx.Module):
    """A function `apply_fn(params, x)` and its parameters, as an Equinox module that eqntk's
    finite-width tools take: [`eqntk.empirical_kernel`][], [`eqntk.monte_carlo_kernel`][]'s
    per-sample models, [`eqntk.linearize`][], [`eqntk.taylor_expand`][].

    Models written for Flax (`model.apply`), Haiku (`transformed.apply`) or a `stax`-style
    `apply_fn` keep their parameters apart from the function; wrapping the pair makes the
    parameters the module's array leaves, which the tools differentiate.

    **Fields:**

    - `params`: the parameters, any PyTree of arrays.
    - `apply_fn`: called as `apply_fn(params, x)`; keyword arguments can be bound with
      `functools.partial` (it is a static field: it must be hashable).
    - `batched`: whether `apply_fn` takes a batch of inputs (the usual convention). The module
      itself is called on one example, as eqntk's tools call models: the batch axis is
      inserted before the call and removed from the outputs. `False` calls `apply_fn` on the
      example as it is.
    - `batch_axis`: where the batch axis goes, when `batched`.

    **Example:**

    ```python
    import jax.numpy as jnp
    import jax.random as jr
    import eqntk

    def apply_fn(params, x):  # a batch (N, 3) -> (N, 2), as Flax or Haiku would write it
        return jnp.tanh(x @ params["w1"]) @ params["w2"]

    params = {"w1": jr.normal(jr.key(0), (3, 64)), "w2": jr.normal(jr.key(1), (64, 2)) / 8}
    model = eqntk.empirical.Applied(params, apply_fn)
    x = jr.normal(jr.key(2), (5, 3))
    assert model(x[0]).shape == (2,)
    ntk = eqntk.empirical_kernel(model, x, get="ntk")
    assert ntk.shape == (5, 5)
    linear = eqntk.linearize(model)  # at the expansion point, equal to the model
    assert jnp.allclose(linear(x[0]), model(x[0]))
    ```
    """

    params: Any
    apply_fn: Callable[..., Any] = eqx.field(static=True)
    batched: bool = eqx.field(static=True, default=True)
    batch_axis: int = eqx.field(static=True, default=0)

    def __call__(self, x: Any, *, key: Any = None) -> Any:
        """`apply_fn(params, x)` on one example `x` (a PyTree of arrays); `key` is unused."""
        if not self.batched:
            return self.apply_fn(self.params, x)
        add = lambda a: jnp.expand_dims(a, self.batch_axis)
        out = self.apply_fn(self.params, jax.tree_util.tree_map(add, x))
        return jax.tree_util.tree_map(lambda a: jnp.squeeze(a, self.batch_axis), out)
