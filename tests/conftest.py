import gc
import itertools
import os


# XLA's backend optimisations (LLVM) cost more than they save on the tests' small programs: a
# `jax.random.normal` of a new shape took 1.3 s to compile with them and 0.2 s without, and the
# suite's CPU time fell by a quarter. The programs compute the same operations, so results agree
# to rounding. Set before JAX reads its configuration, and inherited by the tests' subprocesses.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

import equinox as eqx  # noqa: E402
import jax  # noqa: E402
import jax.random as jr  # noqa: E402
import pytest  # noqa: E402


jax.config.update("jax_disable_most_optimizations", True)  # in case JAX was imported already
jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drop every compiled program after each test module.

    A test worker compiles tens of thousands of programs over the suite; each loaded executable
    holds a few memory mappings, and a worker that reached Linux's limit of 65530 mappings
    crashed inside XLA's compiler (a segfault, after about 12 minutes and 14 GiB). Modules
    rarely share programs, so starting each from empty caches costs little.
    """
    yield
    eqx.clear_caches()
    jax.clear_caches()
    gc.collect()


@pytest.fixture
def getkey():
    """A function that returns a fresh PRNG key at each call (seeded, so tests are repeatable)."""
    counter = itertools.count()
    base = jr.key(5678)
    return lambda: jr.fold_in(base, next(counter))
