"""Speed and memory benchmarks of eqntk, side by side with neural-tangents 0.6.5.

Run `python -m benchmarks --help`; see `benchmarks/README.md`. Each topic module (`fcn`, `cnn`,
`activations`, `depth`, `empirical`, `dynamics`, `batch`) defines `CASES`: for every case one
function that times eqntk and one that times neural-tangents. Each side runs in its own
subprocess (its own interpreter for neural-tangents), so the two JAX versions never meet and
peak memory is measured per side.

This package imports only the standard library at the top level: the same modules are imported
by the reference interpreter, which has neural-tangents and an old JAX but no eqntk.
"""
