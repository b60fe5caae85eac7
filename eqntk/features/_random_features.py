"""`random_features`: feature maps whose inner products approximate a network's NNGP and NTK."""

import math
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float, PRNGKeyArray

from .. import nn
from .._callable import AbstractCallable, named_tuple
from ..limits._limit import KernelFn
from ._hermite import (
    derivative_coefficients,
    hermite_coefficients,
    product_sketch,
)


Method = Literal["sampled", "hermite"]
# Elementwise activations: their `__call__` applied to an array of any shape is the function.
_ACTIVATIONS = (
    nn.ABRelu,
    nn.Abs,
    nn.Cos,
    nn.Elementwise,
    nn.Erf,
    nn.Exp,
    nn.Gabor,
    nn.Gaussian,
    nn.Gelu,
    nn.Hermite,
    nn.LeakyRelu,
    nn.Monomial,
    nn.Polynomial,
    nn.Rbf,
    nn.RectifiedMonomial,
    nn.Relu,
    nn.SigmoidLike,
    nn.Sin,
    nn.Sign,
)
# A derivative that is zero almost everywhere while the function jumps: its NTK term is not
# the expectation of a product of derivatives, so no feature map is offered for it.
_NO_NTK = (nn.Sign,)


def _layers(model: Any) -> list[Any]:
    if isinstance(model, nn.Sequential):
        return [leaf for layer in model.layers for leaf in _layers(layer)]
    if isinstance(model, nn.Identity):
        return []
    return [model]


def _tensor_sketch(
    d: Float[Array, "n a"], g: Float[Array, "n b"], r: Float[Array, "m a"], s: Float[Array, "m b"]
) -> Float[Array, "n m"]:
    # $(r_i \cdot d)(s_i \cdot g) / \sqrt{m}$: an unbiased sketch of $d \otimes g$, whose inner
    # products are $(d \cdot d')(g \cdot g')$ in expectation.
    return (d @ r.T) * (g @ s.T) / math.sqrt(r.shape[0])


class _Affine(eqx.Module):
    W_std: Float[Array, ""]
    b_std: Float[Array, ""] | None

    def __call__(self, f: Array, g: Array | None) -> tuple[Array, Array | None]:
        # $\mathcal{K}' = \sigma_W^2 \mathcal{K} + \sigma_b^2$, $\Theta' = \sigma_W^2 \Theta +
        # \mathcal{K}'$: scale and append a constant, then append the NNGP features.
        f = self.W_std.astype(f.dtype) * f
        if self.b_std is not None:
            f = jnp.concatenate([f, jnp.broadcast_to(self.b_std.astype(f.dtype), (len(f), 1))], 1)
        if g is not None:
            g = jnp.concatenate([self.W_std.astype(g.dtype) * g, f], axis=1)
        return f, g


class _Sampled(eqx.Module):
    layer: Any
    weight: Float[Array, "m k"]
    sketch_d: Float[Array, "m m"] | None
    sketch_g: Float[Array, "m q"] | None

    def __call__(self, f: Array, g: Array | None) -> tuple[Array, Array | None]:
        # The rows of `weight` are standard normal, so the columns of `u` are jointly Gaussian
        # with covariance $f f^\top \approx \mathcal{K}$: a layer of width $m$ of the network.
        u = f @ self.weight.T.astype(f.dtype)
        m = math.sqrt(u.shape[1])
        a = self.layer(u) / m
        if g is None or self.sketch_d is None or self.sketch_g is None:
            return a, None
        d = jnp.vectorize(jax.grad(lambda t: self.layer(t)))(u) / m
        return a, _tensor_sketch(d, g, self.sketch_d.astype(f.dtype), self.sketch_g.astype(f.dtype))


class _Expanded(eqx.Module):
    layer: Any
    sketches: tuple[Float[Array, "..."], ...]
    sketch_d: Float[Array, "p p"] | None
    sketch_g: Float[Array, "p q"] | None

    def __call__(self, f: Array, g: Array | None) -> tuple[Array, Array | None]:
        degree = len(self.sketches)
        # Each input's norm is the standard deviation of its Gaussian pre-activation; tiny
        # norms are clamped so that the derivative coefficients (a division by it) stay finite.
        s = jnp.maximum(jnp.linalg.norm(f, axis=1), jnp.finfo(f.dtype).tiny ** 0.25)
        v = f / s[:, None]
        powers = [jnp.ones((len(f), 1), f.dtype)]
        powers += [product_sketch(v, w.astype(f.dtype)) for w in self.sketches]
        c = hermite_coefficients(lambda t: self.layer(t), s, degree + 1)

        def features(coefficients):
            return jnp.concatenate(
                [coefficients[:, j : j + 1] * p for j, p in enumerate(powers)], 1
            )

        a = features(c[:, : degree + 1])
        if g is None or self.sketch_d is None or self.sketch_g is None:
            return a, None
        d = features(derivative_coefficients(c, s))
        return a, _tensor_sketch(d, g, self.sketch_d.astype(f.dtype), self.sketch_g.astype(f.dtype))


class FeatureMap(AbstractCallable):
    """Random feature maps of a network's NNGP and NTK, as returned by
    [`eqntk.features.random_features`][].

    Its random projections are drawn once, when it is made: every call maps inputs with the
    same features, so that training and test inputs share one feature space. It is an
    `eqx.Module` holding the network's hyperparameters as array leaves, so the features can
    be differentiated with respect to them.
    """

    steps: tuple[Any, ...]
    in_features: int = eqx.field(static=True)
    ntk: bool = eqx.field(static=True)

    def __call__(self, x: Float[Array, "n c"], get: str | tuple[str, ...] | None = None) -> Any:
        """Map a batch of inputs to their random features.

        **Arguments:**

        - `x`: a batch of input vectors `(N, C)`.
        - `get`: `"nngp"`, `"ntk"`, or a tuple of them (`None` is `("nngp", "ntk")`, or
          `"nngp"` alone for a map made without the NTK).

        **Returns:**

        For a string `get`, the features `(N, D)` with $\\phi(x) \\cdot \\phi(x') \\approx$ the
        kernel; for a tuple, a named tuple of them. $D$ is about the map's `n_features`.
        """
        names = ("nngp", "ntk") if get is None and self.ntk else ("nngp",) if get is None else get
        names = (names,) if isinstance(names, str) else names
        if (
            not isinstance(names, tuple)
            or not names
            or any(n not in ("nngp", "ntk") for n in names)
        ):
            raise ValueError(f"`get` must be None, 'nngp', 'ntk' or a tuple of them, got {get!r}.")
        if "ntk" in names and not self.ntk:
            raise ValueError(
                "`get` asks for NTK features, but this map was made with `get='nngp'`; make it "
                "with `random_features(..., get=('nngp', 'ntk'))`."
            )
        if not hasattr(x, "ndim") or x.ndim != 2 or x.shape[1] != self.in_features:
            raise ValueError(
                f"`x` must be a batch of input vectors of shape (N, {self.in_features}), got "
                f"shape {getattr(x, 'shape', type(x).__name__)}."
            )
        x = jnp.asarray(x)
        if not jnp.issubdtype(x.dtype, jnp.floating):
            x = x.astype(float)
        # The input kernel is $x \cdot x' / C$, as for `eqntk.limit`.
        f = x / math.sqrt(self.in_features)
        g = jnp.zeros((len(x), 0), f.dtype) if "ntk" in names else None
        for step in self.steps:
            f, g = step(f, g)
        out = {"nngp": f, "ntk": g}
        if isinstance(get, str):
            return out[get]
        return named_tuple("Features", names)(*(out[n] for n in names))


def random_features(
    model: Any,
    n_features: int,
    *,
    key: PRNGKeyArray,
    method: Method = "sampled",
    degree: int = 8,
    get: str | tuple[str, ...] = ("nngp", "ntk"),
) -> FeatureMap:
    """Random features of the NNGP and NTK of a fully connected network's infinite-width limit.

    The map $\\phi$ satisfies $\\phi(x) \\cdot \\phi(x') \\approx k(x, x')$, the kernel that
    [`eqntk.limit`][] computes exactly, so that kernel regression on $N$ points costs
    $O(N D^2)$ instead of $O(N^3)$. It follows the network layer by layer, keeping features
    of the NNGP $\\mathcal{K}$ and of the NTK $\\Theta$:

    - `Dense` ($\\sigma_W$, $\\sigma_b$): $f' = [\\sigma_W f, \\sigma_b]$ and
      $g' = [\\sigma_W g, f']$, exactly.
    - an elementwise activation $\\sigma$ maps $f$ to features $a$ of
      $E[\\sigma(u) \\sigma(u')]$ and $d$ of $E[\\sigma'(u) \\sigma'(u')]$, with
      $(u, u') \\sim N(0, \\mathcal{K})$, and $g$ to a sketch of $d \\otimes g$ (a Gaussian
      tensor random projection to `n_features` dimensions), as in Zandieh et al. 2021,
      "Scaling neural tangent kernels via sketching and random features". Two ways to make
      $a$ and $d$:
      - `method="sampled"`: $a = \\sigma(W f) / \\sqrt{m}$ and $d = \\sigma'(W f)/\\sqrt{m}$
        with $W$ standard normal, $m$ = `n_features` (the arc-cosine features of Cho & Saul
        2009 for the ReLU). Unbiased for one layer; any elementwise function.
      - `method="hermite"`: the dual kernel's expansion (Han et al. 2022, "Fast neural kernel
        embeddings for general activations"): with $s = \\|f\\|$ and the Hermite coefficients
        $c_j(s)$ of $\\sigma(s z)$ (see `eqntk.features` for the formulas),
        $a = [c_0(s), c_1(s) P_1(f/s), \\dots, c_q(s) P_q(f/s)]$ where $P_j$ sketches the
        $j$-th tensor power, $q$ = `degree`, and the feature budget is split evenly among
        the degrees. It truncates the expansion (a bias of $\\sum_{j > q} c_j^2 \\rho^j$,
        negligible for smooth activations; for the ReLU about $0.01\\,\\mathcal{K}$ at
        $q = 8$ on the diagonal) and its sketches have variance growing like $3^j$.

    The error of each kernel entry is $O(1/\\sqrt{m})$ (measured in the tests and in the
    docs' random-features page): a relative error of a few percent at $m$ in the thousands.

    **Arguments:**

    - `model`: a fully connected network: an [`eqntk.nn.Sequential`][] of
      [`eqntk.nn.Dense`][] layers (NTK parameterisation) and elementwise activations, each
      activation right after a `Dense`; or the [`eqntk.limit`][] of one.
    - `n_features`: the feature dimension $m$ of each layer (the accuracy knob).
    - `key`: a `jax.random` key for the random projections.
    - `method`: `"sampled"` or `"hermite"`, see above.
    - `degree`: the truncation degree $q$ of the Hermite expansion (`method="hermite"`).
    - `get`: `"nngp"` to skip the NTK features, or `("nngp", "ntk")`.

    **Returns:**

    A [`eqntk.features.FeatureMap`][], called as `feature_map(x, get=None)`.

    **Example:**

    ```python
    import jax.numpy as jnp
    import jax.random as jr
    import eqntk
    from eqntk import nn
    from eqntk.features import random_features

    k1, k2 = jr.split(jr.key(0))
    model = nn.Sequential([nn.Dense(3, 8, b_std=0.1, key=k1), nn.Relu(), nn.Dense(8, 1, key=k2)])
    x = jr.normal(jr.key(1), (5, 3))
    phi = random_features(model, 4096, key=jr.key(2))(x)
    exact = eqntk.limit(model)(x, get=("nngp", "ntk"))
    assert jnp.allclose(phi.nngp @ phi.nngp.T, exact.nngp, atol=0.2)
    assert jnp.allclose(phi.ntk @ phi.ntk.T, exact.ntk, atol=0.4)
    ```
    """
    if isinstance(model, KernelFn):
        model = model.model
    if not isinstance(n_features, int) or n_features < 2:
        raise ValueError(f"`n_features` must be an integer >= 2, got {n_features!r}.")
    if method not in ("sampled", "hermite"):
        raise ValueError(f"`method` must be 'sampled' or 'hermite', got {method!r}.")
    if not isinstance(degree, int) or not 1 <= degree < n_features:
        raise ValueError(f"`degree` must be an integer in [1, n_features), got {degree!r}.")
    names = (get,) if isinstance(get, str) else get
    if (
        not isinstance(names, tuple)
        or "nngp" not in names
        or any(n not in ("nngp", "ntk") for n in names)
    ):
        raise ValueError(f"`get` must be 'nngp' or ('nngp', 'ntk'), got {get!r}.")
    ntk = "ntk" in names
    layers = _layers(model)
    if not layers or not isinstance(layers[0], nn.Dense):
        first = type(layers[0]).__name__ if layers else "nothing"
        raise ValueError(
            f"`model` must start with an `eqntk.nn.Dense` layer (its input is then Gaussian), "
            f"got {first}."
        )
    in_features = layers[0].in_features
    width_f, width_g, gaussian, steps = in_features, 0, False, []
    for layer in layers:
        if isinstance(layer, nn.Dense):
            if layer.parameterization != "ntk":
                raise NotImplementedError(
                    "Random features support `Dense` layers in the NTK parameterization, got "
                    f"parameterization={layer.parameterization!r}."
                )
            steps.append(_Affine(layer.W_std, layer.b_std))
            width_f += layer.b_std is not None
            width_g += width_f
            gaussian = True
        elif isinstance(layer, _ACTIVATIONS):
            if isinstance(layer, nn.Elementwise) and layer.fn is None:
                raise NotImplementedError(
                    "Random features need the function of an `Elementwise` layer; this one was "
                    "made with `fn=None` (kernel only)."
                )
            if not gaussian:
                raise ValueError(
                    f"`{type(layer).__name__}` must follow a `Dense` layer: random features of "
                    "an activation need Gaussian pre-activations."
                )
            if ntk and isinstance(layer, _NO_NTK):
                raise NotImplementedError(
                    f"`{type(layer).__name__}` has no NTK random features (its derivative is a "
                    "delta); pass `get='nngp'`."
                )
            key, k_w, k_d, k_g = jr.split(key, 4)
            m = n_features
            sketch_d = jr.normal(k_d, (m, m)) if ntk else None
            sketch_g = jr.normal(k_g, (m, width_g)) if ntk else None
            if method == "sampled":
                steps.append(_Sampled(layer, jr.normal(k_w, (m, width_f)), sketch_d, sketch_g))
            else:
                sizes = [(m - 1) // degree + (j < (m - 1) % degree) for j in range(degree)]
                keys = jr.split(k_w, degree)
                sketches = tuple(
                    jr.normal(keys[j], (j + 1, sizes[j], width_f)) for j in range(degree)
                )
                steps.append(_Expanded(layer, sketches, sketch_d, sketch_g))
            width_f, width_g, gaussian = m, m if ntk else 0, False
        else:
            raise NotImplementedError(
                f"Random features are not available for `{type(layer).__name__}`: they support "
                "fully connected networks (`Dense` and elementwise activations in a "
                "`Sequential`)."
            )
    return FeatureMap(tuple(steps), in_features, ntk)
