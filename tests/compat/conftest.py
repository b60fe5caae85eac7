import jax
import pytest


@pytest.fixture(autouse=True)
def _neural_tangents_random_bits():
    """neural-tangents 0.6.5 ran on jax 0.4.23, whose `jax.random` drew its bits without
    `jax_threefry_partitionable`; the reference numbers of randomly initialised networks need
    the same bits."""
    before = jax.config.jax_threefry_partitionable
    promotion = jax.config.jax_numpy_rank_promotion
    jax.config.update("jax_threefry_partitionable", False)
    # neural-tangents' programs broadcast ranks implicitly (`jnp.dot(x, W) + b`).
    jax.config.update("jax_numpy_rank_promotion", "allow")
    yield
    jax.config.update("jax_threefry_partitionable", before)
    jax.config.update("jax_numpy_rank_promotion", promotion)
