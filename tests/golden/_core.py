"""The machinery of the reference-value checks: spec builders, comparisons, the runner.

A golden folder holds `manifest.json` and `cases/<id>.npz` (see `SPEC.md` beside the data). For
each case this module builds the network described by its `spec` out of `eqntk.nn` layers, runs
it on the stored inputs and compares every stored output.

    python -m tests.golden FOLDER [CASE_ID ...]

prints one line per case and ends with `N passed, M failed`; the exit status is non-zero when a
case fails. Cases that use a layer or operation eqntk does not implement are reported as
`UNIMPLEMENTED` (counted apart, never as passed).
"""

import json
import pathlib
import time
import traceback
from collections.abc import Callable
from typing import Any

import jax


jax.config.update("jax_enable_x64", True)

import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import jax.random as jr  # noqa: E402
import numpy as np  # noqa: E402

import eqntk  # noqa: E402
from eqntk import nn  # noqa: E402


# Closed-form kernels agree with the reference to ~1e-13; 1e-6 leaves room for the few rules
# (quadrature, attention, resizing) whose summation order differs.
RTOL = 1e-6
# Entries that cancel to ~0 are compared against the array's scale instead.
ATOL_SCALE = 1e-9


class Unimplemented(Exception):
    """A case needs a layer, option or operation that eqntk does not have."""


Shape = tuple[int, ...]
StreamShape = Shape | tuple["StreamShape", ...]
Builder = Callable[[dict[str, Any], Shape, jax.Array], Any]
LAYER_BUILDERS: dict[str, Builder] = {}


def builder(name: str) -> Callable[[Builder], Builder]:
    """Register the function that builds the eqntk layer for spec layer `name`."""

    def decorator(fn: Builder) -> Builder:
        LAYER_BUILDERS[name] = fn
        return fn

    return decorator


def build(spec: list, in_shape: StreamShape, key: jax.Array) -> tuple[Any, StreamShape]:
    """Build the eqntk module for `spec` acting on examples of shape `in_shape`.

    Returns the module and the shape of its output (a tuple of shapes for several streams).
    """
    head = spec[0]
    if head == "serial":
        layers = []
        shape = in_shape
        for i, child in enumerate(spec[1]):
            layer, shape = build(child, shape, jr.fold_in(key, i))
            layers.append(layer)
        return nn.Sequential(layers), shape
    if head in ("repeat", "parallel"):
        # Combinator builders get the spec and `build` itself, for their children.
        if head not in LAYER_BUILDERS:
            if head == "parallel":
                raise Unimplemented("parallel")
            # The spec's meaning of repeat: n copies of the body in series.
            return build(["serial", [spec[2]] * spec[1]["n"]], in_shape, key)
        layer = LAYER_BUILDERS[head]({"spec": spec, "build": build}, in_shape, key)
        return layer, _output_shape(layer, in_shape)
    name, kwargs = spec
    if name not in LAYER_BUILDERS:
        raise Unimplemented(name)
    layer = LAYER_BUILDERS[name](kwargs, in_shape, key)
    return layer, _output_shape(layer, in_shape)


def _output_shape(layer: Any, in_shape: StreamShape) -> StreamShape:
    def struct(shape):
        if shape and isinstance(shape[0], tuple):
            return tuple(struct(s) for s in shape)
        return jax.ShapeDtypeStruct(shape, jnp.float64)

    # A key, for layers that draw random numbers in their forward pass (Dropout).
    out = eqx.filter_eval_shape(lambda x: layer(x, key=jr.key(0)), struct(in_shape))
    return jax.tree_util.tree_map(lambda s: tuple(s.shape), out)


def _compare(name: str, got: Any, want: np.ndarray, rtol: float = RTOL) -> None:
    if got is None:
        raise AssertionError(f"{name}: eqntk returned None")
    got = np.asarray(got)
    if got.shape != want.shape:
        raise AssertionError(f"{name}: shape {got.shape}, expected {want.shape}")
    if not np.all(np.isfinite(got)):
        raise AssertionError(f"{name}: non-finite values")
    atol = ATOL_SCALE * max(float(np.max(np.abs(want))), 1e-300)
    err = np.abs(got - want)
    bad = err > atol + rtol * np.abs(want)
    if bad.any():
        worst = np.unravel_index(np.argmax(err / (atol + rtol * np.abs(want))), want.shape)
        raise AssertionError(
            f"{name}: {bad.sum()} of {want.size} entries differ; worst at {worst}: "
            f"got {got[worst]!r}, expected {want[worst]!r} "
            f"(max abs err {err.max():.3g}, max |expected| {np.abs(want).max():.3g})"
        )


KernelCallHook = Callable[[dict[str, Any], dict[str, np.ndarray]], dict[str, Any]]
# Extra keyword arguments for the kernel function of a case (e.g. graph adjacency), by feature.
KERNEL_CALL_HOOKS: list[KernelCallHook] = []


def _kernel_call_kwargs(case: dict, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    options = case.get("kernel_fn_options") or {}
    if options.get("diagonal_spatial"):
        kwargs["diagonal_spatial"] = True
    for hook in KERNEL_CALL_HOOKS:
        kwargs.update(hook(case, arrays))
    return kwargs


# The oracle's one known deviation from the spec. neural-tangents 0.6.5 stores full-spatial
# kernels with the spatial axes reversed after an odd number of convolutions
# (`Kernel.is_reversed`), and its `ImageResize` kernel rule applies the requested sizes to the
# axes in that stored order: after one convolution, `shape=[S0', S1']` resizes axis 0 to S1' and
# axis 1 to S0' (sizes of -1 resolved in canonical order first). Its own finite network resizes
# as specified, and so does eqntk's (its kernel agrees with eqntk's finite network by Monte
# Carlo, tests/nn/test_reshape.py). To compare with the oracle, the harness marks each
# `ImageResize` with the parity of the convolutions before it and the builder swaps the sizes
# where the oracle did.
CONVOLUTIONS = ("Conv", "ConvTranspose", "ConvLocal")


def mark_oracle_axis_order(spec: list, reversed_: bool = False) -> tuple[list, bool]:
    """Return `spec` with `ImageResize` layers marked `_oracle_reversed`, and the final parity."""
    head = spec[0]
    if head == "serial":
        children = []
        for child in spec[1]:
            child, reversed_ = mark_oracle_axis_order(child, reversed_)
            children.append(child)
        return ["serial", children], reversed_
    if head == "repeat":
        body, after = mark_oracle_axis_order(spec[2], reversed_)
        if after != reversed_:  # the oracle unrolls such bodies; mark them copy by copy
            return mark_oracle_axis_order(["serial", [spec[2]] * spec[1]["n"]], reversed_)
        return ["repeat", spec[1], body], reversed_
    if head == "parallel":
        branches = [mark_oracle_axis_order(b, reversed_) for b in spec[1]]
        return ["parallel", [b for b, _ in branches]], branches[0][1] if branches else reversed_
    name, kwargs = spec
    if name in CONVOLUTIONS:
        return spec, not reversed_
    if name == "ImageResize" and reversed_:
        return [name, {**kwargs, "_oracle_reversed": True}], reversed_
    return spec, reversed_


@eqx.filter_jit
def _limit_kernels(spec_json: str, x1, x2, kwargs: dict[str, Any], get):
    """The kernels of the network described by `spec_json`, as one compiled program.

    The network is built inside the program: its weights are never used by the kernel rules, so
    their random initialisation is traced and discarded instead of being compiled and run once
    per weight shape (which cost more than the kernels). `filter_jit` caches the program by the
    spec (a static string) and the shapes, so equal architectures on equal shapes compile once.
    """
    model, _ = build(json.loads(spec_json), tuple(x1.shape[1:]), jr.key(0))
    return eqntk.limit(model)(x1, x2, get=get, **kwargs)


def _kernels(spec: list, x1, x2, kwargs: dict[str, Any], get=None):
    spec, _ = mark_oracle_axis_order(spec)
    return _limit_kernels(json.dumps(spec, sort_keys=True), x1, x2, kwargs, get)


def check_kernel_case(case: dict, arrays: dict[str, np.ndarray]) -> None:
    x1 = jnp.asarray(arrays["x1"])
    x2_is_none = bool(arrays["x2_is_none"])
    x2 = None if x2_is_none else jnp.asarray(arrays["x2"])
    k = _kernels(case["spec"], x1, x2, _kernel_call_kwargs(case, arrays))
    _compare("nngp", k.nngp, arrays["nngp"])
    _compare("ntk", k.ntk, arrays["ntk"])
    _compare("cov1", k.cov1, arrays["cov1"])
    if "cov2" in arrays:
        _compare("cov2", k.cov2, arrays["cov2"])


# Prediction operations, by the `op` name of the spec: fn(case, arrays, op, prefix) compares
# its outputs (`arrays[prefix + name]`) and raises on a mismatch.
PredictOp = Callable[[dict, dict[str, np.ndarray], dict[str, Any], str], None]
PREDICT_OPS: dict[str, PredictOp] = {}


def check_predict_case(case: dict, arrays: dict[str, np.ndarray], ops: bool = True) -> None:
    # The operations run on the stored kernels, so they are checked even while the network's
    # layers are not all implemented; the case then still counts as unimplemented.
    missing = None
    try:
        _check_predict_kernels(case, arrays)
    except Unimplemented as error:
        missing = error
    for i, op in enumerate(case["ops"] if ops else []):
        if op["op"] not in PREDICT_OPS:
            raise Unimplemented(f"prediction op {op['op']}")
        PREDICT_OPS[op["op"]](case, arrays, op, f"op{i:02d}_{op['op']}__")
    if missing is not None:
        raise missing


def _check_predict_kernels(case: dict, arrays: dict[str, np.ndarray]) -> None:
    # The three kernels are blocks of the kernel of the train and test inputs together: one
    # program instead of three (the pairs x2 = None and x2 given are both covered by the kernel
    # cases).
    x_train = jnp.asarray(arrays["x_train"])
    x_test = jnp.asarray(arrays["x_test"])
    n = x_train.shape[0]
    x = jnp.concatenate([x_train, x_test])
    nngp, ntk = _kernels(case["spec"], x, None, {}, ("nngp", "ntk"))
    blocks = {
        "train_train": (slice(None, n), slice(None, n)),
        "test_train": (slice(n, None), slice(None, n)),
        "test_test": (slice(n, None), slice(n, None)),
    }
    for name, rows_cols in blocks.items():
        _compare(f"k_{name}_nngp", nngp[rows_cols], arrays[f"k_{name}_nngp"])
        _compare(f"k_{name}_ntk", ntk[rows_cols], arrays[f"k_{name}_ntk"])


# The reference cases shipped with the tests (see `data/README.md`).
DATA = pathlib.Path(__file__).resolve().parent / "data"


def load_manifest(folder: pathlib.Path) -> list[dict]:
    return json.loads((folder / "manifest.json").read_text())["cases"]


def run_case(folder: pathlib.Path, case: dict, ops: bool = True) -> tuple[str, str]:
    """Run one case; return `(status, message)` with status PASS, FAIL or UNIMPLEMENTED.

    With `ops=False` a predict case checks its kernels only, not its prediction operations.
    """
    with np.load(folder / case["file"]) as data:
        arrays = {k: data[k] for k in data.files}
    try:
        if case["kind"] == "kernel":
            check_kernel_case(case, arrays)
        elif case["kind"] == "predict":
            check_predict_case(case, arrays, ops)
        else:
            raise Unimplemented(f"case kind {case['kind']}")
    except Unimplemented as missing:
        return "UNIMPLEMENTED", f"needs {missing}"
    except Exception as error:  # a failed comparison or an error inside eqntk
        detail = "".join(traceback.format_exception_only(type(error), error)).strip()
        return "FAIL", detail.replace("\n", " | ")[:2000]
    return "PASS", ""


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    folder = pathlib.Path(argv[0])
    cases = load_manifest(folder)
    if argv[1:]:
        wanted = set(argv[1:])
        cases = [c for c in cases if c["id"] in wanted]
    counts = {"PASS": 0, "FAIL": 0, "UNIMPLEMENTED": 0}
    for case in cases:
        start = time.perf_counter()
        status, message = run_case(folder, case)
        counts[status] += 1
        seconds = time.perf_counter() - start
        print(f"{status:13s} {case['id']} ({seconds:.1f}s) {message}".rstrip(), flush=True)
    if counts["UNIMPLEMENTED"]:
        print(f"{counts['UNIMPLEMENTED']} unimplemented")
    print(f"{counts['PASS']} passed, {counts['FAIL']} failed")
    return 1 if counts["FAIL"] else 0
