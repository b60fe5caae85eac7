"""Regenerate tests/compat/data/*.npz with neural-tangents 0.6.5 (the reference environment).

    EQNTK_COMPAT_REFERENCE=1 /work/ntref/bin/python -m tests.compat.make_reference

(run from the repository root). Every program of `programs.py` and `api.py` runs in float64
and its arrays are stored in `data/<program>.npz`.
"""

import os
import pathlib
import sys

import jax


def main(names=()):
    os.environ.setdefault("EQNTK_COMPAT_REFERENCE", "1")
    jax.config.update("jax_enable_x64", True)
    from . import api, programs

    out_dir = pathlib.Path(__file__).parent / "data"
    out_dir.mkdir(exist_ok=True)
    everything = {**programs.PROGRAMS, **api.PROGRAMS}
    for name, program in everything.items():
        if names and name not in names:
            continue
        result = {k: jax.device_get(v) for k, v in program().items()}
        import numpy as np

        np.savez(out_dir / f"{name}.npz", **result)
        print(name, {k: getattr(v, "shape", ()) for k, v in result.items()})


if __name__ == "__main__":
    main(tuple(sys.argv[1:]))
