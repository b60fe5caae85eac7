"""Each part of neural-tangents' public API under `eqntk.compat` gives neural-tangents' numbers
(stored by `make_reference.py`): every stax layer and combinator (kernels and finite outputs
from `init_fn`'s parameters), `predict`, the empirical and Monte Carlo kernels, `batch`."""

import pytest

from . import api
from .helpers import check_against_reference


# Each program compiles dozens of networks (tens of seconds): they are the slow witnesses;
# tests/compat/test_unit.py holds the fast default checks.
@pytest.mark.slow
@pytest.mark.parametrize(
    "name",
    [
        "stax_vectors",
        "stax_images",
        "predict_api",
        "empirical_api",
        "graph_and_masks",
        "stax_index",
        "stax_dot_general",
        "kernel_methods",
        "user_layers",
    ],
)
def test_api(name):
    check_against_reference(name, api.PROGRAMS[name]())
