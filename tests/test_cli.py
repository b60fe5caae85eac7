"""The `eqntk` command line: bad arguments fail at once in one line, `--help` and `--version`
skip JAX, and a small `eqntk demo` runs end to end."""

import importlib.metadata
import json
import math
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from eqntk._cli import DIGITS, _count, _parser, _table, main


ROOT = pathlib.Path(__file__).resolve().parent.parent


def _environment() -> dict[str, str]:
    """This checkout first on the path, the user's default JAX settings, no display."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env["MPLBACKEND"] = "Agg"
    return env


def _eqntk_command() -> list[str]:
    """The installed `eqntk` script when there is one, else the module."""
    script = pathlib.Path(sys.executable).parent / "eqntk"
    if script.exists():
        return [str(script)]
    found = shutil.which("eqntk")
    return [found] if found else [sys.executable, "-m", "eqntk._cli"]


def _run(args: list[str], **options) -> subprocess.CompletedProcess:
    return subprocess.run(
        _eqntk_command() + args, capture_output=True, text=True, env=_environment(), **options
    )


def test_help_and_version_do_not_import_jax():
    # `eqntk --help` answered in 8 s when the entry point imported JAX; without it, in 0.1 s.
    code = """
import sys
from eqntk._cli import main
for argv in (["--help"], ["demo", "--help"], ["--version"], ["demo", "--n-train", "0"]):
    try:
        main(argv)
    except SystemExit:
        pass
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("jax", "equinox", "numpy"))
print(heavy)
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=_environment()
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_package_attributes_load_lazily():
    code = """
import sys
import eqntk
assert "jax" not in sys.modules
assert "limit" in dir(eqntk) and "nn" in dir(eqntk)
from eqntk import limit, nn
assert eqntk.limit is limit and eqntk.nn is nn and eqntk.Kernel is eqntk.limits.Kernel
assert eqntk.batch is eqntk.batching.batch
try:
    eqntk.not_a_name
except AttributeError as error:
    assert "not_a_name" in str(error)
else:
    raise AssertionError("no AttributeError")
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=_environment()
    )
    assert result.returncode == 0, result.stderr


def test_version(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["--version"])
    assert exit.value.code == 0
    assert capsys.readouterr().out.strip() == f"eqntk {importlib.metadata.version('eqntk')}"


def test_help(capsys):
    for argv, expected in ((["--help"], "demo"), (["demo", "--help"], "--n-train N")):
        with pytest.raises(SystemExit) as exit:
            main(argv)
        assert exit.value.code == 0
        assert expected in capsys.readouterr().out
    assert main([]) == 0  # no command: the help
    assert "COMMAND" in capsys.readouterr().out


def test_every_option_shows_its_default():
    for parser in _parser():
        for action in parser._actions:
            if action.dest in ("help", "version", "command"):
                continue
            assert action.help is not None and "default" in action.help, action.dest
    text = _parser()[1].format_help()
    for shown in ("(default: fcn cnn)", "(default: 1000)", "(default: 3)", "(default: 0.003)"):
        assert shown in " ".join(text.split()), shown


def test_digits_count():
    sklearn = pytest.importorskip("sklearn.datasets")
    assert len(sklearn.load_digits().target) == DIGITS


def test_count():
    assert _count(1, "finite network") == "1 finite network"
    assert _count(3, "finite network") == "3 finite networks"
    results = {"n_train": 10, "n_test": 5, "accuracy": {}}
    assert "ensemble of 1 network" in _table(results, 1)
    assert "1 networks" not in _table(results, 1)
    assert "ensemble of 2 networks" in _table(results, 2)


@pytest.fixture
def a_file(tmp_path) -> pathlib.Path:
    path = tmp_path / "a-file"
    path.write_text("")
    return path


BAD_ARGUMENTS = [
    (["--n-train", "5000"], "--n-train/--n-test", "5000 + 500"),
    (["--n-train", "1500", "--n-test", "400"], "--n-train/--n-test", f"at most {DIGITS}"),
    (["--n-train", "0"], "--n-train", "at least 1, got 0"),
    (["--n-test", "-3"], "--n-test", "at least 1, got -3"),
    (["--n-train", "ten"], "--n-train", "'ten'"),
    (["--depth", "0"], "--depth", "at least 1"),
    (["--width", "0"], "--width", "at least 1"),
    (["--channels", "0"], "--channels", "at least 1"),
    (["--ensemble", "0"], "--ensemble", "at least 1"),
    (["--steps", "0"], "--steps", "at least 1"),
    (["--steps", "1.5"], "--steps", "'1.5'"),
    (["--batch-size", "0"], "--batch-size", "at least 1"),
    (["--learning-rate", "0"], "--learning-rate", "positive"),
    (["--learning-rate", "nan"], "--learning-rate", "positive"),
    (["--learning-rate", "fast"], "--learning-rate", "'fast'"),
    (["--seed", "-1"], "--seed", "at least 0"),
    (["--seed", str(2**32)], "--seed", "below 2**32"),
    (["--arch", "rnn"], "--arch", "'rnn'"),
    (["--arch", "fcn", "fcn"], "--arch", "at most once"),
    (["--out", "{file}/sub"], "--out", "Not a directory"),
    (["--out", "{file}"], "--out", "cannot write"),
]


@pytest.mark.parametrize("argv, argument, detail", BAD_ARGUMENTS)
def test_bad_argument_is_one_line(capsys, a_file, argv, argument, detail):
    argv = ["demo", *(arg.format(file=a_file) for arg in argv)]
    with pytest.raises(SystemExit) as exit:
        main(argv)
    assert exit.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith(f"eqntk demo: error: argument {argument}"), lines[0]
    assert detail in lines[0], lines[0]


def test_output_names_taken_by_folders(capsys, tmp_path):
    (tmp_path / "results.json").mkdir()
    with pytest.raises(SystemExit) as exit:
        main(["demo", "--out", str(tmp_path)])
    assert exit.value.code == 2
    assert "results.json" in capsys.readouterr().err


def test_bad_argument_through_the_script(a_file):
    # The installed entry point: status 2, one line, no traceback, nothing computed.
    result = _run(["demo", "--out", str(a_file / "sub")], timeout=60)
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stderr


# The CNN's training compiles for most of a minute: with `-m slow` (CI also runs the README's
# full `eqntk demo`, both architectures, before the tests).
@pytest.mark.parametrize("arch", ["fcn", pytest.param("cnn", marks=pytest.mark.slow)])
def test_demo_end_to_end(tmp_path, arch):
    pytest.importorskip("optax")
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    out = tmp_path / "new" / "folder"
    args = ["demo", "--arch", arch, "--n-train", "80", "--n-test", "60", "--depth", "1"]
    args += ["--width", "32", "--channels", "4", "--ensemble", "2", "--steps", "30"]
    args += ["--batch-size", "32"]
    result = _run(args + ["--out", str(out)], timeout=300)
    assert result.returncode == 0, result.stderr
    assert "Test accuracy on 60 digits (80 training images)" in result.stdout
    assert "ensemble of 2 networks" in result.stdout
    # Progress: every phase, and each network's training, as whole lines (CI logs).
    log = result.stderr
    assert "\r" not in log and "Traceback" not in log
    assert f"{arch}: NNGP and NTK between the 80 training images" in log
    assert f"{arch}: training 2 finite networks of" in log
    for network in (1, 2):
        assert f"{arch}: finite network {network}/2: step 30/30, minibatch loss" in log
    results = json.loads((out / "results.json").read_text())
    assert results["eqntk"] == importlib.metadata.version("eqntk")
    assert (results["n_train"], results["n_test"]) == (80, 60)
    assert results["settings"]["ensemble"] == 2 and results["settings"]["batch_size"] == 32
    accuracy = results["accuracy"][arch]
    values = [accuracy["nngp"], accuracy["ntk"], accuracy["finite"]]
    values += accuracy["finite_networks"]
    assert len(accuracy["finite_networks"]) == 2
    for value in values:
        # Fractions of 60 test images, rounded to 4 decimals: no float32 noise.
        assert isinstance(value, float) and 0 <= value <= 1
        assert value == round(value, 4)
        assert math.isclose(value * 60, round(value * 60), abs_tol=0.01)
    # 80 training digits: NNGP regression gets about 85% of the test digits (chance: 10%).
    assert accuracy["nngp"] > 0.6, accuracy
    assert (out / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
