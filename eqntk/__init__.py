"""eqntk: fast and easy infinite-width neural networks, built the Equinox way."""

import importlib.metadata

from . import (
    batching as batching,
    dynamics as dynamics,
    empirical as empirical,
    limits as limits,
    nn as nn,
)
from .batching import batch as batch
from .empirical import (
    empirical_kernel as empirical_kernel,
    empirical_ntk_vp as empirical_ntk_vp,
    linearize as linearize,
    monte_carlo_kernel as monte_carlo_kernel,
    taylor_expand as taylor_expand,
)
from .limits import Kernel as Kernel, limit as limit


__version__ = importlib.metadata.version("eqntk")
