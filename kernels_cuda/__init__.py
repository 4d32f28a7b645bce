"""numba.cuda kernels for mistralrs, each beside a torch twin in `reference.py`.

Importing the package is cheap (no numba). `kernels_cuda.dispatch.available()` says whether the
kernels can run on this machine and `kernels_cuda.dispatch.kernel(op)` returns an op's launcher.
"""

from .dispatch import available, kernel

__all__ = ["available", "kernel"]
