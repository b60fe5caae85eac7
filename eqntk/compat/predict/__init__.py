"""neural-tangents' `predict`: inference and training dynamics of infinite networks."""

from .._predict import (
    Gaussian as Gaussian,
    ODEState as ODEState,
    gp_inference as gp_inference,
    gradient_descent as gradient_descent,
    gradient_descent_mse as gradient_descent_mse,
    gradient_descent_mse_ensemble as gradient_descent_mse_ensemble,
    max_learning_rate as max_learning_rate,
)
