"""`linearize` and `taylor_expand`: a network expanded in its parameters, as a trainable module."""

import math
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import PRNGKeyArray, PyTree


class TaylorExpansion(eqx.Module):
    """A network replaced by its Taylor polynomial in the parameters around a fixed point.

    With $\\theta_0$ the parameters of `model` (the expansion point, frozen) and $\\theta$ the
    trainable parameters (`params`, initially $\\theta_0$), the module computes

    $$f^{\\text{lin}}_\\theta(x) = \\sum_{k=0}^{d} \\frac{1}{k!}
    \\frac{\\mathrm{d}^k}{\\mathrm{d}t^k} f_{\\theta_0 + t (\\theta - \\theta_0)}(x)
    \\Big|_{t=0},$$

    i.e. for degree $d = 1$ the linearised network
    $f_{\\theta_0}(x) + J_{\\theta_0}(x)(\\theta - \\theta_0)$ whose gradient-descent dynamics the
    NTK describes. The derivatives are nested forward-mode products along
    $\\theta - \\theta_0$ ($2^d$ evaluations: meant for small degrees).

    It trains like any Equinox model: the expansion point is read through
    `jax.lax.stop_gradient`, so its gradient is zero and optax's `sgd`/`adam` leave it
    unchanged (an optimiser with weight decay should be given `expansion.params` only).

    **Fields:**

    - `model`: the network at the expansion point $\\theta_0$.
    - `params`: the trainable parameters $\\theta$, with the structure of
      `eqx.filter(model, filter)`.
    - `degree`: the degree $d$ of the polynomial.
    - `filter`: selects the parameters among the leaves of `model`.
    """

    model: Any
    params: PyTree
    degree: int = eqx.field(static=True)
    filter: Callable[[Any], bool] = eqx.field(static=True)

    def __init__(
        self, model: Any, degree: int, filter: Callable[[Any], bool] = eqx.is_inexact_array
    ):
        """**Arguments:**

        - `model`: the network to expand (any Equinox module called on ONE example); its
          current parameters are the expansion point.
        - `degree`: the degree of the Taylor polynomial, a non-negative integer.
        - `filter`: selects the parameters among the leaves of `model`.

        **Example:**

        ```python
        import jax.numpy as jnp
        import jax.random as jr
        import eqntk
        from eqntk import nn

        model = nn.Sequential([nn.Dense(2, 8, key=jr.key(0)), nn.Erf(),
                               nn.Dense(8, 1, key=jr.key(1))])
        quadratic = eqntk.empirical.TaylorExpansion(model, 2)
        x = jnp.ones(2)
        assert jnp.allclose(quadratic(x), model(x))   # exact at the expansion point
        ```
        """
        if not isinstance(degree, int) or isinstance(degree, bool) or degree < 0:
            raise ValueError(f"`degree` must be a non-negative integer, got {degree!r}.")
        params = eqx.filter(model, filter)
        if not jtu.tree_leaves(params):
            raise ValueError(
                f"`model` ({type(model).__name__}) has no parameters: no leaf matches `filter` "
                "(by default, floating-point arrays)."
            )
        self.model = model
        self.params = params
        self.degree = degree
        self.filter = filter

    def __call__(self, x: PyTree, *, key: PRNGKeyArray | None = None) -> PyTree:
        """Evaluate the Taylor polynomial on one example `x`.

        **Arguments:**

        - `x`: one example, as the expanded network takes it.
        - `key`: passed on to the network when given (e.g. for dropout).

        **Returns:**

        The polynomial's output, with the structure of the network's output.
        """
        model0 = jtu.tree_map(
            lambda v: jax.lax.stop_gradient(v) if eqx.is_array(v) else v, self.model
        )
        params0, static = eqx.partition(model0, self.filter)
        delta = jtu.tree_map(lambda p, p0: p - p0, self.params, params0)

        def along(t):
            point = jtu.tree_map(lambda p0, d: p0 + t.astype(d.dtype) * d, params0, delta)
            model = eqx.combine(point, static)
            return model(x) if key is None else model(x, key=key)

        def derivatives(t, order: int) -> list:
            # [g(t), g'(t), ..., g^(order)(t)]: one forward-mode product per order.
            if order == 0:
                return [along(t)]
            primal, tangent = jax.jvp(
                lambda s: derivatives(s, order - 1), (t,), (jnp.ones_like(t),)
            )
            return [primal[0], *tangent]

        dtype = jnp.result_type(*jtu.tree_leaves(params0))
        terms = derivatives(jnp.zeros((), dtype), self.degree)
        scaled = [
            jtu.tree_map(lambda y, k=k: y / math.factorial(k), term) for k, term in enumerate(terms)
        ]
        return jtu.tree_map(lambda *ys: sum(ys[1:], start=ys[0]), *scaled)


def taylor_expand(
    model: Any, degree: int, *, filter: Callable[[Any], bool] = eqx.is_inexact_array
) -> TaylorExpansion:
    """Expand a network to a given degree in its parameters, around its current parameters.

    See [`eqntk.empirical.TaylorExpansion`][] for the maths. The result is an Equinox module
    that trains with optax like the original network; apply `eqx.filter_vmap(taylor_expand)`
    (or expand an ensemble made with `eqx.filter_vmap` and call it under `eqx.filter_vmap`) to
    expand many networks at once.

    **Arguments:**

    - `model`: any Equinox module called on ONE example.
    - `degree`: the degree of the polynomial (`1` is [`eqntk.linearize`][]).
    - `filter`: selects the parameters among the leaves of `model`.

    **Returns:**

    A [`eqntk.empirical.TaylorExpansion`][].

    **Example:**

    ```python
    import jax.numpy as jnp
    import jax.random as jr
    import eqntk
    from eqntk import nn

    model = nn.Sequential([nn.Dense(2, 8, key=jr.key(0)), nn.Erf(), nn.Dense(8, 1, key=jr.key(1))])
    expansion = eqntk.taylor_expand(model, 2)
    assert jnp.allclose(expansion(jnp.ones(2)), model(jnp.ones(2)))
    ```
    """
    return TaylorExpansion(model, degree, filter)


def linearize(
    model: Any, *, filter: Callable[[Any], bool] = eqx.is_inexact_array
) -> TaylorExpansion:
    """Linearise a network in its parameters: $f_{\\theta_0}(x) + J_{\\theta_0}(x)
    (\\theta - \\theta_0)$, with the expansion point $\\theta_0$ frozen and $\\theta$ trainable.

    Training the result with gradient descent follows the dynamics that the empirical NTK at
    $\\theta_0$ describes exactly (see [`eqntk.empirical_kernel`][]).

    **Arguments:**

    - `model`: any Equinox module called on ONE example.
    - `filter`: selects the parameters among the leaves of `model`.

    **Returns:**

    A [`eqntk.empirical.TaylorExpansion`][] of degree 1.

    **Example:**

    ```python
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import jax.random as jr
    import optax
    import eqntk
    from eqntk import nn

    model = nn.Sequential([nn.Dense(2, 8, key=jr.key(0)), nn.Relu(), nn.Dense(8, 1, key=jr.key(1))])
    lin = eqntk.linearize(model)
    x, y = jr.normal(jr.key(2), (4, 2)), jnp.zeros((4, 1))
    optimiser = optax.sgd(0.1)
    state = optimiser.init(eqx.filter(lin, eqx.is_inexact_array))

    @eqx.filter_jit
    def step(lin, state):
        loss = lambda m: jnp.mean((jax.vmap(m)(x) - y) ** 2)
        grads = eqx.filter_grad(loss)(lin)
        updates, state = optimiser.update(grads, state)
        return eqx.apply_updates(lin, updates), state

    lin, state = step(lin, state)
    assert jnp.allclose(lin.model.layers[0].weight, model.layers[0].weight)  # frozen
    ```
    """
    return TaylorExpansion(model, 1, filter)
