"""Layers of finite networks, as Equinox modules, each with a kernel rule for [`eqntk.limit`][].

Every layer is called on ONE unbatched, channel-first example (`(C,)`, `(C, L)`,
`(C, H, W)`); batches go through `jax.vmap`.
"""

from ._activations import (
    ABRelu as ABRelu,
    Abs as Abs,
    Erf as Erf,
    Gelu as Gelu,
    LeakyRelu as LeakyRelu,
    Relu as Relu,
    SigmoidLike as SigmoidLike,
    Sign as Sign,
)
from ._attention import GlobalSelfAttention as GlobalSelfAttention
from ._branching import (
    FanInConcat as FanInConcat,
    FanInProd as FanInProd,
    FanInSum as FanInSum,
    FanOut as FanOut,
    Parallel as Parallel,
    residual as residual,
)
from ._conv import Conv as Conv, ConvLocal as ConvLocal, ConvTranspose as ConvTranspose
from ._dense import Dense as Dense
from ._elementwise import Elementwise as Elementwise
from ._exponential import Exp as Exp, ExpNormalized as ExpNormalized, Gaussian as Gaussian
from ._graph import Aggregate as Aggregate, with_inputs as with_inputs
from ._normalization import Dropout as Dropout, LayerNorm as LayerNorm
from ._polynomial import (
    Hermite as Hermite,
    Monomial as Monomial,
    Polynomial as Polynomial,
    RectifiedMonomial as RectifiedMonomial,
)
from ._pooling import (
    AvgPool as AvgPool,
    GlobalAvgPool as GlobalAvgPool,
    GlobalSumPool as GlobalSumPool,
    SumPool as SumPool,
)
from ._repeat import Repeat as Repeat, repeat as repeat
from ._reshape import DotGeneral as DotGeneral, ImageResize as ImageResize, Index as Index
from ._structure import Flatten as Flatten, Identity as Identity, Sequential as Sequential
from ._trigonometric import Cos as Cos, Gabor as Gabor, Rbf as Rbf, Sin as Sin


# isort: split
# The rules of the stock `equinox.nn` layers and the interpreter of modules without a rule (they
# use the layers above, so they are registered once these are defined).
from ..limits import _equinox_layers as _equinox_layers, _program as _program  # noqa: E402
from . import rules as rules  # noqa: E402  (the rules of the layers above, by name)
