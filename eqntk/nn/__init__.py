"""Layers of finite networks, as Equinox modules, each with a kernel rule for [`eqntk.limit`][].

Every layer is called on ONE unbatched, channel-first example (`(C,)`, `(C, L)`,
`(C, H, W)`); batches go through `jax.vmap`.
"""

from ._activations import ABRelu as ABRelu, Abs as Abs, Erf as Erf, LeakyRelu as LeakyRelu, Relu as Relu
from ._dense import Dense as Dense
from ._structure import Flatten as Flatten, Identity as Identity, Sequential as Sequential
