"""`Elementwise`: any scalar nonlinearity, with a numerical or user-supplied kernel."""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.core
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from ..limits._elementwise import AbstractElementwiseRule, map_entries, require_gaussian
from ..limits._kernel import Kernel
from ..limits._quadrature import closed_form_entries, compiled_quadrature_entries
from ..limits._registry import Requirements, register


def kernel_only(layer: Any, x: Array) -> Array:
    """The finite forward pass of a layer that only has a kernel: an error.

    Called eagerly it raises at once. Traced (e.g. by `eqx.filter_eval_shape`, which only needs
    the output shape) it raises when the computation runs.
    """
    message = (
        f"`{type(layer).__name__}` defines only an infinite-width kernel: it has no finite "
        f"forward pass. Use it through `eqntk.limit`."
    )
    if not isinstance(x, jax.core.Tracer):
        raise NotImplementedError(message)
    return eqx.error_if(x, jnp.array(True), message)


class Elementwise(eqx.Module):
    """Any scalar nonlinearity $\\phi$, applied elementwise.

    Its kernel rule is $\\mathcal{K}' = E[\\phi(u)\\phi(v)]$ and
    $\\Theta' = \\Theta\\, E[\\phi'(u)\\phi'(v)]$ with
    $(u, v) \\sim \\mathcal{N}(0, [[\\mathcal{K}_{11}, \\mathcal{K}_{12}], [\\mathcal{K}_{12},
    \\mathcal{K}_{22}]])$:

    - with `nngp_fn`, $\\mathcal{K}' =$ `nngp_fn(K12, K11, K22)` and the NTK factor is
      `d_nngp_fn(K12, K11, K22)`, by default the derivative of `nngp_fn` in its first argument
      (Price's theorem);
    - otherwise both expectations are computed by Gauss–Hermite quadrature of degree `deg` over
      the bivariate Gaussian, writing $u = \\sqrt{2\\mathcal{K}_{11}}\\,x$ and
      $v = \\sqrt{2\\mathcal{K}_{22}}(\\rho x + \\sqrt{1-\\rho^2}\\,y)$ with the `deg` nodes of
      $e^{-x^2}$ in each of $x, y$ ($\\rho$ the correlation), and $\\phi'$ by `jax.grad`. This is
      neural-tangents' `ElementwiseNumerical` and matches it at the same degree. The error falls
      quickly with `deg` for smooth $\\phi$ (about $10^{-9}$ for $\\tanh$ at degree 25);
      functions with kinks (ReLU) converge slowly and are better served by their closed forms.
    """

    fn: Callable[[Any], Any] | None = eqx.field(static=True)
    nngp_fn: Callable[[Any, Any, Any], Any] | None = eqx.field(static=True)
    d_nngp_fn: Callable[[Any, Any, Any], Any] | None = eqx.field(static=True)
    deg: int = eqx.field(static=True)

    def __init__(
        self,
        fn: Callable[[Any], Any] | None = None,
        nngp_fn: Callable[[Any, Any, Any], Any] | None = None,
        d_nngp_fn: Callable[[Any, Any, Any], Any] | None = None,
        deg: int = 25,
    ):
        """**Arguments:**

        - `fn`: the nonlinearity, a JAX-traceable function from a scalar to a scalar (e.g.
          `jnp.tanh`, `jax.nn.softplus`, `jax.nn.swish`). `None` makes a kernel-only layer
          (then `nngp_fn` is required and calling the layer raises an error).
        - `nngp_fn`: optional closed form of the kernel, `nngp_fn(cov12, var1, var2)` $=
          E[\\phi(u)\\phi(v)]$ for scalars, with `var1`, `var2` the variances and `cov12` the
          covariance of $(u, v)$.
        - `d_nngp_fn`: optional closed form of $E[\\phi'(u)\\phi'(v)]$, same signature; only
          with `nngp_fn`.
        - `deg`: the number of Gauss–Hermite nodes per axis of the quadrature (cost grows as
          `deg**2` per kernel entry); used when `nngp_fn` is `None`.

        **Example:**

        ```python
        import jax.numpy as jnp
        import jax.random as jr
        import eqntk
        from eqntk import nn

        model = nn.Sequential([nn.Dense(3, 64, key=jr.key(0)), nn.Elementwise(jnp.tanh),
                               nn.Dense(64, 1, key=jr.key(1))])
        x = jr.normal(jr.key(2), (4, 3))
        assert model(x[0]).shape == (1,)
        assert eqntk.limit(model)(x).nngp.shape == (4, 4)
        ```
        """
        if fn is None and nngp_fn is None:
            raise ValueError(
                "`Elementwise` needs `fn` (the nonlinearity) or `nngp_fn` (its kernel), got "
                "neither."
            )
        if d_nngp_fn is not None and nngp_fn is None:
            raise ValueError("`d_nngp_fn` is only used together with `nngp_fn`, got no `nngp_fn`.")
        if isinstance(deg, bool) or not isinstance(deg, int) or deg < 1:
            raise ValueError(
                f"`deg` (the number of quadrature nodes) must be a positive integer, got {deg!r}."
            )
        if fn is not None:
            _check_scalar_function("fn", fn, 1)
        if nngp_fn is not None:
            _check_scalar_function("nngp_fn", nngp_fn, 3)
        if d_nngp_fn is not None:
            _check_scalar_function("d_nngp_fn", d_nngp_fn, 3)
        self.fn = fn
        self.nngp_fn = nngp_fn
        self.d_nngp_fn = d_nngp_fn
        self.deg = deg

    def __call__(
        self, x: Float[Array, "*shape"], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, "*shape"]:
        """Apply `fn` elementwise to one example `x` of any shape."""
        if self.fn is None:
            return kernel_only(self, x)
        return jnp.vectorize(self.fn)(x)


def _check_scalar_function(name: str, fn: Any, n_args: int) -> None:
    if not callable(fn):
        raise TypeError(f"`{name}` must be a function, got {type(fn).__name__}.")
    scalar = jax.ShapeDtypeStruct((), jnp.float32)
    try:
        out = jax.eval_shape(fn, *[scalar] * n_args)
    except Exception as error:
        raise ValueError(
            f"`{name}` must be a JAX-traceable function of {n_args} scalar(s); calling it on "
            f"{'a scalar' if n_args == 1 else 'scalars'} failed with: {error!r}"
        ) from error
    if not isinstance(out, jax.ShapeDtypeStruct) or out.shape != ():
        shape = getattr(out, "shape", type(out).__name__)
        raise ValueError(f"`{name}` must return a scalar for scalar input(s), got output {shape}.")
    if not jnp.issubdtype(out.dtype, jnp.floating):
        raise ValueError(f"`{name}` must return a floating-point scalar, got dtype {out.dtype}.")


# Kernel rules -------------------------------------------------------------------------------------


@register(Elementwise)
class ElementwiseRule(AbstractElementwiseRule[Elementwise]):
    """Kernel rule of [`eqntk.nn.Elementwise`][]."""

    def __call__(self, layer: Elementwise, k: Kernel, wanted: Requirements) -> Kernel:
        require_gaussian(k, layer)
        if layer.nngp_fn is not None:
            return map_entries(k, closed_form_entries(layer.nngp_fn, layer.d_nngp_fn))
        # `Elementwise` checks that it has `fn` when it has no `nngp_fn`.
        assert layer.fn is not None
        return map_entries(k, compiled_quadrature_entries(layer.fn, layer.deg))
