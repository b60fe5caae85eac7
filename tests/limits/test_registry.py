"""The rule registry: every public layer has a rule, found without importing anything else."""

import inspect
import subprocess
import sys

import equinox as eqx
import pytest

from eqntk import nn
from eqntk.limits import AbstractRule, AbstractStreamsRule
from eqntk.limits._registry import registered_rule


_LAYERS = sorted(
    (
        obj
        for obj in vars(nn).values()
        if inspect.isclass(obj) and issubclass(obj, eqx.Module) and not inspect.isabstract(obj)
    ),
    key=lambda cls: cls.__name__,
)


def test_there_are_public_layers():
    # Guards the parametrisation below against an empty list.
    assert len(_LAYERS) > 30


@pytest.mark.parametrize("layer_class", _LAYERS, ids=lambda cls: cls.__name__)
def test_every_public_layer_has_a_rule(layer_class):
    rule = registered_rule(layer_class)
    assert isinstance(rule, AbstractRule | AbstractStreamsRule), layer_class


@pytest.mark.parametrize("first", ["eqntk.limits", "eqntk.nn"])
def test_rules_are_registered_whichever_package_is_imported_first(first):
    # A fresh interpreter: registration must not depend on an import made elsewhere.
    code = (
        f"import {first}\n"
        "import eqntk.nn as nn\n"
        "from eqntk.limits._registry import registered_rule\n"
        "assert registered_rule(nn.Conv) is not None\n"
        "import equinox as eqx\n"
        "assert registered_rule(eqx.nn.Sequential) is not None\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
