"""`enable_compilation_cache`: keep compiled programs on disk, across processes."""

import os
from pathlib import Path


def _default_directory() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "eqntk" / "jax"


def enable_compilation_cache(
    directory: str | os.PathLike | None = None, *, min_compile_time_s: float = 0.1
) -> Path:
    """Turn on JAX's persistent compilation cache, so that a new process (a restarted notebook,
    the next run of a script) loads the programs it has compiled before instead of compiling
    them again.

    A kernel function ([`eqntk.limit`][]), an empirical kernel or a predictor of
    [`eqntk.dynamics`][] compiles one program per architecture, input shapes and options on
    its first call; for a CNN or an ODE solve that takes seconds, most of a first call. With
    the cache, the first call of a later process with the same program takes the time to trace
    it and read it back, a fraction of the compile (Myrtle-5 on 16x16 images: about 1 s of CPU
    instead of 5.5 s).

    Call it once, at the start of the program, before the first computation (programs
    compiled earlier are not written). It is the same as setting JAX's options
    `jax_compilation_cache_dir` and `jax_persistent_cache_min_compile_time_secs`, or
    `JAX_COMPILATION_CACHE_DIR=...` in the environment. Programs are keyed by their contents,
    the JAX and XLA versions and the device, so a stale entry is never used. The directory is
    trusted: do not share it with users you do not trust (a cached program is run as it is).

    **Arguments:**

    - `directory`: where to keep the programs; by default `~/.cache/eqntk/jax` (or under
      `$XDG_CACHE_HOME`). Created if missing.
    - `min_compile_time_s`: only programs that took at least this long to compile are kept
      (default 0.1 s): the many tiny programs of eager code cost more to write than to
      compile.

    **Returns:**

    The cache directory, as a `pathlib.Path`.

    **Example:**

    ```python
    import tempfile
    import jax
    import eqntk

    directory = eqntk.enable_compilation_cache(tempfile.mkdtemp())  # e.g. at a notebook's top
    assert jax.config.jax_compilation_cache_dir == str(directory)
    jax.config.update("jax_compilation_cache_dir", None)  # off again
    ```

    A program that contains a host callback (`jax.debug.print`, `eqx.error_if`, ...) is not
    kept (JAX's rule). eqntk's kernel programs have none: their input checks are read back
    after the call (inside a program of yours, traced, they become an `eqx.error_if` there).
    """
    import jax

    if isinstance(min_compile_time_s, bool) or not isinstance(min_compile_time_s, int | float):
        raise TypeError(
            f"`min_compile_time_s` must be a number of seconds, got {min_compile_time_s!r}."
        )
    if not min_compile_time_s >= 0:
        raise ValueError(
            f"`min_compile_time_s` must be non-negative (seconds), got {min_compile_time_s!r}."
        )
    path = Path(directory).expanduser() if directory is not None else _default_directory()
    if path.exists() and not path.is_dir():
        raise ValueError(f"`directory` must be a directory, got the file {str(path)!r}.")
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_time_s))
    return path
