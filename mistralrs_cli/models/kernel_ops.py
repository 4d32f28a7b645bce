"""The model's bridge to kernels_cuda: a layer's hot ops as calls of our numba.cuda kernels.

Pure functions over tensors; the modules that call them (models/cuda_modules.py, LoRA's
CudaLoraLinear) are swapped in once by models/backend.py when `wants_kernels(device)`.
Callers check `takes(...)` first and fall back to their torch parent for other inputs (bf16).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from kernels_cuda.dispatch import available, kernel

KERNEL_DTYPES = (torch.float16, torch.float32)
RopeTables = Callable[[int, torch.device], tuple[torch.Tensor, torch.Tensor]]  # (needed, device) -> f32 cos, sin


def wants_kernels(device: torch.device) -> bool:
    """Whether a model on `device` should run its hot ops through kernels_cuda
    (MISTRALRS_NO_CUDA_KERNELS=1 forces the torch path)."""
    return device.type == "cuda" and available()


def takes(*tensors: torch.Tensor) -> bool:
    """Kernels take f16/f32 only."""
    return all(t.dtype in KERNEL_DTYPES for t in tensors)


def rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm of x (..., hidden) through the rmsnorm_residual kernel (no residual)."""
    out, _ = kernel("rmsnorm_residual")(x.reshape(-1, x.shape[-1]), None, weight.to(x.dtype), eps)
    return out.view(x.shape)


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up."""
    return kernel("silu_mul")(gate, up)


def rope(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, tables: RopeTables) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate q (B, Q, n_heads, hd) and k (B, Q, n_kv, hd) in HF rotate-half layout.

    `tables(needed, device)` gives f32 cos/sin (>= needed, hd // 2): the model's rope cache.
    """
    bsz, qlen = q.shape[:2]
    flat_pos = positions.reshape(-1).clamp(min=0)
    cos, sin = tables(int(flat_pos.max()) + 1, q.device)
    q2 = q.reshape(bsz * qlen, *q.shape[2:]).contiguous()  # (T, n_heads, hd)
    k2 = k.reshape(bsz * qlen, *k.shape[2:]).contiguous()
    q2, k2 = kernel("rope")(q2, k2, flat_pos, cos, sin, False)
    return q2.view(q.shape), k2.view(k.shape)


def attention(q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor, ctx_slots: torch.Tensor,
              q_pos: torch.Tensor, k_pos: torch.Tensor, window: int | None) -> torch.Tensor | None:
    """Paged attention for a decode batch (Q = 1) or one prefill chunk (B = 1); None = use torch.

    q (B, Q, n_heads, hd); returns (B, Q, n_heads, hd).
    """
    bsz, qlen = q.shape[:2]
    if not takes(q, k_pool):
        return None
    if qlen == 1:
        lens = torch.full((bsz,), ctx_slots.shape[1], dtype=torch.int64, device=q.device)
        out = kernel("decode_attention")(q[:, 0], k_pool, v_pool, ctx_slots, lens, q_pos[:, 0], k_pos, window)
        return out.unsqueeze(1)
    if bsz == 1:
        slots = ctx_slots[0]
        out = kernel("prefill_attention")(q[0], k_pool.index_select(0, slots).to(q.dtype),
                                          v_pool.index_select(0, slots).to(q.dtype), q_pos[0], k_pos[0], window)
        return out.unsqueeze(0)
    return None


def lora_delta(y: torch.Tensor, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
               mix: torch.Tensor | float | None, n_adapters: int) -> torch.Tensor:
    """y (..., out) plus the LoRA delta through the lora_delta kernel (one launch).

    a (n, r, in) and b (n, out, r) are the stacked adapters with alpha/r folded in; `mix` is
    the per-token weights (..., n) or (n,), one weight for all, or None (every adapter at 1).
    """
    lead, n_out = y.shape[:-1], y.shape[-1]
    rows = lead.numel()
    if isinstance(mix, torch.Tensor):
        scalings = mix.to(x.dtype).expand(*lead, n_adapters).reshape(rows, n_adapters)
    else:
        scalings = torch.full((rows, n_adapters), 1.0 if mix is None else float(mix), dtype=x.dtype, device=x.device)
    y2 = y.reshape(rows, n_out).contiguous()  # updated in place by the kernel
    kernel("lora_delta")(y2, x.reshape(rows, -1), a, b, scalings)
    return y2.view(y.shape)
