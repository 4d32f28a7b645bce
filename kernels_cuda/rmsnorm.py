"""RMSNorm fused with the residual add: one block per token row, one read of x and residual."""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
import torch
from numba import cuda, float32

from . import _common
from ._common import block_sum, check_float, check_shape, next_pow2


@functools.cache
def _kernel(nt: int, has_residual: bool) -> Any:
    """Kernel for blocks of `nt` threads (a power of two)."""

    @cuda.jit
    def rmsnorm_residual_kernel(x, residual, weight, eps, out, res_out):
        row = cuda.blockIdx.x
        tid = cuda.threadIdx.x
        hidden = x.shape[1]
        buf = cuda.shared.array(nt, float32)
        sq = float32(0.0)
        for i in range(tid, hidden, nt):
            h = float32(x[row, i])
            if has_residual:
                h += float32(residual[row, i])
                res_out[row, i] = h
                # NOTE: re-read the stored value so the norm sees the residual stream's
                # rounding (f16), exactly like an unfused add followed by a norm.
                h = float32(res_out[row, i])
            sq += h * h
        total = block_sum(buf, sq, tid, nt)
        inv = float32(1.0) / math.sqrt(total / float32(hidden) + float32(eps))
        for i in range(tid, hidden, nt):
            h = float32(res_out[row, i]) if has_residual else float32(x[row, i])
            out[row, i] = h * inv * float32(weight[i])

    return rmsnorm_residual_kernel


@torch.inference_mode()
def rmsnorm_residual(
    x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor]:
    """h = x + residual (rounded to x.dtype); return (rmsnorm(h) * weight, h)."""
    check_float("x", x)
    check_float("weight", weight)
    check_shape("weight", weight, (x.shape[-1],))
    x2 = x.reshape(-1, x.shape[-1]).contiguous()  # (T, hidden)
    has_res = residual is not None
    if has_res:
        check_float("residual", residual)
        check_shape("residual", residual, tuple(x.shape))
        res2 = residual.reshape(x2.shape).contiguous()
        res_out = torch.empty_like(x2)
    else:
        res2 = res_out = x2  # unused by the kernel
    out = torch.empty_like(x2)
    if x2.shape[0]:
        # Enough threads for 4+ elements each, capped at 1024; at least one warp.
        nt = min(1024, max(32, next_pow2(x2.shape[1] // 4)))
        _common.launch(
            _kernel(nt, has_res), x2.shape[0], nt, x2, res2, weight, np.float32(eps), out, res_out
        )
    return out.reshape(x.shape), res_out.reshape(x.shape) if has_res else x
