"""`Dense`: the fully-connected layer, acting on the channel axis."""

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from ..limits._kernel import Kernel
from ..limits._registry import AbstractRule, Requirements, register
from ._affine import (
    AbstractAffine,
    Parameterization,
    affine_kernel,
    check_channels,
    init_affine,
    set_parameterization,
)


class Dense(AbstractAffine):
    """A fully-connected layer on the channel axis: `y = W x + b` at every spatial position.

    Two parameterisations, with weights `W` and biases `b` drawn i.i.d. standard normal:

    - `"ntk"` (the default): $y = \\frac{\\sigma_W}{\\sqrt{n_{in}}} W x + \\sigma_b b$. The stored
      weights stay standard normal and the scale is applied in the forward pass, so gradient
      descent on `W` is gradient descent in the NTK parameterisation.
    - `"standard"`: the stored weights are $\\sigma_W / \\sqrt{n_{in}} \\cdot W$ and the biases
      $\\sigma_b b$, and $y = W x / \\sqrt{s_0} + b$. With the width scales `s = (s0, s1)` the
      layer really has `s0 * in_features` inputs and `s1 * out_features` outputs, while the
      kernel is that of nominal widths `in_features` (see Sohl-Dickstein et al. 2020, "On the
      infinite width limit of neural networks with a standard parameterization").

    Kernel rule (NNGP $\\mathcal{K}$, NTK $\\Theta$, per entry):
    $\\mathcal{K}' = \\sigma_W^2 \\mathcal{K} + \\sigma_b^2$; in the NTK parameterisation
    $\\Theta' = \\sigma_W^2 \\Theta + \\mathcal{K}'$, in the standard one
    $\\Theta' = \\sigma_W^2 \\Theta + n_{in} \\mathcal{K} + [\\text{bias}]$.

    `W_std` and `b_std` are array leaves: kernels can be differentiated and vmapped with respect
    to them. The finite forward pass applies `jax.lax.stop_gradient` to them, so training the
    network (e.g. with optax's `sgd` or `adam`) leaves them unchanged; an optimiser that
    changes parameters without a gradient (weight decay) must be given a filter that excludes
    them.
    """

    weight: Float[Array, "out in"]
    bias: Float[Array, " out"] | None
    W_std: Float[Array, ""]
    b_std: Float[Array, ""] | None
    in_features: int = eqx.field(static=True)
    out_features: int = eqx.field(static=True)
    parameterization: Parameterization = eqx.field(static=True)
    s: tuple[int, int] = eqx.field(static=True)

    def __init__(
        self,
        in_features: int,
        out_features: int,
        W_std: ArrayLike = 1.0,
        b_std: ArrayLike | None = None,
        parameterization: str = "ntk",
        s: tuple[int, int] = (1, 1),
        *,
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        - `in_features`: the number of input channels.
        - `out_features`: the number of output channels (the width; it does not change the
          kernel in the NTK parameterisation).
        - `W_std`: the weight standard deviation $\\sigma_W \\geq 0$.
        - `b_std`: the bias standard deviation $\\sigma_b \\geq 0$, or `None` for no bias.
        - `parameterization`: `"ntk"` or `"standard"`.
        - `s`: the width scales `(s0, s1)` of the standard parameterisation (must be `(1, 1)`
          for `"ntk"`).
        - `key`: a `jax.random` key for the initial weights.

        **Example:**

        ```python
        import jax.numpy as jnp
        import jax.random as jr
        from eqntk import nn

        layer = nn.Dense(3, 8, W_std=1.5, b_std=0.1, key=jr.key(0))
        assert layer(jnp.ones(3)).shape == (8,)
        assert layer(jnp.ones((3, 5, 5))).shape == (8, 5, 5)   # acts on the channel axis
        ```
        """
        set_parameterization(self, parameterization, s)
        for name, size in (("in_features", in_features), ("out_features", out_features)):
            if not isinstance(size, int) or size < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {size!r}.")
        self.in_features = in_features
        self.out_features = out_features
        n_in, n_out = self.s[0] * in_features, self.s[1] * out_features
        init_affine(self, key, W_std, b_std, (n_out, n_in), (n_out,))

    @property
    def fan_in(self) -> int:
        """The fan-in `in_features` of one output unit (nominal width)."""
        return self.in_features

    @property
    def widths(self) -> tuple[int, int]:
        """The nominal widths `(in_features, out_features)`."""
        return self.in_features, self.out_features

    def __call__(
        self, x: Float[Array, "in *spatial"], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, "out *spatial"]:
        """Apply the layer to one channel-first example `x` of shape `(in, *spatial)`.

        **Arguments:**

        - `x`: one example; channels first.
        - `key`: unused (accepted for a uniform layer interface).

        **Returns:**

        The output `(out, *spatial)`.

        **Example:**

        ```python
        import jax.numpy as jnp
        import jax.random as jr
        from eqntk import nn

        assert nn.Dense(2, 4, key=jr.key(0))(jnp.ones(2)).shape == (4,)
        ```
        """
        if x.ndim == 0 or x.shape[0] != self.weight.shape[1]:
            raise ValueError(
                f"`Dense` expects inputs with {self.weight.shape[1]} channels on axis 0, "
                f"got shape {x.shape}."
            )
        y = jnp.tensordot(self.weight, x, axes=(1, 0))
        bias = None if self.bias is None else self.bias.reshape((-1,) + (1,) * (x.ndim - 1))
        return self.scale_output(y, bias)


# Kernel rules -------------------------------------------------------------------------------------
# Kernel rule of `Dense`.


@register(Dense)
class DenseRule(AbstractRule[Dense]):
    """Kernel rule of [`eqntk.nn.Dense`][]: acts on the channel axis, positions unchanged."""

    def requirements(self, layer: Dense, wanted: Requirements) -> Requirements:
        return wanted

    def __call__(self, layer: Dense, k: Kernel, wanted: Requirements) -> Kernel:
        check_channels(layer, k)
        return affine_kernel(layer, k)
