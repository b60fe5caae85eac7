"""Finite-width tools: empirical kernels of any Equinox module, Monte Carlo kernels,
linearisation and Taylor expansion in the parameters; `Applied` brings a function of a
parameter PyTree (Flax, Haiku, `stax`) to them."""

from ._applied import Applied as Applied
from ._empirical import empirical_kernel as empirical_kernel, empirical_ntk_vp as empirical_ntk_vp
from ._monte_carlo import monte_carlo_kernel as monte_carlo_kernel
from ._taylor import (
    TaylorExpansion as TaylorExpansion,
    linearize as linearize,
    taylor_expand as taylor_expand,
)
