"""`Trajectory`: network outputs along gradient-descent training."""

import equinox as eqx
from jaxtyping import Array, Float


class Trajectory(eqx.Module):
    """Outputs of an infinitely wide network (a linearised model) during training.

    Arrays have the requested times' shape as leading axes (none for a scalar time).

    **Fields:**

    - `fx_train`: the outputs on the training set, `(*times, *y_train.shape)`.
    - `fx_test`: the outputs on the test set, `(*times, M, ...)`, or `None` without a test set.
    - `qx_train`, `qx_test`: the momentum variables $df/d\\tau$ of gradient descent with
      momentum, or `None`.
    """

    fx_train: Float[Array, "..."]
    fx_test: Float[Array, "..."] | None = None
    qx_train: Float[Array, "..."] | None = None
    qx_test: Float[Array, "..."] | None = None
