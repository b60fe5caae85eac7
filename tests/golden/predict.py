"""The prediction operations of golden `predict` cases (`gp_inference`, `gd_mse`, ...).

Each function compares eqntk's `eqntk.dynamics` results with the stored outputs of one op and
registers itself in `tests.golden.PREDICT_OPS`.
"""
