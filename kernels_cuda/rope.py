"""Rotary position embedding applied in place to q and k: HF rotate-half or GGUF interleaved pairs."""

from __future__ import annotations

import functools
from typing import Any

import torch
from numba import cuda, float32

from . import _common
from ._common import KernelInputError, check_float, check_shape, next_pow2
from .reference import rope_tables

__all__ = ["rope", "rope_tables"]


@cuda.jit(device=True)
def _rotate(x, t, head, i, half, c, s, interleaved):
    """Rotate the pair i of x[t, head] by the angle whose cos/sin are c/s."""
    if interleaved:
        i1 = 2 * i
        i2 = i1 + 1
    else:
        i1 = i
        i2 = i + half
    a = float32(x[t, head, i1])
    b = float32(x[t, head, i2])
    x[t, head, i1] = a * c - b * s
    x[t, head, i2] = b * c + a * s


@functools.cache
def _kernel(interleaved: bool) -> Any:
    """Kernel for one pair layout; one block per token, threads over (head, pair)."""

    @cuda.jit
    def rope_kernel(q, k, positions, cos, sin):
        t = cuda.blockIdx.x
        pos = positions[t]
        half = cos.shape[1]
        nq = q.shape[1] * half
        total = nq + k.shape[1] * half
        for p in range(cuda.threadIdx.x, total, cuda.blockDim.x):
            if p < nq:
                head = p // half
                i = p - head * half
                _rotate(q, t, head, i, half, cos[pos, i], sin[pos, i], interleaved)
            else:
                head = (p - nq) // half
                i = p - nq - head * half
                _rotate(k, t, head, i, half, cos[pos, i], sin[pos, i], interleaved)

    return rope_kernel


@torch.inference_mode()
def rope(
    q: torch.Tensor,
    k: torch.Tensor,
    positions: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    interleaved: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate q (T, n_heads, hd) and k (T, n_kv, hd) in place; pairs are (i, i + hd/2) or (2i, 2i+1)."""
    check_float("q", q)
    check_float("k", k)
    n_tok, _, hd = q.shape
    half = hd // 2
    check_shape("k", k, (n_tok, None, hd))
    check_shape("positions", positions, (n_tok,))
    check_shape("cos", cos, (None, half))
    check_shape("sin", sin, tuple(cos.shape))
    if hd % 2 or cos.dtype != torch.float32 or sin.dtype != torch.float32:
        raise KernelInputError("rope needs an even head_dim and f32 cos/sin tables")
    if n_tok == 0:
        return q, k
    # In-place needs contiguous storage; strided inputs go through a copy written back below.
    qc, kc = q.contiguous(), k.contiguous()
    pairs = (q.shape[1] + k.shape[1]) * half
    nt = min(256, max(32, next_pow2(pairs)))
    pos = positions.to(torch.int64).contiguous()
    _common.launch(
        _kernel(bool(interleaved)), n_tok, nt, qc, kc, pos, cos.contiguous(), sin.contiguous()
    )
    if qc.data_ptr() != q.data_ptr():
        q.copy_(qc)
    if kc.data_ptr() != k.data_ptr():
        k.copy_(kc)
    return q, k
