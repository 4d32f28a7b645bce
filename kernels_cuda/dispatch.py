"""The dispatch table: op name -> numba.cuda launcher on CUDA tensors, torch reference otherwise.

Importing this module does not import numba; kernels load on first use on a CUDA device.
"""

from __future__ import annotations

import functools
import importlib
import os
from collections.abc import Callable
from typing import Any

import torch

from . import reference

# op name -> module of kernels_cuda holding its launcher (same name, same signature)
KERNEL_MODULES: dict[str, str] = {
    "rmsnorm_residual": "rmsnorm",
    "rope": "rope",
    "silu_mul": "activation",
    "decode_attention": "attention",
    "prefill_attention": "attention_prefill",
    "dequant": "dequant",
    "q_matvec": "dequant",
    "lora_delta": "lora",
    "sample_filter": "sampling",
}
DISABLE_ENV = "MISTRALRS_NO_CUDA_KERNELS"


@functools.cache
def _device_ok() -> bool:
    """A real CUDA device that both torch and numba.cuda can use (never the simulator)."""
    if not torch.cuda.is_available():
        return False
    try:
        import numba
        from numba import cuda
    except ImportError:
        return False
    if getattr(numba.config, "ENABLE_CUDASIM", 0):
        return False
    try:
        return bool(cuda.is_available())
    except (OSError, RuntimeError):  # a driver numba cannot load
        return False


def available() -> bool:
    """True only with a real CUDA device, numba.cuda usable, and MISTRALRS_NO_CUDA_KERNELS != 1."""
    return os.environ.get(DISABLE_ENV) != "1" and _device_ok()


@functools.cache
def kernel(op: str) -> Callable[..., Any]:
    """The numba launcher for `op` (imports numba)."""
    return getattr(importlib.import_module(f"{__package__}.{_module(op)}"), op)


def _module(op: str) -> str:
    if op not in KERNEL_MODULES:
        raise ValueError(f"unknown kernel op {op!r}; known: {', '.join(KERNEL_MODULES)}")
    return KERNEL_MODULES[op]


def uses_kernel(*args: Any) -> bool:
    """Whether a call with these arguments would run the numba kernel."""
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    return (
        bool(tensors)
        and all(t.is_cuda for t in tensors)
        # bf16 and f64 stay on the torch path: kernels take f16/f32 only.
        and all(t.dtype in (torch.float16, torch.float32) for t in tensors if t.is_floating_point())
        and available()
    )


def _dispatcher(op: str) -> Callable[..., Any]:
    ref = getattr(reference, op)

    def run(*args: Any, **kwargs: Any) -> Any:
        if uses_kernel(*args, *kwargs.values()):
            return kernel(op)(*args, **kwargs)
        return ref(*args, **kwargs)

    run.__name__ = run.__qualname__ = op
    run.__doc__ = ref.__doc__
    return run


OPS: dict[str, Callable[..., Any]] = {op: _dispatcher(op) for op in KERNEL_MODULES}


def get(op: str) -> Callable[..., Any]:
    """The dispatching function for `op`: same signature as its reference in reference.py."""
    _module(op)
    return OPS[op]
