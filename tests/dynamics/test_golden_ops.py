"""Every prediction op of the golden cases, on the stored kernels (the network is not built)."""

import pathlib

import numpy as np
import pytest

from tests.golden import PREDICT_OPS, load_manifest


GOLDEN = pathlib.Path(__file__).resolve().parents[3] / "shared" / "golden"
CASES = [c for c in load_manifest(GOLDEN) if c["kind"] == "predict"]


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_predict_ops(case):
    with np.load(GOLDEN / case["file"]) as data:
        arrays = {k: data[k] for k in data.files}
    for i, op in enumerate(case["ops"]):
        PREDICT_OPS[op["op"]](case, arrays, op, f"op{i:02d}_{op['op']}__")
