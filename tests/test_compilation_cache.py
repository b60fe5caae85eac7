"""`eqntk.enable_compilation_cache`, and kernel programs that JAX's persistent cache can keep."""

import os
import subprocess
import sys
import textwrap

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
import pytest

import eqntk
from eqntk import nn
from eqntk.limits._limit import _compiled_kernel


def _model():
    return nn.Sequential([nn.Conv(2, 4, (3,), padding="SAME", key=jr.key(0)), nn.Relu()])


def test_kernel_program_has_no_host_callback():
    # JAX never writes a program with a host callback (an `eqx.error_if`) to its persistent
    # cache: the kernel program must have none, or the cache silently does nothing for it.
    x = jnp.ones((2, 2, 5))
    lowered = _compiled_kernel.lower(
        eqntk.limit(_model()),
        x,
        x + 1,
        ("nngp", "ntk"),
        diagonal_spatial=False,
        mask1=None,
        mask2=None,
        pattern1=None,
        pattern2=None,
    )
    assert "callback" not in lowered.as_text()
    # Traced inside the caller's program, the input check is an `eqx.error_if` there: the
    # check is kept, in a program that is the caller's.
    outer = eqx.filter_jit(eqntk.limit(_model())).lower(x, x + 1, "nngp")
    assert "callback" in outer.as_text()


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(min_compile_time_s=-1.0), ValueError, "min_compile_time_s"),
        (dict(min_compile_time_s=float("nan")), ValueError, "min_compile_time_s"),
        (dict(min_compile_time_s=True), TypeError, "min_compile_time_s"),
        (dict(min_compile_time_s="1"), TypeError, "min_compile_time_s"),
    ],
)
def test_bad_arguments_are_errors(tmp_path, kwargs, error, match):
    with pytest.raises(error, match=match):
        eqntk.enable_compilation_cache(tmp_path, **kwargs)


def test_a_file_is_not_a_directory(tmp_path):
    path = tmp_path / "file"
    path.write_text("")
    with pytest.raises(ValueError, match="`directory` must be a directory"):
        eqntk.enable_compilation_cache(path)


_SCRIPT = textwrap.dedent(
    """
    import sys
    import jax.numpy as jnp
    import jax.random as jr
    from jax._src import monitoring
    import eqntk
    from eqntk import nn

    hits = []
    monitoring.register_event_listener(
        lambda event, **kwargs: hits.append(event) if event.endswith("cache_hits") else None
    )
    eqntk.enable_compilation_cache(sys.argv[1], min_compile_time_s=0.0)
    model = nn.Sequential([nn.Conv(2, 4, (3,), padding="SAME", key=jr.key(0)), nn.Relu()])
    eqntk.limit(model)(jnp.ones((2, 2, 5)), None, "ntk").block_until_ready()
    print("HITS", len(hits))
    """
)


@pytest.mark.slow
def test_second_process_reads_the_kernel_program_back(tmp_path):
    # Two fresh processes: the first compiles and writes the kernel program, the second finds
    # it (a cache hit) instead of compiling it.
    env = dict(os.environ, JAX_ENABLE_X64="0")
    runs = [
        subprocess.run(
            [sys.executable, "-c", _SCRIPT, str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
        )
        for _ in range(2)
    ]
    for run in runs:
        assert run.returncode == 0, run.stderr
    hits = [int(run.stdout.split("HITS")[-1]) for run in runs]
    assert any(p.name.startswith("jit__compiled_kernel") for p in tmp_path.iterdir())
    assert hits[1] > hits[0]
