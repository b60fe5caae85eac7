"""Spec builders for the combinators (parallel, repeat), the branching layers, LayerNorm and
Dropout."""

import jax.random as jr

from eqntk import nn

from ._core import builder


def _spatial_index(name: str) -> int:
    """The index of the spec axis name `"spatialK"`."""
    return int(name.removeprefix("spatial"))


@builder("parallel")
def _parallel(kw, shape, key):
    spec, build = kw["spec"], kw["build"]
    children = zip(spec[1], shape, strict=True)
    return nn.Parallel([build(c, s, jr.fold_in(key, i))[0] for i, (c, s) in enumerate(children)])


@builder("repeat")
def _repeat(kw, shape, key):
    spec, build = kw["spec"], kw["build"]
    return nn.repeat(lambda k: build(spec[2], shape, k)[0], spec[1]["n"], key=key)


@builder("FanOut")
def _fan_out(kw, shape, key):
    return nn.FanOut(kw["n"])


@builder("FanInSum")
def _fan_in_sum(kw, shape, key):
    return nn.FanInSum()


@builder("FanInProd")
def _fan_in_prod(kw, shape, key):
    return nn.FanInProd()


@builder("FanInConcat")
def _fan_in_concat(kw, shape, key):
    axis = kw.get("axis", "channel")
    return nn.FanInConcat("channel" if axis == "channel" else _spatial_index(axis))


@builder("LayerNorm")
def _layer_norm(kw, shape, key):
    axes = [a if a in ("channel", "spatial") else _spatial_index(a) for a in kw["axes"]]
    return nn.LayerNorm(axes, kw.get("eps", 1e-12))


@builder("Dropout")
def _dropout(kw, shape, key):
    return nn.Dropout(kw["keep_rate"], inference=kw.get("mode", "train") == "test")
