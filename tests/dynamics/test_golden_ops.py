"""Every prediction op of the golden cases, on the stored kernels (the network is not built)."""

import numpy as np
import pytest

from tests.golden import DATA, PREDICT_OPS, load_manifest


CASES = [c for c in load_manifest(DATA) if c["kind"] == "predict"]


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_predict_ops(case):
    with np.load(DATA / case["file"]) as data:
        arrays = {k: data[k] for k in data.files}
    for i, op in enumerate(case["ops"]):
        PREDICT_OPS[op["op"]](case, arrays, op, f"op{i:02d}_{op['op']}__")
