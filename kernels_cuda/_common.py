"""Shared plumbing for the numba.cuda kernels: torch interop, launching, block reductions."""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numba
import torch
from numba import cuda

KERNEL_DTYPES = (torch.float16, torch.float32)
VIEW_CACHE_SIZE = 512

# Small grids are normal here (decode at batch 1); numba's occupancy warning would fire on
# nearly every launch.
numba.config.CUDA_LOW_OCCUPANCY_WARNINGS = 0


class KernelInputError(ValueError):
    """A launcher was given tensors it cannot run on (shape, dtype or device)."""


def is_simulator() -> bool:
    """True when numba runs kernels in its CUDA simulator instead of on a GPU."""
    return bool(getattr(numba.config, "ENABLE_CUDASIM", 0)) or (
        os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
    )


def next_pow2(n: int) -> int:
    """Smallest power of two >= n (1 for n <= 1)."""
    return 1 << max(0, int(n) - 1).bit_length()


def check_float(name: str, t: torch.Tensor) -> None:
    """Refuse anything but f16/f32: bf16 does not cross `__cuda_array_interface__` reliably."""
    if t.dtype not in KERNEL_DTYPES:
        raise KernelInputError(
            f"{name} is {t.dtype}; kernels take float16 or float32 (convert bf16 explicitly)"
        )


def check_shape(name: str, t: torch.Tensor, shape: Sequence[int | None]) -> None:
    """Check t's shape against `shape`, where None matches any size."""
    ok = t.dim() == len(shape) and all(
        s is None or s == d for s, d in zip(shape, t.shape, strict=False)
    )
    if not ok:
        raise KernelInputError(f"{name} has shape {tuple(t.shape)}, expected {tuple(shape)}")


_streams: dict[int, Any] = {}
_views: OrderedDict[tuple[Any, ...], Any] = OrderedDict()


def as_array(t: torch.Tensor) -> Any:
    """Zero-copy view of a torch tensor for a kernel argument."""
    t = t.detach()
    if is_simulator():
        # The simulator runs kernels on numpy arrays: CPU tensors only.
        if t.device.type != "cpu":
            raise KernelInputError("the CUDA simulator takes CPU tensors")
        return t.numpy()
    if t.device.type != "cuda":
        raise KernelInputError(f"numba.cuda kernels take CUDA tensors, got {t.device}")
    # NOTE: a view holds only (pointer, shape, strides, dtype) and no reference to the tensor,
    # so two tensors with equal keys are interchangeable: caching skips numba's costly
    # interface parsing for long-lived buffers (weights, KV pool) without keeping them alive.
    key = (t.data_ptr(), t.shape, t.stride(), t.dtype, t.device.index)
    view = _views.get(key)
    if view is None:
        view = cuda.from_cuda_array_interface(t.__cuda_array_interface__, owner=None, sync=False)
        _views[key] = view
        if len(_views) > VIEW_CACHE_SIZE:
            _views.popitem(last=False)
    return view


def _torch_stream() -> Any:
    """numba handle for torch's current stream, so kernels order with torch's own ops."""
    handle = torch.cuda.current_stream().cuda_stream
    stream = _streams.get(handle)
    if stream is None:
        stream = _streams[handle] = cuda.external_stream(handle)
    return stream


def launch(kernel: Any, grid: int | tuple[int, ...], block: int, *args: Any) -> None:
    """Launch `kernel` with torch tensors converted to device arrays, on torch's stream."""
    arrays = [as_array(a) if isinstance(a, torch.Tensor) else a for a in args]
    if is_simulator():
        kernel[grid, block](*arrays)
        return
    kernel[grid, block, _torch_stream()](*arrays)


def sm_count() -> int:
    """Number of multiprocessors of the current device (1 in the simulator)."""
    if is_simulator():
        return 1
    return int(cuda.get_current_device().MULTIPROCESSOR_COUNT)


# A block-wide reduction through shared memory (the simulator has no warp shuffles).
# `nt` is the block size and must be a power of two; every thread must call it.


@cuda.jit(device=True)
def block_sum(buf, val, tid, nt):
    """Sum `val` over the block; every thread gets the total."""
    buf[tid] = val
    cuda.syncthreads()
    s = nt // 2
    while s > 0:
        if tid < s:
            buf[tid] += buf[tid + s]
        cuda.syncthreads()
        s //= 2
    total = buf[0]
    cuda.syncthreads()  # NOTE: buf may be reused right after; all must have read it
    return total


# NOTE: numba's CUDA target fails to compile the builtin min/max (a vararg overload), so
# kernels use these two-argument device functions instead.


@cuda.jit(device=True)
def smin(a, b):
    """min of two scalars inside a kernel."""
    return a if a < b else b


@cuda.jit(device=True)
def smax(a, b):
    """max of two scalars inside a kernel."""
    return a if a > b else b
