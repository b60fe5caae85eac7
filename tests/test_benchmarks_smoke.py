"""Keep the benchmark harness from rotting: the FCN case's eqntk side at a tiny size."""

import json
import subprocess
import sys

from benchmarks._harness import ROOT


def test_fcn_benchmark_runs_at_a_tiny_size():
    # A subprocess, as the harness runs it: the benchmark times float32 without the test
    # suite's float64 and strict-promotion settings.
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks._worker", "eqntk", "fcn", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    line = done.stdout.strip().splitlines()[-1]
    assert line.startswith("BENCHMARK-RESULT ")
    result = json.loads(line.removeprefix("BENCHMARK-RESULT "))
    assert result["status"] == "ok", result.get("reason")
    assert result["versions"]["jax"] == __import__("jax").__version__
    for name in ("kernel", "gram", "relu_map", "relu_layer", "floor"):
        assert result["measurements"][name]["median"] > 0
    assert result["work_mib"] >= 0
