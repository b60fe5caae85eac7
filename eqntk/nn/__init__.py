"""Layers of finite networks, as Equinox modules, each with a kernel rule for [`eqntk.limit`][].

Every layer is called on ONE unbatched, channel-first example (`(C,)`, `(C, L)`,
`(C, H, W)`); batches go through `jax.vmap`.
"""

from ._activations import ABRelu as ABRelu, Abs as Abs, Erf as Erf, LeakyRelu as LeakyRelu, Relu as Relu
from ._branching import (
    FanInConcat as FanInConcat,
    FanInProd as FanInProd,
    FanInSum as FanInSum,
    FanOut as FanOut,
    Parallel as Parallel,
    residual as residual,
)
from ._dense import Dense as Dense
from ._normalization import Dropout as Dropout, LayerNorm as LayerNorm
from ._repeat import Repeat as Repeat, repeat as repeat
from ._structure import Flatten as Flatten, Identity as Identity, Sequential as Sequential
