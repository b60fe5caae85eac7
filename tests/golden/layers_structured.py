"""Spec builders for the structured layers: Index, DotGeneral, ImageResize, Aggregate,
GlobalSelfAttention; and the hook that passes each graph case's adjacency to the kernel."""

import jax.numpy as jnp

from eqntk import nn

from ._core import KERNEL_CALL_HOOKS, builder


def _spatial_axes(names: list[str], n_spatial: int) -> tuple[int, ...]:
    """Spec axis names (`"spatial"`, `"spatialK"`) as spatial axis numbers."""
    axes: list[int] = []
    for name in names:
        if name == "spatial":
            axes += range(n_spatial)
        else:
            axes.append(int(name.removeprefix("spatial")))
    return tuple(axes)


@builder("Index")
def _index(kw, shape, key):
    entries = [slice(*e) if isinstance(e, list) else e for e in kw["spatial"]]
    return nn.Index(entries)


@builder("DotGeneral")
def _dot_general(kw, shape, key):
    if kw.get("matrix") is None:
        return nn.DotGeneral(scale=kw["scale"])
    axes = _spatial_axes([kw["axis"]], len(shape) - 1)
    scale = 1.0 if kw.get("scale") is None else kw["scale"]
    return nn.DotGeneral(jnp.asarray(kw["matrix"]), axes=axes, scale=scale)


@builder("ImageResize")
def _image_resize(kw, shape, key):
    sizes = list(kw["shape"])
    if kw.get("_oracle_reversed"):
        # See `mark_oracle_axis_order` in tests/golden/_core.py.
        resolved = [old if new == -1 else new for new, old in zip(sizes, shape[1:])]
        sizes = resolved[::-1]
    return nn.ImageResize(sizes, kw.get("method", "linear"), kw.get("antialias", True))


@builder("Aggregate")
def _aggregate(kw, shape, key):
    return nn.Aggregate(axes=_spatial_axes(kw.get("axes", ["spatial"]), len(shape) - 1))


def _decay(spec):
    """The positional-embedding covariance as a function of the distance `d`."""
    if spec is None:
        return None
    if spec["fn"] == "exp":
        return lambda d: jnp.exp(-spec["rate"] * d)
    if spec["fn"] == "power":
        return lambda d: (1 + d) ** -spec["exponent"]
    raise ValueError(f"unknown decay {spec!r}")


@builder("GlobalSelfAttention")
def _attention(kw, shape, key):
    return nn.GlobalSelfAttention(
        shape[0],
        kw["out"],
        key_dim=kw["key_dim"],
        value_dim=kw["value_dim"],
        heads=kw["heads"],
        linear_scaling=kw.get("linear_scaling", True),
        W_key_std=kw.get("W_key_std", 1.0),
        W_value_std=kw.get("W_value_std", 1.0),
        W_query_std=kw.get("W_query_std", 1.0),
        W_out_std=kw.get("W_out_std", 1.0),
        b_std=kw.get("b_std"),
        attention=kw.get("attention", "softmax"),
        pos_emb=kw.get("pos_emb", "none"),
        pos_emb_p_norm=kw.get("pos_emb_p_norm", 2.0),
        pos_emb_decay=_decay(kw.get("pos_emb_decay")),
        pos_emb_channels=kw.get("pos_emb_channels"),
        W_pos_emb_std=kw.get("W_pos_emb_std", 1.0),
        val_pos_emb=kw.get("val_pos_emb", False),
        spatial_shape=tuple(shape[1:]),
        key=key,
    )


def _graph_inputs(case, arrays):
    """Every Aggregate layer of a graph case uses the case's stored adjacency or edge list."""
    for prefix in ("pattern", "edges"):
        if f"{prefix}1" in arrays:
            kwargs = {"pattern1": jnp.asarray(arrays[f"{prefix}1"])}
            if f"{prefix}2" in arrays:
                kwargs["pattern2"] = jnp.asarray(arrays[f"{prefix}2"])
            return kwargs
    return {}


KERNEL_CALL_HOOKS.append(_graph_inputs)
