"""Finite-width tools: empirical kernels of any Equinox module, Monte Carlo kernels,
linearisation and Taylor expansion in the parameters."""

from ._empirical import empirical_kernel as empirical_kernel, empirical_ntk_vp as empirical_ntk_vp
