"""The base of the function-like modules that eqntk returns: kernel functions and predictors."""

import collections
import functools as ft
from typing import Any

import equinox as eqx


class AbstractCallable(eqx.Module):
    """A function held as an `eqx.Module`: a kernel function or a predictor.

    Like every Equinox module it is a PyTree, so `eqx.filter_jit`, `jax.vmap` and `jax.grad`
    see the arrays inside it (the network's hyperparameters, a factorised kernel) as inputs.
    It is also hashed and compared by identity, so that `jax.jit(fn)` works as for a plain
    function: JAX keys its compilation cache on the function object, and a module compared by
    its fields would not be hashable (its fields hold arrays). Under `jax.jit(fn)` the arrays
    inside `fn` are constants of the compiled program, and a new object compiles anew; under
    `eqx.filter_jit` (the Equinox way) they are traced inputs, and objects with the same
    structure share one compilation.

    **Example:**

    ```python
    import jax
    import jax.random as jr
    import eqntk
    from eqntk import nn

    kernel_fn = eqntk.limit(nn.Sequential([nn.Dense(3, 8, key=jr.key(0)), nn.Relu()]))
    x = jr.normal(jr.key(1), (4, 3))
    ntk = jax.jit(kernel_fn, static_argnames="get")(x, None, get="ntk")
    assert ntk.shape == (4, 4)
    ```
    """

    def __hash__(self) -> int:
        return id(self)

    def __eq__(self, other: object) -> bool:
        return self is other


@ft.cache
def named_tuple(typename: str, names: tuple[str, ...]) -> type:
    """The named-tuple class `typename` with fields `names`, one class per field list.

    A `get=("nngp", "ntk")` selection returns an instance of it: two identical calls then
    return the same PyTree structure (e.g. the two branches of a `lax.cond`).
    """
    return collections.namedtuple(typename, names)


def check_get(
    get: Any,
    allowed: tuple[str, ...],
    *,
    none_means: tuple[str, ...] | None = None,
    none_allowed: bool = True,
    what: str = "kernel",
) -> tuple[str, ...] | None:
    """Validate a `get=` selector and return it as a tuple of names.

    One definition for every public function that takes `get`: a name among `allowed`, or a
    non-empty tuple of distinct names. `None` returns `none_means` (e.g. `None` for "the whole
    result", or a default tuple of names), unless `none_allowed` is `False`. `what` names the
    things selected, for the error messages.
    """
    if get is None and none_allowed:
        return none_means
    names = (get,) if isinstance(get, str) else get
    if not isinstance(names, tuple) or not names or any(n not in allowed for n in names):
        choices = ", ".join(repr(n) for n in allowed)
        if none_allowed:
            expected = f"None, one of ({choices}) or a non-empty tuple of them"
        else:
            expected = f"{choices} or a non-empty tuple of them"
        raise ValueError(f"`get` must be {expected}, got {get!r}.")
    if len(set(names)) != len(names):
        raise ValueError(f"`get` must not name a {what} twice, got {get!r}.")
    return names
