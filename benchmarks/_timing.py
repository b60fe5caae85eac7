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
    median, the compile and trace overhead), `cpu_first` and `cpu_median` (process CPU time of
    the first call and per further call), the individual `runs`, in seconds, and `work_mib`:
    the peak resident memory during the measurement above the resident memory just before it
    (a memory window started here, so every measurement of both libraries counts from the same
    point: inputs and model built, library imported, backend initialised).
    """
    import jax

    start_memory_window()
    start, start_cpu = time.perf_counter(), time.process_time()
    jax.block_until_ready(fn(*args, **kwargs))
    first = time.perf_counter() - start
    cpu_first = time.process_time() - start_cpu
    runs, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        jax.block_until_ready(fn(*args, **kwargs))
        runs.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    median = statistics.median(runs) if runs else first
    baseline, peak = window_peak_mib()
    return {
        "first_call": first,
        "median": median,
        "compile": max(first - median, 0.0),
        "cpu_first": cpu_first,
        # CPU time of all threads: steadier than wall time when other processes share the
        # cores, though it counts the work rather than the wait.
        "cpu_median": statistics.median(cpu) if cpu else cpu_first,
        "runs": runs,
        "work_mib": peak - baseline,
    }


def first_call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> dict:
    """Time only the first call of `fn` (trace + compile + one run), for compile-time cases."""
    return measure(fn, *args, repeats=0, **kwargs)


_window_start_mib = 0.0


def _status_mib(field: str) -> float | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


def start_memory_window() -> float:
    """Start measuring peak memory from now: the peak of the window is reset to the current
    resident memory (Linux's `/proc/self/clear_refs`), which becomes the baseline. A case calls
    it after building what the measured computation takes as given (inputs, a model), on both
    sides alike. Returns the baseline in MiB."""
    global _window_start_mib
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")  # reset the peak resident memory to the current one
        _window_start_mib = _status_mib("VmRSS") or peak_rss_mib()
    except OSError:  # not Linux: the window is the whole process
        _window_start_mib = peak_rss_mib()
    return _window_start_mib


def window_peak_mib() -> tuple[float, float]:
    """(baseline, peak) of the current memory window, in MiB."""
    return _window_start_mib, _status_mib("VmHWM") or peak_rss_mib()


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
