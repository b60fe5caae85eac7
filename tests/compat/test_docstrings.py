"""Every docstring example of `eqntk.compat` runs."""

import inspect
import re

import jax
import pytest

import eqntk.compat as nt
from eqntk.compat import predict, stax


BLOCK = re.compile(r"^[ ]*```python\n(.*?)^[ ]*```", re.DOTALL | re.MULTILINE)


def _examples():
    found = {}
    for module in (nt, stax, predict):
        for name in dir(module):
            value = getattr(module, name)
            if name.startswith("_") or inspect.ismodule(value):
                continue
            docs = [inspect.getdoc(value) or ""]
            if inspect.isclass(value):
                docs += [inspect.getdoc(m) or "" for m in vars(value).values() if callable(m)]
            for i, block in enumerate(BLOCK.findall("\n".join(docs))):
                found[f"{module.__name__}.{name}[{i}]"] = inspect.cleandoc(block)
    return found


EXAMPLES = _examples()


@pytest.mark.slow  # about forty small compilations
@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_docstring_example_runs(name):
    with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
        exec(compile(EXAMPLES[name], name, "exec"), {"__name__": "__docs__"})
