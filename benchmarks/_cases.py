"""Every benchmark case, by name, in the order the suite runs them."""

from . import activations, batch, cnn, depth, dynamics, empirical, fcn, notebook
from ._harness import Case


CASES: dict[str, Case] = {
    case.name: case
    for module in (fcn, activations, depth, cnn, empirical, dynamics, batch, notebook)
    for case in module.CASES
}
