"""Large kernels computed tile by tile, spread over every device: [`eqntk.batch`][]."""

from ._batch import AXIS as AXIS, BatchedKernelFn as BatchedKernelFn, batch as batch
