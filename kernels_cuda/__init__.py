"""numba.cuda kernels for mistralrs, each beside a torch reference; pick them via `dispatch`.

Importing the package is cheap (no numba): `kernels_cuda.dispatch.get(op)` returns a function
that runs the numba kernel on CUDA tensors and the torch reference otherwise.
"""

from .dispatch import OPS, available, get

__all__ = ["OPS", "available", "get"]
