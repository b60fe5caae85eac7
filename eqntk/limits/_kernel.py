"""The `Kernel`: the state that the `limit` transform carries from layer to layer."""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Shaped

from .._callable import named_tuple


KERNEL_NAMES = ("nngp", "ntk", "cov1", "cov2")


class Kernel(eqx.Module):
    """Covariances of an infinitely wide network's activations on two batches of inputs.

    A `Kernel` describes the Gaussian process that the (pre-)activations of one layer of an
    infinitely wide network form, on a batch `x1` of $N_1$ inputs and a batch `x2` of $N_2$
    inputs. It is what [`eqntk.limit`][] passes from one layer's rule to the next, and what a
    kernel function returns when called with `get=None`.

    **Fields:**

    - `nngp`: the NNGP kernel $\\mathcal{K}(x_1, x_2)$, the covariance of the activations.
    - `ntk`: the neural tangent kernel $\\Theta(x_1, x_2)$, or `None` when it was not asked for.
    - `cov1`: the NNGP kernel of `x1` with itself, diagonal over the batch:
      `cov1[a] == K(x1, x1)[a, a]`.
    - `cov2`: the same for `x2`, or `None` when `x2` is `x1` (then `cov1` serves for both).
    - `shape1`, `shape2`: the channel-first shapes `(C, *spatial)` of one example's finite
      activations, where `C` is the finite width of the layer that produced them. The width does
      not affect the kernel in the NTK parameterisation; the standard parameterisation and
      channel-wise concatenation use it.
    - `diagonal_spatial`: the layout of the spatial axes (see below).
    - `is_gaussian`: whether the activations are Gaussian, i.e. the outputs of an affine layer.
      Nonlinearities need Gaussian inputs and raise an error otherwise.
    - `x1_is_x2`: whether the kernel was computed with `x2=None`, so that `nngp` and `ntk` are
      square and symmetric.
    - `mask1`, `mask2`: for variable-length inputs, boolean arrays `(N1, *spatial)` and
      `(N2, *spatial)` over the positions of the current activations, `True` where a position
      is masked out (padding); `None` when nothing is masked. Every kernel entry that involves
      a masked position is zero, and layers that mix positions (pooling, attention, graph
      aggregation) ignore masked positions. `mask2` is `None` when `x1_is_x2`.
    - `pattern1`, `pattern2`: the per-example graphs of `x1` and `x2` that
      [`eqntk.nn.Aggregate`][] layers aggregate over (a dense adjacency `(N, *S, *S)` or an
      integer edge list `(N, E, 2)` / `(N, E, K, 2)`), carried unchanged from the input to
      every layer; `None` when the network has no graph input. `pattern2` is `None` when
      `x1_is_x2`.

    **Layout.** The two batch axes come first. For inputs with spatial axes $S_0, S_1, \\dots$
    (e.g. `(C, H, W)` images) the spatial covariance is stored either

    - *full* (`diagonal_spatial=False`): `nngp` has shape `(N1, N2, S0, S0, S1, S1, ...)` with the
      axes of the two examples **interleaved**:
      `nngp[a, b, i, i', j, j'] = Cov(f(x1[a])[c, i, j], f(x2[b])[c, i', j'])`
      (the same for every channel `c`); `cov1` has shape `(N1, S0, S0, S1, S1, ...)`;
    - *diagonal* (`diagonal_spatial=True`): only the entries with `i == i'`, `j == j'`:
      `nngp` has shape `(N1, N2, S0, S1, ...)` and `cov1` has shape `(N1, S0, S1, ...)`.

    Interleaving keeps every per-axis operation (a convolution, a pooling window, a resize)
    local to one adjacent pair of axes, and it is the layout the reference data uses. `limit`
    chooses the diagonal layout automatically when the rest of the network only needs it (for
    example a CNN that ends in `Flatten`), which costs $O(HW)$ instead of $O((HW)^2)$ per pair of
    inputs. `ntk` always has the layout of `nngp`.

    **Example:**

    ```python
    import jax.random as jr
    import eqntk
    from eqntk import nn

    model = nn.Sequential([nn.Dense(3, 8, key=jr.key(0)), nn.Relu(), nn.Dense(8, 1, key=jr.key(1))])
    x = jr.normal(jr.key(2), (4, 3))
    k = eqntk.limit(model)(x)
    assert k.nngp.shape == (4, 4) and k.cov1.shape == (4,)
    ```
    """

    nngp: Float[Array, "n1 n2 *spatial"]
    ntk: Float[Array, "n1 n2 *spatial"] | None
    cov1: Float[Array, "n1 *spatial"]
    cov2: Float[Array, "n2 *spatial"] | None
    shape1: tuple[int, ...] = eqx.field(static=True)
    shape2: tuple[int, ...] = eqx.field(static=True)
    diagonal_spatial: bool = eqx.field(static=True, default=False)
    is_gaussian: bool = eqx.field(static=True, default=False)
    x1_is_x2: bool = eqx.field(static=True, default=False)
    mask1: Bool[Array, "n1 *positions"] | None = None
    mask2: Bool[Array, "n2 *positions"] | None = None
    pattern1: Shaped[Array, "n1 ..."] | None = None
    pattern2: Shaped[Array, "n2 ..."] | None = None

    def __check_init__(self):
        n_spatial = len(self.shape1) - 1
        per_pair = n_spatial if self.diagonal_spatial else 2 * n_spatial
        if self.nngp.ndim != 2 + per_pair:
            raise ValueError(
                f"`Kernel.nngp` must have {2 + per_pair} axes for activations of shape "
                f"{self.shape1} in the {'diagonal' if self.diagonal_spatial else 'full'} "
                f"spatial layout, got shape {self.nngp.shape}."
            )
        if self.cov1.ndim != 1 + per_pair:
            raise ValueError(
                f"`Kernel.cov1` must have {1 + per_pair} axes, got shape {self.cov1.shape}."
            )
        if self.ntk is not None and self.ntk.shape != self.nngp.shape:
            raise ValueError(
                f"`Kernel.ntk` must have the shape of `nngp` {self.nngp.shape}, "
                f"got {self.ntk.shape}."
            )
        if self.x1_is_x2 and self.cov2 is not None:
            raise ValueError("`Kernel.cov2` must be None when `x1_is_x2` is set.")
        for name, mask, n, shape in (
            ("mask1", self.mask1, self.nngp.shape[0], self.shape1),
            ("mask2", self.mask2, self.nngp.shape[1], self.shape2),
        ):
            if mask is not None and tuple(mask.shape) != (n,) + tuple(shape[1:]):
                raise ValueError(
                    f"`Kernel.{name}` must have shape (N, *spatial) = {(n,) + tuple(shape[1:])}, "
                    f"got {tuple(mask.shape)}. A layer that changes the positions must map the "
                    f"masks along; layers whose rule does not cannot take masked inputs."
                )

    @property
    def mask2_or_mask1(self) -> Bool[Array, "n2 *positions"] | None:
        """`mask2`, or `mask1` when the kernel was computed with `x2=None`."""
        return self.mask1 if self.x1_is_x2 else self.mask2

    @property
    def pattern2_or_pattern1(self) -> Shaped[Array, "n2 ..."] | None:
        """`pattern2`, or `pattern1` when the kernel was computed with `x2=None`."""
        return self.pattern1 if self.x1_is_x2 else self.pattern2

    @property
    def spatial_ndim(self) -> int:
        """The number of spatial axes of the activations (0 for vectors)."""
        return len(self.shape1) - 1

    @property
    def cov2_or_cov1(self) -> Float[Array, "n2 *spatial"]:
        """`cov2`, or `cov1` when the kernel was computed with `x2=None`."""
        return self.cov1 if self.cov2 is None else self.cov2

    def cast(self, value: Any) -> Array:
        """`value` (a hyperparameter) as an array of the kernel's dtype.

        Rules multiply kernels by hyperparameters; casting first keeps a float32 kernel in
        float32 when the hyperparameters are float64 (and avoids mixed-dtype promotion).

        **Arguments:**

        - `value`: a scalar or array.

        **Returns:**

        `value` as an array of dtype `nngp.dtype`.

        **Example:**

        ```python
        import jax.numpy as jnp
        import eqntk

        k = eqntk.Kernel(nngp=jnp.eye(2, dtype=jnp.float32), ntk=None,
                         cov1=jnp.ones(2, jnp.float32), cov2=None, shape1=(3,), shape2=(3,),
                         x1_is_x2=True)
        assert k.cast(2.0).dtype == jnp.float32
        ```
        """
        return jnp.asarray(value).astype(self.nngp.dtype)

    def replace(self, **changes: Any) -> "Kernel":
        """A copy of this kernel with some fields replaced.

        **Arguments:**

        - `**changes`: field names and their new values.

        **Returns:**

        A new [`eqntk.Kernel`][].

        **Example:**

        ```python
        import jax.numpy as jnp
        import eqntk

        k = eqntk.Kernel(nngp=jnp.eye(2), ntk=None, cov1=jnp.ones(2), cov2=None,
                         shape1=(3,), shape2=(3,), x1_is_x2=True)
        assert k.replace(is_gaussian=True).is_gaussian
        ```
        """
        fields = {name: getattr(self, name) for name in self.__dataclass_fields__}
        unknown = set(changes) - set(fields)
        if unknown:
            raise TypeError(f"`Kernel` has no field(s) {sorted(unknown)}.")
        fields.update(changes)
        # A layer that removes every spatial axis (Flatten, global pooling) leaves no positions
        # to mask; the masked entries it summed over were zero.
        for i in ("1", "2"):
            if len(fields["shape" + i]) == 1 and "mask" + i not in changes:
                fields["mask" + i] = None
        return Kernel(**fields)

    def map_covariances(
        self,
        fn: Callable[[Array], Array] | None = None,
        ntk_fn: Callable[[Array], Array] | None = None,
        *,
        cov_fn: Callable[[Array], Array] | None = None,
        cov1_fn: Callable[[Array], Array] | None = None,
        cov2_fn: Callable[[Array], Array] | None = None,
        **changes: Any,
    ) -> "Kernel":
        """Map the covariance arrays, and change other fields in the same step.

        Each array gets its own function, defaulting to a shared one: `nngp` gets `fn`, `ntk`
        gets `ntk_fn` (default `fn`), `cov1` gets `cov1_fn` (default `cov_fn`, then `fn`) and
        `cov2` likewise. A field that is `None` stays `None`, and a field without a function
        stays as it is. `changes` are passed to [`eqntk.Kernel.replace`][] together with the
        new arrays (for metadata that must change with their shapes, e.g. `shape1`).

        **Arguments:**

        - `fn`: a function of one covariance array, for `nngp` and the defaults of the others.
        - `ntk_fn`: a function for `ntk`; `None` uses `fn`.
        - `cov_fn`: a function for `cov1` and `cov2` (one batch axis where `nngp` has two);
          `None` uses `fn`.
        - `cov1_fn`, `cov2_fn`: a function for that one field; `None` uses `cov_fn`.
        - `**changes`: other fields to replace.

        **Returns:**

        A new [`eqntk.Kernel`][].

        **Example:**

        ```python
        import jax.numpy as jnp
        import eqntk

        k = eqntk.Kernel(nngp=jnp.eye(2), ntk=jnp.eye(2), cov1=jnp.ones(2), cov2=None,
                         shape1=(3,), shape2=(3,), x1_is_x2=True)
        assert (k.map_covariances(lambda a: 2 * a).cov1 == 2).all()
        doubled_ntk = k.map_covariances(ntk_fn=lambda a: 2 * a)
        assert (doubled_ntk.ntk == 2 * k.ntk).all() and doubled_ntk.nngp is k.nngp
        ```
        """
        ntk_fn = fn if ntk_fn is None else ntk_fn
        cov_fn = fn if cov_fn is None else cov_fn
        cov1_fn = cov_fn if cov1_fn is None else cov1_fn
        cov2_fn = cov_fn if cov2_fn is None else cov2_fn

        def mapped(f: Callable[[Array], Array] | None, a: Array | None) -> Array | None:
            return a if f is None or a is None else f(a)

        return self.replace(
            nngp=mapped(fn, self.nngp),
            ntk=mapped(ntk_fn, self.ntk),
            cov1=mapped(cov1_fn, self.cov1),
            cov2=mapped(cov2_fn, self.cov2),
            **changes,
        )


def selected(k: Kernel, get: str | tuple[str, ...] | None):
    """Pick the fields named by `get` out of `k` (see `KernelFn.__call__`)."""
    if get is None:
        return k
    if isinstance(get, str):
        return _field(k, get)
    return named_tuple("Kernels", get)(*(_field(k, g) for g in get))


def _field(k: Kernel, name: str):
    if name == "cov2":
        return k.cov2_or_cov1
    return getattr(k, name)
