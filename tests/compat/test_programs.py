"""neural-tangents' examples and README programs under `eqntk.compat` give neural-tangents'
numbers."""

import pytest

from . import programs
from .helpers import check_against_reference


FAST = ["infinite_fcn", "elementwise"]
SLOW = [
    "infinite_fcn_batched",
    "function_space",
    "weight_space",
    "elementwise_numerical",
    "readme_kernels",
    "readme_linearize_and_empirical",
    "empirical_ntk",
    "readme_wide_resnet",
]


@pytest.mark.parametrize("name", FAST)
def test_program(name):
    check_against_reference(name, programs.PROGRAMS[name]())


@pytest.mark.slow
@pytest.mark.parametrize("name", SLOW)
def test_program_slow(name):
    check_against_reference(name, programs.PROGRAMS[name]())
