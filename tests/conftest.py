import itertools

import jax
import jax.random as jr
import pytest


jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")


@pytest.fixture
def getkey():
    """A function that returns a fresh PRNG key at each call (seeded, so tests are repeatable)."""
    counter = itertools.count()
    base = jr.key(5678)
    return lambda: jr.fold_in(base, next(counter))
