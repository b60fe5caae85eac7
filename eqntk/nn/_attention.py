"""`GlobalSelfAttention`: multi-head dot-product self-attention over all spatial positions."""

import math
from collections.abc import Callable, Sequence
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, ArrayLike, Bool, Float, PRNGKeyArray

from ..limits._kernel import Kernel
from ..limits._masking import reject_bound_mask
from ..limits._registry import AbstractRule, Requirements, register
from ._hyperparameters import frozen, hyperparameter
from ._masked import AbstractMaskedLayer


Mechanism = Literal["softmax", "identity", "abs", "relu"]
PositionalEmbedding = Literal["none", "sum", "concat"]
# Logit of a masked key under softmax: finite, so that a fully masked row stays finite.
MASKED_LOGIT = -1e20


def attention_fn(mechanism: str, logits: Array, axis: int | tuple[int, ...] = -1) -> Array:
    """The attention weights from the logits (softmax over the key positions `axis`)."""
    if mechanism == "softmax":
        return jax.nn.softmax(logits, axis=axis)
    if mechanism == "abs":
        return jnp.abs(logits)
    if mechanism == "relu":
        return jnp.maximum(logits, 0)
    return logits


def positional_covariance(
    spatial_shape: Sequence[int], p_norm: float, decay: Callable[[Array], Array] | None, dtype
) -> Float[Array, "positions positions"]:
    """The covariance $R$ of the positional embeddings between flattened positions.

    $d(i, j) = \\sum_a |i_a - j_a|^p$ (the $p$-distance to the power $p$), and
    $R = \\text{decay}(d)$; without `decay`, $R = [d = 0]$ (independent embeddings).
    """
    size = math.prod(spatial_shape)
    if decay is None:
        return jnp.eye(size, dtype=dtype)
    grid = jnp.stack(
        jnp.meshgrid(*(jnp.arange(s, dtype=dtype) for s in spatial_shape), indexing="ij"), -1
    ).reshape(size, len(spatial_shape))
    d = jnp.sum(jnp.abs(grid[:, None, :] - grid[None, :, :]) ** p_norm, axis=-1)
    return jnp.asarray(decay(d), dtype)


class GlobalSelfAttention(AbstractMaskedLayer):
    """Multi-head self-attention over all spatial positions, with its infinite-width limit.

    For one example with positions $i$ (all spatial axes, flattened) and inputs $x_i$ of
    $C$ channels (plus positional embeddings, below), head $h$ computes keys
    $k^h_i = W_K^h x_i$, queries $q^h_i$, values $v^h_i = W_V^h x_i$ and
    $$y^h_i = \\sum_j \\phi(G^h_{ij})\\, v^h_j, \\qquad
      G^h_{ij} = \\frac{\\sigma_Q \\sigma_K}{C\\, d_k^{\\alpha}} \\langle q^h_i, k^h_j \\rangle,$$
    with $\\phi$ the attention mechanism (softmax over $j$, identity, abs or relu). The output is
    $\\frac{\\sigma_O \\sigma_V}{\\sqrt{H d_v C}} W_O [y^1, \\dots, y^H] + \\sigma_b b$. All weights
    are i.i.d. standard normal (NTK parameterisation).

    Kernel rule (Hron et al. 2020, "Infinite attention: NNGP and NTK for deep attention
    networks"; formulas in
    [`eqntk.nn.rules.GlobalSelfAttentionRule`][]): with
    `linear_scaling=True` ($\\alpha = 1$, queries tied to keys) the logits converge to
    $\\sigma_Q\\sigma_K \\mathcal{K}(x_i, x_j)$ and the limit has a closed form; with
    `linear_scaling=False` ($\\alpha = 1/2$, independent queries: the usual scaled dot-product
    attention) the logits stay random and the limit, with the number of heads growing too, has
    one only for identity attention (the outputs are Gaussian by the central limit theorem over
    the heads; with few heads they are a Gaussian scale mixture). Other mechanisms work in the
    finite network, but their kernel rule raises `NotImplementedError`.

    Positional embeddings $e$ are Gaussian with standard deviation `W_pos_emb_std` and
    covariance $R_{ij} = \\text{decay}(d(i, j))$ between positions. `"sum"` adds them to the
    inputs of keys and queries, `"concat"` appends them as extra channels; `val_pos_emb` also
    feeds them to the values.
    """

    key_weight: Float[Array, "heads keys_in key_dim"]
    query_weight: Float[Array, "heads keys_in key_dim"] | None
    value_weight: Float[Array, "heads values_in value_dim"]
    out_weight: Float[Array, "out heads_values"]
    bias: Float[Array, " out"] | None
    pos_emb_values: Float[Array, "pos_channels *spatial"] | None
    W_key_std: Float[Array, ""]
    W_value_std: Float[Array, ""]
    W_query_std: Float[Array, ""]
    W_out_std: Float[Array, ""]
    b_std: Float[Array, ""] | None
    W_pos_emb_std: Float[Array, ""]
    mask: Bool[Array, "*spatial"] | None
    in_channels: int = eqx.field(static=True)
    out_channels: int = eqx.field(static=True)
    key_dim: int = eqx.field(static=True)
    value_dim: int = eqx.field(static=True)
    heads: int = eqx.field(static=True)
    linear_scaling: bool = eqx.field(static=True)
    attention: Mechanism = eqx.field(static=True)
    pos_emb: PositionalEmbedding = eqx.field(static=True)
    pos_emb_p_norm: float = eqx.field(static=True)
    pos_emb_decay: Callable[[Array], Array] | None = eqx.field(static=True)
    pos_emb_channels: int = eqx.field(static=True)
    val_pos_emb: bool = eqx.field(static=True)

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        key_dim: int,
        value_dim: int,
        heads: int,
        linear_scaling: bool = True,
        W_key_std: ArrayLike = 1.0,
        W_value_std: ArrayLike = 1.0,
        W_query_std: ArrayLike = 1.0,
        W_out_std: ArrayLike = 1.0,
        b_std: ArrayLike | None = None,
        attention: str = "softmax",
        pos_emb: str = "none",
        pos_emb_p_norm: float = 2.0,
        pos_emb_decay: Callable[[Array], Array] | None = None,
        pos_emb_channels: int | None = None,
        W_pos_emb_std: ArrayLike = 1.0,
        val_pos_emb: bool = False,
        spatial_shape: Sequence[int] | None = None,
        *,
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        - `in_channels`: the number of input channels $C$.
        - `out_channels`: the number of output channels (a width: it does not change the kernel).
        - `key_dim`, `value_dim`: the widths $d_k$, $d_v$ of keys/queries and of values.
        - `heads`: the number of heads $H$.
        - `linear_scaling`: `True` scales the logits by $1/d_k$ and ties queries to keys (the
          variant with a closed-form limit); `False` scales by $1/\\sqrt{d_k}$ with independent
          queries (in the limit only with `attention="identity"`).
        - `W_key_std`, `W_query_std`, `W_value_std`, `W_out_std`: weight standard deviations;
          in the limit only $\\sigma_Q\\sigma_K$ and $\\sigma_O\\sigma_V$ matter.
        - `b_std`: the bias standard deviation, or `None` for no bias.
        - `attention`: `"softmax"` (over the keys), `"identity"`, `"abs"` or `"relu"`.
        - `pos_emb`: `"none"`, `"sum"` or `"concat"` (see above).
        - `pos_emb_p_norm`: $p$ of the distance $d(i, j) = \\sum_a |i_a - j_a|^p$.
        - `pos_emb_decay`: the covariance of the embeddings as a function of $d$ (for example
          `lambda d: jnp.exp(-0.5 * d)`), or `None` for independent embeddings per position.
        - `pos_emb_channels`: the number of embedding channels for `"concat"`; `None` means
          `in_channels` (`"sum"` always uses `in_channels`).
        - `W_pos_emb_std`: the standard deviation of the embeddings.
        - `val_pos_emb`: whether the values see the embeddings too.
        - `spatial_shape`: the spatial shape of the inputs; needed only with positional
          embeddings (they are parameters, one per position).
        - `key`: a `jax.random` key for the initial weights.

        **Example:**

        ```python
        import jax.numpy as jnp
        import jax.random as jr
        from eqntk import nn

        layer = nn.GlobalSelfAttention(4, 8, key_dim=16, value_dim=16, heads=2, key=jr.key(0))
        assert layer(jnp.ones((4, 10))).shape == (8, 10)      # a sequence of length 10
        ```
        """
        for name, size in (
            ("in_channels", in_channels),
            ("out_channels", out_channels),
            ("key_dim", key_dim),
            ("value_dim", value_dim),
            ("heads", heads),
        ):
            if not isinstance(size, int) or isinstance(size, bool) or size < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {size!r}.")
        if attention not in ("softmax", "identity", "abs", "relu"):
            raise ValueError(
                f"`attention` must be 'softmax', 'identity', 'abs' or 'relu', got {attention!r}."
            )
        if pos_emb not in ("none", "sum", "concat"):
            raise ValueError(f"`pos_emb` must be 'none', 'sum' or 'concat', got {pos_emb!r}.")
        if not pos_emb_p_norm > 0:
            raise ValueError(f"`pos_emb_p_norm` must be positive, got {pos_emb_p_norm!r}.")
        if pos_emb_decay is not None and not callable(pos_emb_decay):
            raise TypeError(f"`pos_emb_decay` must be None or a function, got {pos_emb_decay!r}.")
        if pos_emb_channels is not None and (
            not isinstance(pos_emb_channels, int) or pos_emb_channels < 1
        ):
            raise ValueError(
                f"`pos_emb_channels` must be None or a positive integer, got {pos_emb_channels!r}."
            )
        if pos_emb == "sum" and pos_emb_channels not in (None, in_channels):
            raise ValueError(
                f"`pos_emb_channels` must be None (or `in_channels`, {in_channels}) with "
                f"pos_emb='sum': summed embeddings have the input's channels; got "
                f"{pos_emb_channels}."
            )
        if pos_emb != "none" and spatial_shape is None:
            raise ValueError(
                f"`spatial_shape` is needed with pos_emb={pos_emb!r}: the embeddings are "
                f"parameters, one per position."
            )
        self.in_channels, self.out_channels = in_channels, out_channels
        self.key_dim, self.value_dim, self.heads = key_dim, value_dim, heads
        self.linear_scaling = bool(linear_scaling)
        self.attention, self.pos_emb = attention, pos_emb
        self.pos_emb_p_norm = float(pos_emb_p_norm)
        self.pos_emb_decay = pos_emb_decay
        self.pos_emb_channels = in_channels if pos_emb_channels is None else pos_emb_channels
        self.val_pos_emb = bool(val_pos_emb)
        self.W_key_std = hyperparameter("W_key_std", W_key_std, nonnegative=True)
        self.W_value_std = hyperparameter("W_value_std", W_value_std, nonnegative=True)
        self.W_query_std = hyperparameter("W_query_std", W_query_std, nonnegative=True)
        self.W_out_std = hyperparameter("W_out_std", W_out_std, nonnegative=True)
        self.b_std = None if b_std is None else hyperparameter("b_std", b_std, nonnegative=True)
        self.W_pos_emb_std = hyperparameter("W_pos_emb_std", W_pos_emb_std, nonnegative=True)
        self.mask = None

        extra = self.pos_emb_channels if pos_emb == "concat" else 0
        keys_in = in_channels + extra
        values_in = in_channels + (extra if val_pos_emb else 0)
        kk, kq, kv, ko, kb, ke = jr.split(key, 6)
        dtype = self.W_key_std.dtype
        self.key_weight = jr.normal(kk, (heads, keys_in, key_dim), dtype)
        self.query_weight = (
            None if linear_scaling else jr.normal(kq, (heads, keys_in, key_dim), dtype)
        )
        self.value_weight = jr.normal(kv, (heads, values_in, value_dim), dtype)
        self.out_weight = jr.normal(ko, (out_channels, heads * value_dim), dtype)
        self.bias = None if b_std is None else jr.normal(kb, (out_channels,), dtype)
        self.pos_emb_values = (
            None
            if pos_emb == "none"
            else jr.normal(ke, (self.pos_emb_channels,) + tuple(spatial_shape or ()), dtype)
        )

    def output_mask(self, mask: Bool[Array, "..."]) -> Bool[Array, "..."]:
        """`mask` itself: attention keeps the positions of its input.

        **Arguments:**

        - `mask`: the mask of the input.

        **Returns:**

        The same mask.

        **Example:**

        ```python
        import jax.numpy as jnp
        import jax.random as jr
        from eqntk import nn

        layer = nn.GlobalSelfAttention(2, 4, 4, 4, 1, key=jr.key(0))
        assert layer.output_mask(jnp.arange(3) >= 2).tolist() == [False, False, True]
        ```
        """
        return mask

    def __call__(
        self, x: Float[Array, "c *spatial"], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, "out *spatial"]:
        """Apply the layer to one channel-first example `x` of shape `(C, *spatial)`.

        Masked positions (a `mask` set with [`eqntk.nn.with_inputs`][]) are never attended to.

        **Arguments:**

        - `x`: one example.
        - `key`: unused.

        **Returns:**

        The output `(out, *spatial)`.
        """
        if x.shape[0] != self.in_channels:
            raise ValueError(
                f"`GlobalSelfAttention` expects {self.in_channels} channels on axis 0, got "
                f"shape {x.shape}."
            )
        spatial = x.shape[1:]
        inputs = x.reshape(x.shape[0], -1).T  # (positions, channels)
        mask = None if self.mask is None else self.mask.reshape(-1)
        if self.mask is not None and self.mask.shape != spatial:
            raise ValueError(
                f"`mask` must have the spatial shape {spatial} of the input, got {self.mask.shape}."
            )
        values_in = inputs
        if self.pos_emb_values is not None:
            if self.pos_emb_values.shape[1:] != spatial:
                raise ValueError(
                    f"`GlobalSelfAttention` was built for spatial shape "
                    f"{self.pos_emb_values.shape[1:]} (its positional embeddings), got {spatial}."
                )
            emb = self.pos_emb_values.reshape(self.pos_emb_channels, -1).T
            if self.pos_emb_decay is not None:
                r = positional_covariance(spatial, self.pos_emb_p_norm, self.pos_emb_decay, x.dtype)
                # A symmetric square root of R (robust where R is only semi-definite).
                eigvals, eigvecs = jnp.linalg.eigh(r)
                emb = (eigvecs * jnp.sqrt(jnp.maximum(eigvals, 0))[None, :]) @ eigvecs.T @ emb
            if mask is not None:
                emb = jnp.where(mask[:, None], 0, emb)
            emb = frozen(self.W_pos_emb_std) * emb
            if self.pos_emb == "sum":
                inputs = inputs + emb
            else:
                inputs = jnp.concatenate([inputs, emb], axis=1)
            if self.val_pos_emb:
                values_in = inputs
        keys = jnp.einsum("pc,hck->hpk", inputs, self.key_weight)
        queries = (
            keys
            if self.query_weight is None
            else jnp.einsum("pc,hck->hpk", inputs, self.query_weight)
        )
        values = jnp.einsum("pc,hcv->hpv", values_in, self.value_weight)
        norm = inputs.shape[1] * (self.key_dim if self.linear_scaling else math.sqrt(self.key_dim))
        qk_std = frozen(self.W_query_std) * frozen(self.W_key_std)
        logits = jnp.einsum("hpk,hqk->hpq", queries, keys) * (qk_std / norm)
        if mask is not None:
            masked = MASKED_LOGIT if self.attention == "softmax" else 0.0
            logits = jnp.where(mask[None, None, :], masked, logits)
        weights = attention_fn(self.attention, logits)
        heads = jnp.einsum("hpq,hqv->phv", weights, values).reshape(inputs.shape[0], -1)
        ov_std = frozen(self.W_out_std) * frozen(self.W_value_std)
        scale = ov_std / math.sqrt(self.value_dim * self.heads * values_in.shape[1])
        y = scale * (heads @ self.out_weight.T)
        if self.bias is not None and self.b_std is not None:
            y = y + frozen(self.b_std) * self.bias[None, :]
        return y.T.reshape((self.out_channels,) + spatial)


# Kernel rules -------------------------------------------------------------------------------------
# Kernel rule of `GlobalSelfAttention` (Hron et al. 2020, "Infinite attention").


def _flatten_pairs(a: Array, n_lead: int, n_spatial: int) -> Array:
    """(lead, S0, S0', S1, S1', ...) -> (lead, P, P') with positions flattened row-major."""
    perm = list(range(n_lead))
    perm += [n_lead + 2 * d for d in range(n_spatial)]
    perm += [n_lead + 2 * d + 1 for d in range(n_spatial)]
    a = jnp.transpose(a, perm)
    return a.reshape(a.shape[:n_lead] + (-1, math.prod(a.shape[n_lead + n_spatial :])))


def _unflatten_pairs(a: Array, n_lead: int, spatial: tuple[int, ...]) -> Array:
    """The inverse of `_flatten_pairs`."""
    n = len(spatial)
    a = a.reshape(a.shape[:n_lead] + spatial + spatial)
    perm = list(range(n_lead))
    for d in range(n):
        perm += [n_lead + d, n_lead + n + d]
    return jnp.transpose(a, perm)


@register(GlobalSelfAttention)
class GlobalSelfAttentionRule(AbstractRule[GlobalSelfAttention]):
    """Kernel rule of [`eqntk.nn.GlobalSelfAttention`][] (Hron et al. 2020).

    Write $\\tilde{\\mathcal{K}} = w_x \\mathcal{K} + w_e\\sigma_e^2 R$ for the covariance of the
    inputs of keys and queries (positional embeddings included, with $(w_x, w_e) = (1, 1)$ for
    `"sum"` and the channel fractions for `"concat"`; $\\tilde{\\mathcal{K}} = \\mathcal{K}$
    without them), $\\mathcal{K}_v$ for that of the values ($\\tilde{\\mathcal{K}}$
    with `val_pos_emb`, else $\\mathcal{K}$), and $\\tilde\\Theta$, $\\Theta_v$ likewise for the
    NTK (the embeddings are trained parameters). Every position pair of the output gets
    $+\\sigma_b^2$ on top of the following.

    `linear_scaling=True`: with $G = \\phi(\\sigma_Q\\sigma_K \\tilde{\\mathcal{K}}_{xx})$ per
    example (softmax over the unmasked keys),
    $\\mathcal{K}' = \\sigma_O^2\\sigma_V^2 G_1 \\mathcal{K}_v G_2^\\top$ and
    $\\Theta' = \\sigma_O^2\\sigma_V^2 G_1 \\Theta_v G_2^\\top + 2\\mathcal{K}'$.

    `linear_scaling=False`, identity attention: the logits stay Gaussian with covariance
    $\\sigma_Q^2\\sigma_K^2 \\tilde{\\mathcal{K}}_{ii'} \\tilde{\\mathcal{K}}_{jj'}$, so with
    $s^2 = \\sigma_Q^2\\sigma_K^2\\sigma_O^2\\sigma_V^2$ and
    $\\langle A, B \\rangle = \\sum_{jj'} A_{jj'} B_{jj'}$ over all position pairs of the
    two examples,
    $\\mathcal{K}'_{ii'} = s^2 \\langle \\tilde{\\mathcal{K}}, \\mathcal{K}_v \\rangle
    \\tilde{\\mathcal{K}}_{ii'}$ and
    $\\Theta'_{ii'} = s^2 [(\\langle \\tilde\\Theta, \\mathcal{K}_v \\rangle +
    \\langle \\tilde{\\mathcal{K}}, \\Theta_v \\rangle) \\tilde{\\mathcal{K}}_{ii'} +
    \\langle \\tilde{\\mathcal{K}}, \\mathcal{K}_v \\rangle (\\tilde\\Theta_{ii'} +
    4\\tilde{\\mathcal{K}}_{ii'})]$ (queries, keys and values through their inputs, then the
    four weight matrices). Other mechanisms have no closed form with `linear_scaling=False`.

    The output is Gaussian in both cases (`is_gaussian=True`; for `linear_scaling=False`
    through the central limit theorem over the heads: given the logits, the heads add
    independent terms).
    """

    def requirements(self, layer: GlobalSelfAttention, wanted: Requirements) -> Requirements:
        return Requirements(diagonal_spatial=False)

    def __call__(self, layer: GlobalSelfAttention, k: Kernel, wanted: Requirements) -> Kernel:
        if not layer.linear_scaling and layer.attention != "identity":
            raise NotImplementedError(
                f"`GlobalSelfAttention` with `linear_scaling=False` (1/sqrt(key_dim) logits, "
                f"independent queries) and attention={layer.attention!r} has no closed-form "
                f"infinite-width limit; use attention='identity' or `linear_scaling=True` for "
                f"`eqntk.limit`."
            )
        reject_bound_mask(layer)
        for name, shape in (("x1", k.shape1), ("x2", k.shape2)):
            if shape[0] != layer.in_channels:
                raise ValueError(
                    f"`GlobalSelfAttention` was built for {layer.in_channels} input channels, but "
                    f"its input from `{name}` has {shape[0]} (per-example shape {shape})."
                )
        spatial = k.shape1[1:]
        n = len(spatial)
        dtype = k.nngp.dtype

        # Positional embeddings: the inputs of keys/queries (and values) become
        # w_x K + w_e R, weighted by channel fractions when concatenated.
        w_x, w_e = 1.0, k.cast(layer.W_pos_emb_std) ** 2
        if layer.pos_emb == "concat":
            total = k.shape1[0] + layer.pos_emb_channels
            w_x, w_e = k.shape1[0] / total, w_e * layer.pos_emb_channels / total
        r = None
        if layer.pos_emb != "none":
            r = positional_covariance(spatial, layer.pos_emb_p_norm, layer.pos_emb_decay, dtype)

        keep1 = _keep(k.mask1, k.nngp.shape[0], spatial, dtype)
        keep2 = _keep(k.mask2_or_mask1, k.nngp.shape[1], spatial, dtype)

        def keys(a, keep_a, keep_b):
            """`a` (lead, P, P) mixed with the embedding covariance (masked positions zero)."""
            if r is None:
                return a
            r_lead = r.reshape((1,) * (a.ndim - 2) + r.shape)
            return w_x * a + w_e * (r_lead * keep_a[..., :, None] * keep_b[..., None, :])

        def values(a, keep_a, keep_b):
            return keys(a, keep_a, keep_b) if layer.val_pos_emb else a

        # Every covariance comes with the keep vectors of its two sides: `cross` pairs x1
        # with x2, `marginals` pair each example with itself.
        cross = (keep1[:, None], keep2[None, :])
        marginals = [(_flatten_pairs(k.cov1, 1, n), (keep1, keep1))]
        if k.cov2 is not None:
            marginals.append((_flatten_pairs(k.cov2, 1, n), (keep2, keep2)))
        nngp = _flatten_pairs(k.nngp, 2, n)
        ntk = None if k.ntk is None else _flatten_pairs(k.ntk, 2, n)
        qk = k.cast(layer.W_query_std * layer.W_key_std)
        ov = k.cast(layer.W_out_std * layer.W_value_std)

        if layer.linear_scaling:

            def weights(cov, keep):
                logits = qk * keys(cov, keep, keep)
                masked = MASKED_LOGIT if layer.attention == "softmax" else 0.0
                logits = jnp.where(keep[:, None, :] > 0, logits, jnp.asarray(masked, dtype))
                return attention_fn(layer.attention, logits, axis=-1)

            g = [weights(cov, keep) for cov, (keep, _) in marginals]
            g1, g2 = g[0], g[-1]

            def weigh(a, sides, ga, gb, lead):
                """$\\sigma_O^2\\sigma_V^2 G_a \\mathcal{K}_v G_b^\\top$ for `lead` batch axes."""
                spec = "aij,abjl,bkl->abik" if lead == 2 else "aij,ajl,akl->aik"
                return ov**2 * jnp.einsum(spec, ga, values(a, *sides), gb, precision="highest")

            nngp_out = weigh(nngp, cross, g1, g2, 2)
            ntk_out = None if ntk is None else weigh(ntk, cross, g1, g2, 2) + 2 * nngp_out
            covs_out = [weigh(cov, sides, gi, gi, 1) for (cov, sides), gi in zip(marginals, g)]
        else:
            s2 = (qk * ov) ** 2

            def inner(a, b):
                """$\\langle a, b \\rangle$ over all position pairs, kept as (lead, 1, 1)."""
                return jnp.sum(a * b, axis=(-2, -1), keepdims=True)

            def identity_nngp(a, sides):
                k_keys = keys(a, *sides)
                return s2 * inner(k_keys, values(a, *sides)) * k_keys

            nngp_out = identity_nngp(nngp, cross)
            ntk_out = None
            if ntk is not None:
                k_keys, k_values = keys(nngp, *cross), values(nngp, *cross)
                t_keys, t_values = keys(ntk, *cross), values(ntk, *cross)
                through_inputs = inner(t_keys, k_values) + inner(k_keys, t_values)
                ntk_out = s2 * (
                    through_inputs * k_keys + inner(k_keys, k_values) * (t_keys + 4 * k_keys)
                )
            covs_out = [identity_nngp(cov, sides) for cov, sides in marginals]

        b2 = 0.0 if layer.b_std is None else k.cast(layer.b_std) ** 2
        return k.replace(
            nngp=_unflatten_pairs(nngp_out + b2, 2, spatial),
            ntk=None if ntk_out is None else _unflatten_pairs(ntk_out + b2, 2, spatial),
            cov1=_unflatten_pairs(covs_out[0] + b2, 1, spatial),
            cov2=None if k.cov2 is None else _unflatten_pairs(covs_out[1] + b2, 1, spatial),
            shape1=(layer.out_channels,) + spatial,
            shape2=(layer.out_channels,) + k.shape2[1:],
            is_gaussian=True,
        )


def _keep(mask, n: int, spatial: tuple[int, ...], dtype) -> Array:
    """1 at the unmasked positions of each example, 0 at masked ones: `(n, P)`."""
    if mask is None:
        return jnp.ones((n, math.prod(spatial)), dtype)
    return (~mask).reshape(n, -1).astype(dtype)
