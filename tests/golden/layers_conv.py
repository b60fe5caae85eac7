"""Spec builders for the convolution and pooling layers."""

from eqntk import nn

from ._core import builder
from .layers_basic import _affine_kwargs


def _conv_kwargs(kw, shape):
    return dict(
        in_channels=shape[0],
        out_channels=kw["out"],
        filter_shape=tuple(kw["filter_shape"]),
        strides=None if kw.get("strides") is None else tuple(kw["strides"]),
        padding=kw.get("padding", "VALID"),
        **_affine_kwargs(kw),
    )


@builder("Conv")
def _conv(kw, shape, key):
    return nn.Conv(**_conv_kwargs(kw, shape), key=key)


@builder("ConvTranspose")
def _conv_transpose(kw, shape, key):
    return nn.ConvTranspose(**_conv_kwargs(kw, shape), key=key)


@builder("ConvLocal")
def _conv_local(kw, shape, key):
    return nn.ConvLocal(**_conv_kwargs(kw, shape), spatial_shape=tuple(shape[1:]), key=key)


def _pool_kwargs(kw):
    return dict(
        window_shape=tuple(kw["window_shape"]),
        strides=None if kw.get("strides") is None else tuple(kw["strides"]),
        padding=kw.get("padding", "VALID"),
    )


@builder("AvgPool")
def _avg_pool(kw, shape, key):
    return nn.AvgPool(**_pool_kwargs(kw), normalize_edges=kw.get("normalize_edges", False))


@builder("SumPool")
def _sum_pool(kw, shape, key):
    return nn.SumPool(**_pool_kwargs(kw))


@builder("GlobalAvgPool")
def _global_avg_pool(kw, shape, key):
    return nn.GlobalAvgPool()


@builder("GlobalSumPool")
def _global_sum_pool(kw, shape, key):
    return nn.GlobalSumPool()
