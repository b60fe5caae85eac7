"""Comparison of a program's arrays with neural-tangents' stored numbers."""

import pathlib

import jax
import numpy as np


DATA = pathlib.Path(__file__).parent / "data"


def check_against_reference(name, result, rtol=1e-6, atol=1e-10, only=None):
    """Every array of `result` matches `data/<name>.npz` (float64, neural-tangents 0.6.5).

    rtol 1e-6 is the agreement expected of two float64 implementations of the same formulas
    (their rounding differs by a few ulps per operation, amplified by at most a solve); atol
    covers entries that are zero up to rounding.
    """
    reference = np.load(DATA / f"{name}.npz")
    assert set(result) == set(reference.files), (sorted(result), sorted(reference.files))
    for key in reference.files:
        if only is not None and key not in only:
            continue
        got = np.asarray(jax.device_get(result[key]))
        want = reference[key]
        assert got.shape == want.shape, (key, got.shape, want.shape)
        # neural-tangents 0.6.5 returns NaN in a few places where the kernel is finite (e.g.
        # `RectifiedMonomial`'s `cov1` when `x2` is given); eqntk must then be finite.
        nan = np.isnan(want)
        assert np.isfinite(got[nan]).all(), key
        got, want = np.where(nan, 0.0, got), np.where(nan, 0.0, want)
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, err_msg=f"{name}: {key}")
