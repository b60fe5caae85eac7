"""neural-tangents' public API on eqntk: `import eqntk.compat as nt; from eqntk.compat import
stax`.

Programs written for neural-tangents 0.6 run by changing their imports only. Layers build
[`eqntk.nn`][] modules, kernels come from [`eqntk.limit`][], predictions from
[`eqntk.dynamics`][]: there is one kernel engine.
"""

from . import predict as predict, stax as stax
from ._kernel import Kernel as Kernel
