"""The base of layers that hold a mask over the positions of their input."""

import abc

import equinox as eqx
from jaxtyping import Array, Bool


class AbstractMaskedLayer(eqx.Module):
    """A layer that can hold one example's mask over the positions of its input.

    [`eqntk.nn.with_inputs`][] binds the mask (`True` at masked positions) of one example to
    every such layer of a network, and `limit` maps the masks of whole batches along with
    `output_mask`. A layer that mixes positions (a convolution, pooling, attention) subclasses
    this, so that masked positions do not leak into the others.
    """

    mask: eqx.AbstractVar[Bool[Array, "*spatial"] | None]

    @abc.abstractmethod
    def output_mask(self, mask: Bool[Array, "..."]) -> Bool[Array, "..."] | None:
        """The mask over the positions of the layer's output, given `mask` over those of its
        input (trailing axes: the input's spatial axes; leading axes, e.g. a batch, are kept);
        `None` when no position is left (global pooling)."""
