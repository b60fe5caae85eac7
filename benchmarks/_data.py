"""Inputs shared by both sides: the same seeded numpy arrays, channel-first for eqntk."""

import numpy as np


def normal(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Seeded standard-normal float32 inputs, `(N, C, *spatial)` (eqntk's layout)."""
    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)


def channel_last(x: np.ndarray) -> np.ndarray:
    """The same inputs as neural-tangents expects them, `(N, *spatial, C)`."""
    return np.ascontiguousarray(np.moveaxis(x, 1, -1))
