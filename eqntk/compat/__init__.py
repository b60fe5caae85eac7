"""neural-tangents' public API on eqntk: `import eqntk.compat as nt; from eqntk.compat import
stax`.

Programs written for neural-tangents 0.6 run by changing their imports only. Layers build
[`eqntk.nn`][] modules, kernels come from [`eqntk.limit`][], predictions from
[`eqntk.dynamics`][]: there is one kernel engine.
"""

from . import predict as predict, stax as stax
from ._batching import batch as batch
from ._empirical import (
    NtkImplementation as NtkImplementation,
    empirical_kernel_fn as empirical_kernel_fn,
    empirical_nngp_fn as empirical_nngp_fn,
    empirical_ntk_fn as empirical_ntk_fn,
    empirical_ntk_vp_fn as empirical_ntk_vp_fn,
    linearize as linearize,
    monte_carlo_kernel_fn as monte_carlo_kernel_fn,
    taylor_expand as taylor_expand,
)
from ._kernel import Kernel as Kernel
