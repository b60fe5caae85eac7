"""Random features of infinite-width kernels: maps $\\phi$ with $\\phi(x) \\cdot \\phi(x')
\\approx k(x, x')$, for kernel methods on millions of points.

- [`eqntk.features.random_features`][]: NNGP and NTK features of a fully connected network.

The `"hermite"` method expands an activation in the normalised Hermite polynomials
$h_j = \\mathrm{He}_j / \\sqrt{j!}$: $\\sigma(s z) = \\sum_j c_j(s) h_j(z)$ with
$c_j(s) = E[\\sigma(s z) h_j(z)]$ (Gauss-Hermite quadrature), so that for unit-variance
Gaussians with correlation $\\rho$, $E[\\sigma(s z)\\sigma(s' z')] = \\sum_j c_j(s) c_j(s')
\\rho^j$ (Mehler's formula); the derivative's coefficients are
$\\sqrt{j+1}\\, c_{j+1}(s) / s$ (Gaussian integration by parts).
"""

from ._random_features import FeatureMap as FeatureMap, random_features as random_features
