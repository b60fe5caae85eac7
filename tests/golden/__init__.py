"""Reference-value checks against a golden folder (see `SPEC.md` beside the data).

For each case this package builds the network described by its `spec` out of `eqntk.nn`
layers, runs it on the stored inputs and compares every stored output:

    python -m tests.golden FOLDER [CASE_ID ...]

prints one line per case and ends with `N passed, M failed`; the exit status is non-zero when a
case fails. Cases that use a layer or operation eqntk does not implement are reported as
`UNIMPLEMENTED` (counted apart, never as passed).

Spec builders live in the modules `layers_*.py` of this package (one per layer family) and the
prediction operations in `predict*.py`; every such module is imported here and registers itself.
"""

import importlib
import pkgutil

from ._core import (
    DATA as DATA,
    KERNEL_CALL_HOOKS as KERNEL_CALL_HOOKS,
    LAYER_BUILDERS as LAYER_BUILDERS,
    PREDICT_OPS as PREDICT_OPS,
    Unimplemented as Unimplemented,
    build as build,
    builder as builder,
    load_manifest as load_manifest,
    main as main,
    run_case as run_case,
)


for _module in pkgutil.iter_modules(__path__):
    if _module.name.startswith(("layers_", "predict")):
        importlib.import_module(f"{__name__}.{_module.name}")
