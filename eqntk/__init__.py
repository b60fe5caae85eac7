"""eqntk: fast and easy infinite-width neural networks, built the Equinox way."""

import importlib.metadata

from . import limits as limits, nn as nn
from .limits import Kernel as Kernel, limit as limit


__version__ = importlib.metadata.version("eqntk")
