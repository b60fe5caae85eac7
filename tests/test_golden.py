"""Every case of the reference data in `../shared/golden` (see `tests/golden`)."""

import pathlib

import pytest

from tests.golden import load_manifest, run_case


GOLDEN = pathlib.Path(__file__).resolve().parents[2] / "shared" / "golden"
CASES = load_manifest(GOLDEN)


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_golden_case(case):
    status, message = run_case(GOLDEN, case)
    if status == "UNIMPLEMENTED":
        pytest.xfail(f"not implemented yet: {message}")
    assert status == "PASS", message
