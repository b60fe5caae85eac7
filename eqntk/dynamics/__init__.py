"""Inference and training dynamics of infinitely wide networks, from their kernels.

- [`eqntk.dynamics.gp_inference`][]: exact NNGP / NTK / NTKGP posteriors (lineax solves).
- [`eqntk.dynamics.gradient_descent_mse`][]: closed-form MSE gradient-flow dynamics.
- [`eqntk.dynamics.gradient_descent_mse_ensemble`][]: mean and covariance of an infinite
  ensemble trained on the MSE, from a kernel function.
- [`eqntk.dynamics.gradient_descent`][]: gradient-descent dynamics for any loss (diffrax).
- [`eqntk.dynamics.max_learning_rate`][], [`eqntk.dynamics.marginal_log_likelihood`][].
- [`eqntk.dynamics.gp_inference_matrix_free`][],
  [`eqntk.dynamics.marginal_log_likelihood_matrix_free`][]: the same without ever holding the
  kernel matrix (conjugate gradients on a [`eqntk.dynamics.TiledKernelOperator`][]).
"""

from ._ensemble import (
    EnsemblePredictor as EnsemblePredictor,
    gradient_descent_mse_ensemble as gradient_descent_mse_ensemble,
)
from ._gaussian import Gaussian as Gaussian
from ._gp import GPPredictor as GPPredictor, gp_inference as gp_inference
from ._likelihood import marginal_log_likelihood as marginal_log_likelihood
from ._lr import max_learning_rate as max_learning_rate
from ._matrix_free import (
    MatrixFreePredictor as MatrixFreePredictor,
    gp_inference_matrix_free as gp_inference_matrix_free,
    marginal_log_likelihood_matrix_free as marginal_log_likelihood_matrix_free,
)
from ._mse import MSEPredictor as MSEPredictor, gradient_descent_mse as gradient_descent_mse
from ._ode import (
    ODEPredictor as ODEPredictor,
    ODESolution as ODESolution,
    gradient_descent as gradient_descent,
)
from ._tiled import PivotedCholesky as PivotedCholesky, TiledKernelOperator as TiledKernelOperator
from ._trajectory import Trajectory as Trajectory
