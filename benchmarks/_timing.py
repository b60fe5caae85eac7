"""Timing and memory measurement, shared by both sides (any JAX version, imported lazily)."""

import resource
import statistics
import time
from collections.abc import Callable
from typing import Any


def measure(fn: Callable[..., Any], *args: Any, repeats: int = 5, **kwargs: Any) -> dict:
    """Time `fn(*args, **kwargs)`: its first call (compile + run) and the median of `repeats`.

    Every call ends with `jax.block_until_ready`, so asynchronous dispatch is not mistaken for
    speed. Returns a JSON-able dict with `first_call`, `median`, `compile` (first call minus the
    median, the compile and trace overhead), `cpu_median` (process CPU time per call) and the
    individual `runs`, in seconds.
    """
    import jax

    start = time.perf_counter()
    jax.block_until_ready(fn(*args, **kwargs))
    first = time.perf_counter() - start
    runs, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        jax.block_until_ready(fn(*args, **kwargs))
        runs.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    median = statistics.median(runs) if runs else first
    return {
        "first_call": first,
        "median": median,
        "compile": max(first - median, 0.0),
        # CPU time of all threads: steadier than wall time when other processes share the
        # cores, though it counts the work rather than the wait.
        "cpu_median": statistics.median(cpu) if cpu else None,
        "runs": runs,
    }


def first_call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> dict:
    """Time only the first call of `fn` (trace + compile + one run), for compile-time cases."""
    return measure(fn, *args, repeats=0, **kwargs)


def peak_rss_mib() -> float:
    """The peak resident memory of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def warm_up_backend() -> None:
    """Initialise the JAX backend, so that no case pays the one-time start-up in its timings."""
    import jax
    import jax.numpy as jnp

    jax.block_until_ready(jax.jit(lambda x: x + 1)(jnp.ones(3)))


def optional(thunk: Callable[[], dict]) -> dict:
    """Run `thunk()`, a measurement of a feature that may not exist yet in eqntk.

    Returns its measurement, or `{"not_available": reason}` when the feature is missing
    (ImportError, AttributeError or NotImplementedError), so the rest of the case still runs.
    """
    try:
        return thunk()
    except (ImportError, AttributeError, NotImplementedError) as error:
        return {"not_available": f"{type(error).__name__}: {error}"}
