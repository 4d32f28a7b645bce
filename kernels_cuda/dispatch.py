"""The one way in: `available()` says whether the kernels can run here, `kernel(op)` returns a launcher.

Importing this module does not import numba; a kernel module loads on its first `kernel(op)`.
Launchers take CUDA (or, in numba's simulator, CPU) tensors in f16/f32; callers decide when to
use them (the model's backend chooses once at load, the sampler per batch).
"""

from __future__ import annotations

import functools
import importlib
import os
from collections.abc import Callable
from typing import Any

import torch

# op name -> module of kernels_cuda holding its launcher (same name; its torch twin is in reference.py)
KERNEL_MODULES: dict[str, str] = {
    "rmsnorm_residual": "rmsnorm",
    "rope": "rope",
    "silu_mul": "activation",
    "decode_attention": "attention",
    "prefill_attention": "attention_prefill",
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
    """The numba launcher for `op` (imports numba); ValueError for an unknown op."""
    if op not in KERNEL_MODULES:
        raise ValueError(f"unknown kernel op {op!r}; known: {', '.join(KERNEL_MODULES)}")
    return getattr(importlib.import_module(f"{__package__}.{KERNEL_MODULES[op]}"), op)
