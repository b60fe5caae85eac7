"""Kernel rule of `GlobalSelfAttention` (Hron et al. 2020, "Infinite attention")."""

import math

import jax.numpy as jnp
from jaxtyping import Array

from ..nn import GlobalSelfAttention
from ..nn._attention import MASKED_LOGIT, attention_fn, positional_covariance
from ._kernel import Kernel
from ._registry import AbstractRule, Requirements, register


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
class GlobalSelfAttentionRule(AbstractRule):
    """Kernel rule of [`eqntk.nn.GlobalSelfAttention`][] with `linear_scaling=True`:
    $\\mathcal{K}' = \\sigma_O^2\\sigma_V^2 G_1 \\mathcal{K} G_2^\\top + \\sigma_b^2$,
    $\\Theta' = \\sigma_O^2\\sigma_V^2 G_1 \\Theta G_2^\\top + 2(\\mathcal{K}' - \\sigma_b^2) +
    \\sigma_b^2$, with $G = \\phi(\\sigma_Q\\sigma_K \\mathcal{K}_{xx})$ per example (softmax over
    the unmasked keys). Positional embeddings enter as $w_x \\mathcal{K} + w_e\\sigma_e^2 R$."""

    def requirements(self, layer: GlobalSelfAttention, wanted):
        return Requirements(diagonal_spatial=False)

    def __call__(self, layer: GlobalSelfAttention, k: Kernel, wanted) -> Kernel:
        if not layer.linear_scaling:
            raise NotImplementedError(
                "`GlobalSelfAttention` with `linear_scaling=False` (1/sqrt(key_dim) logits, "
                "independent queries) has no closed-form infinite-width limit; use "
                "`linear_scaling=True` for `eqntk.limit`."
            )
        if layer.mask is not None:
            raise ValueError(
                "This `GlobalSelfAttention` layer holds one example's mask (set by "
                "`nn.with_inputs`), which is for the finite network; pass the masks of the "
                "batches to the kernel function as `mask1=` / `mask2=` instead."
            )
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

        def with_embeddings(a, keep_a, keep_b):
            """`a` (lead, P, P) mixed with the embedding covariance (masked positions zero)."""
            if r is None:
                return a
            r_lead = r.reshape((1,) * (a.ndim - 2) + r.shape)
            return w_x * a + w_e * (r_lead * keep_a[..., :, None] * keep_b[..., None, :])

        keep1 = _keep(k.mask1, k.nngp.shape[0], spatial, dtype)
        keep2 = _keep(k.mask2_or_mask1, k.nngp.shape[1], spatial, dtype)
        cov1 = _flatten_pairs(k.cov1, 1, n)
        cov2 = None if k.cov2 is None else _flatten_pairs(k.cov2, 1, n)
        nngp = _flatten_pairs(k.nngp, 2, n)
        ntk = None if k.ntk is None else _flatten_pairs(k.ntk, 2, n)

        qk = k.cast(layer.W_query_std * layer.W_key_std)

        def weights(cov, keep):
            logits = qk * with_embeddings(cov, keep, keep)
            masked = MASKED_LOGIT if layer.attention == "softmax" else 0.0
            logits = jnp.where(keep[:, None, :] > 0, logits, jnp.asarray(masked, dtype))
            return attention_fn(layer.attention, logits, axis=-1)

        g1 = weights(cov1, keep1)
        g2 = g1 if k.cov2 is None else weights(cov2, keep2)
        ov2 = k.cast(layer.W_out_std * layer.W_value_std) ** 2
        b2 = 0.0 if layer.b_std is None else k.cast(layer.b_std) ** 2

        def values(a, keep_a, keep_b):
            return with_embeddings(a, keep_a, keep_b) if layer.val_pos_emb else a

        def cross(a):
            return ov2 * jnp.einsum(
                "aij,abjl,bkl->abik",
                g1,
                values(a, keep1[:, None], keep2[None, :]),
                g2,
                precision="highest",
            )

        def marginal(a, g, keep):
            out = ov2 * jnp.einsum("aij,ajl,akl->aik", g, values(a, keep, keep), g)
            return _unflatten_pairs(out + b2, 1, spatial)

        nngp_out = cross(nngp)
        ntk_out = None
        if ntk is not None:
            ntk_out = _unflatten_pairs(cross(ntk) + 2 * nngp_out + b2, 2, spatial)
        return k.replace(
            nngp=_unflatten_pairs(nngp_out + b2, 2, spatial),
            ntk=ntk_out,
            cov1=marginal(cov1, g1, keep1),
            cov2=None if cov2 is None else marginal(cov2, g2, keep2),
            shape1=(layer.out_channels,) + spatial,
            shape2=(layer.out_channels,) + k.shape2[1:],
            is_gaussian=True,
        )


def _keep(mask, n: int, spatial: tuple[int, ...], dtype) -> Array:
    """1 at the unmasked positions of each example, 0 at masked ones: `(n, P)`."""
    if mask is None:
        return jnp.ones((n, math.prod(spatial)), dtype)
    return (~mask).reshape(n, -1).astype(dtype)
