"""Kernel rule of `GlobalSelfAttention` (Hron et al. 2020, "Infinite attention")."""

import math

import jax.numpy as jnp
from jaxtyping import Array

from ..nn import GlobalSelfAttention
from ..nn._attention import MASKED_LOGIT, attention_fn, positional_covariance
from ._kernel import Kernel
from ._masking import reject_bound_mask
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
class GlobalSelfAttentionRule(AbstractRule[GlobalSelfAttention]):
    """Kernel rule of [`eqntk.nn.GlobalSelfAttention`][] (Hron et al. 2020).

    Write $\\tilde{\\mathcal{K}} = w_x \\mathcal{K} + w_e\\sigma_e^2 R$ for the covariance of the
    inputs of keys and queries (positional embeddings included; $\\tilde{\\mathcal{K}} =
    \\mathcal{K}$ without them), $\\mathcal{K}_v$ for that of the values ($\\tilde{\\mathcal{K}}$
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

    The output is Gaussian in both cases (`is_gaussian=True`), also with square-root scaling:
    the limit takes the number of heads to infinity with the widths (the NTK above is only
    deterministic then), and given the random logits each head adds an independent term of
    variance $O(1/H)$, so the central limit theorem over the heads makes the outputs jointly
    Gaussian. With a fixed number of heads they would be a Gaussian scale mixture instead.
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
