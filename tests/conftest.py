import gc
import itertools
import os


# The tests compile thousands of small programs, and compiling is most of the suite's time, so
# by default they use XLA:CPU's cheaper compile settings: no LLVM backend optimisations (a
# `jax.random.normal` of a new shape took 1.3 s to compile with them and 0.2 s without) and
# XLA's elemental code emitter in place of its fusion emitters (40% less CPU on the golden
# cases). Both compile the same operations, so results agree to rounding. Set before JAX reads
# its configuration, and inherited by the tests' subprocesses. `EQNTK_TEST_XLA_DEFAULTS=1`
# runs the tests with JAX's defaults, as users run eqntk (CI does so for the numerics probes).
XLA_DEFAULTS = os.environ.get("EQNTK_TEST_XLA_DEFAULTS") == "1"
if not XLA_DEFAULTS:
    os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_cpu_use_fusion_emitters" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_cpu_use_fusion_emitters=false".strip()

import equinox as eqx  # noqa: E402
import jax  # noqa: E402
import jax.random as jr  # noqa: E402
import pytest  # noqa: E402


if not XLA_DEFAULTS:
    jax.config.update("jax_disable_most_optimizations", True)  # if JAX was imported already
jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")


def _memory_mappings() -> int:
    try:
        with open("/proc/self/maps") as maps:
            return sum(1 for _ in maps)
    except OSError:  # not Linux: no such limit to watch
        return 0


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drop every compiled program after a test module once the worker holds many.

    A test worker compiles tens of thousands of programs over the suite, and each loaded
    executable holds a few memory mappings: workers passed 18 000 mappings in four minutes and
    crashed inside XLA's compiler (a segfault) after about twelve, on the way to Linux's limit
    of 65 530 (`vm.max_map_count`). Clearing only past a threshold keeps the programs that
    neighbouring modules share.
    """
    yield
    if _memory_mappings() > 20_000:
        eqx.clear_caches()
        jax.clear_caches()
        gc.collect()


@pytest.fixture
def getkey():
    """A function that returns a fresh PRNG key at each call (seeded, so tests are repeatable)."""
    counter = itertools.count()
    base = jr.key(5678)
    return lambda: jr.fold_in(base, next(counter))
