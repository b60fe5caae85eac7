"""The kernel rules of [`eqntk.nn`][]'s layers: how each maps the kernel of its input to the
kernel of its output (the formulas are in their docstrings; see also the "Kernel rules" page of
the documentation).

Each rule lives beside its layer, in the layer family's module, and is registered when the
layer is defined; this module only gathers them under public names, e.g. to read a formula
with `help(eqntk.nn.rules.ReluRule)` or to subclass a rule for a layer of your own (see
[`eqntk.limits.AbstractRule`][]).
"""

from ._activations import (
    ABReluRule as ABReluRule,
    AbsRule as AbsRule,
    ErfRule as ErfRule,
    GeluRule as GeluRule,
    LeakyReluRule as LeakyReluRule,
    ReluRule as ReluRule,
    SigmoidLikeRule as SigmoidLikeRule,
    SignRule as SignRule,
)
from ._attention import (
    GlobalSelfAttentionRule as GlobalSelfAttentionRule,
)
from ._branching import (
    AbstractFanInRule as AbstractFanInRule,
    FanInConcatRule as FanInConcatRule,
    FanInProdRule as FanInProdRule,
    FanInSumRule as FanInSumRule,
    FanOutRule as FanOutRule,
    ParallelRule as ParallelRule,
)
from ._conv import (
    ConvLocalRule as ConvLocalRule,
    ConvolutionRule as ConvolutionRule,
)
from ._dense import (
    DenseRule as DenseRule,
)
from ._elementwise import (
    ElementwiseRule as ElementwiseRule,
)
from ._exponential import (
    ExpNormalizedRule as ExpNormalizedRule,
    ExpRule as ExpRule,
    GaussianRule as GaussianRule,
)
from ._graph import (
    AggregateRule as AggregateRule,
)
from ._normalization import (
    DropoutRule as DropoutRule,
    EquinoxDropoutRule as EquinoxDropoutRule,
    LayerNormRule as LayerNormRule,
)
from ._polynomial import (
    HermiteRule as HermiteRule,
    MonomialRule as MonomialRule,
    PolynomialRule as PolynomialRule,
    RectifiedMonomialRule as RectifiedMonomialRule,
)
from ._pooling import (
    GlobalPoolRule as GlobalPoolRule,
    PoolRule as PoolRule,
)
from ._repeat import (
    RepeatRule as RepeatRule,
)
from ._reshape import (
    DotGeneralRule as DotGeneralRule,
    ImageResizeRule as ImageResizeRule,
    IndexRule as IndexRule,
)
from ._structure import (
    FlattenRule as FlattenRule,
    IdentityRule as IdentityRule,
    SequentialRule as SequentialRule,
)
from ._trigonometric import (
    GaborRule as GaborRule,
    RbfRule as RbfRule,
    SinusoidRule as SinusoidRule,
)
