"""GGUF block dequantization (Q4_0, Q4_1, Q8_0, Q4_K, Q6_K) and a fused dequantize-matvec.

Kernels read the raw bytes twice over: as uint8 for the quants and as a float16 view of
the same buffer for the block scales (every block's size and scale offsets are even), so no
byte shuffling is needed to decode an f16. Arithmetic order follows `gguf.quants`.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from numba import cuda, float32, int32

from . import _common
from ._common import KernelInputError, block_sum, check_float, next_pow2
from .reference_gguf import GGUF_BLOCKS, qtype_name

__all__ = ["dequant", "q_matvec"]

BLOCK = 256


# Value j (0 <= j < values per block) of block `blk`: raw is the uint8 view, raw16 the f16 view.


@cuda.jit(device=True)
def _q4_0(raw, raw16, blk, j):
    q = (int32(raw[blk * 18 + 2 + (j & 15)]) >> (4 * (j >> 4))) & 15
    return float32(raw16[blk * 9]) * float32(q - 8)


@cuda.jit(device=True)
def _q4_1(raw, raw16, blk, j):
    q = (int32(raw[blk * 20 + 4 + (j & 15)]) >> (4 * (j >> 4))) & 15
    return float32(raw16[blk * 10]) * float32(q) + float32(raw16[blk * 10 + 1])


@cuda.jit(device=True)
def _q8_0(raw, raw16, blk, j):
    q = int32(raw[blk * 34 + 2 + j])
    if q >= 128:  # stored as int8
        q -= 256
    return float32(raw16[blk * 17]) * float32(q)


@cuda.jit(device=True)
def _q4_k(raw, raw16, blk, j):
    base = blk * 144
    sub = j >> 5  # 8 sub-blocks of 32, each with a 6-bit scale and min
    s = base + 4  # 12 bytes of packed scales/mins
    if sub < 4:
        sc = int32(raw[s + sub]) & 63
        mn = int32(raw[s + sub + 4]) & 63
    else:
        sc = (int32(raw[s + sub + 4]) & 15) | ((int32(raw[s + sub - 4]) >> 6) << 4)
        mn = (int32(raw[s + sub + 4]) >> 4) | ((int32(raw[s + sub]) >> 6) << 4)
    q = (int32(raw[base + 16 + (sub >> 1) * 32 + (j & 31)]) >> (4 * (sub & 1))) & 15
    d = float32(raw16[blk * 72]) * float32(sc)
    m = float32(raw16[blk * 72 + 1]) * float32(mn)
    return d * float32(q) - m


@cuda.jit(device=True)
def _q6_k(raw, raw16, blk, j):
    base = blk * 210
    half = j >> 7  # two halves of 128 values; within one, 4 rows of 32
    sub = (j & 127) >> 5
    lane = j & 31
    lo = (int32(raw[base + half * 64 + (sub & 1) * 32 + lane]) >> (4 * (sub >> 1))) & 15
    hi = (int32(raw[base + 128 + half * 32 + lane]) >> (2 * sub)) & 3
    sc = int32(raw[base + 192 + (j >> 4)])
    if sc >= 128:  # stored as int8
        sc -= 256
    d = float32(raw16[blk * 105 + 104]) * float32(sc)
    return d * float32((lo | (hi << 4)) - 32)


_VALUE = {"Q4_0": _q4_0, "Q4_1": _q4_1, "Q8_0": _q8_0, "Q4_K": _q4_k, "Q6_K": _q6_k}


@functools.cache
def _dequant_kernel(name: str) -> Any:
    """One thread per output value."""
    value = _VALUE[name]
    per_block = GGUF_BLOCKS[name][0]

    @cuda.jit
    def dequant_kernel(raw, raw16, out):
        i = cuda.grid(1)
        if i < out.shape[0]:
            blk = i // per_block
            out[i] = value(raw, raw16, blk, i - blk * per_block)

    return dequant_kernel


def _views(raw: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Contiguous uint8 data and its float16 view (same memory)."""
    nbytes = GGUF_BLOCKS[name][1]
    if raw.dtype != torch.uint8 or raw.dim() == 0 or raw.shape[-1] % nbytes:
        raise KernelInputError(f"{name} data must be uint8 with a last dim multiple of {nbytes}")
    raw = raw.contiguous()
    return raw, raw.view(torch.float16)


@torch.inference_mode()
def dequant(raw: torch.Tensor, qtype: Any, dtype: torch.dtype = torch.float16) -> torch.Tensor:
    """GGUF blocks (uint8 (..., row_bytes)) -> values (..., row_values) in `dtype`."""
    name = qtype_name(qtype)
    if dtype not in (torch.float16, torch.float32):
        raise KernelInputError(f"dequant writes float16 or float32, not {dtype}")
    raw, raw16 = _views(raw, name)
    per_block, nbytes = GGUF_BLOCKS[name]
    out_shape = (*raw.shape[:-1], raw.shape[-1] // nbytes * per_block)
    out = torch.empty(out_shape, dtype=dtype, device=raw.device)
    n = out.numel()
    if n:
        block = min(BLOCK, next_pow2(n))
        _common.launch(
            _dequant_kernel(name),
            -(-n // block),
            block,
            raw.reshape(-1),
            raw16.reshape(-1),
            out.reshape(-1),
        )
    return out


@functools.cache
def _matvec_kernel(name: str, nt: int) -> Any:
    """One block per output row; each thread walks whole quant bytes, then a block sum."""
    kind = ("Q4_0", "Q4_1", "Q8_0").index(name)  # an int: the CUDA target has no str compare

    @cuda.jit
    def matvec_kernel(raw, raw16, x, y):
        row = cuda.blockIdx.x
        tid = cuda.threadIdx.x
        buf = cuda.shared.array(nt, float32)
        w = raw[row]  # (row_bytes,)
        w16 = raw16[row]
        acc = float32(0.0)
        if kind == 2:
            for u in range(tid, x.shape[0], nt):  # one int8 per step
                blk = u >> 5
                acc += _q8_0(w, w16, blk, u & 31) * float32(x[u])
        else:
            # A Q4_0/Q4_1 byte holds values l and l + 16 of its block: both per step.
            for u in range(tid, x.shape[0] >> 1, nt):
                blk = u >> 4
                lane = u & 15
                i0 = (blk << 5) + lane
                if kind == 0:
                    off = blk * 18 + 2 + lane
                    d = float32(w16[blk * 9])
                    b = int32(w[off])
                    acc += d * (
                        float32((b & 15) - 8) * float32(x[i0])
                        + float32((b >> 4) - 8) * float32(x[i0 + 16])
                    )
                else:
                    off = blk * 20 + 4 + lane
                    d = float32(w16[blk * 10])
                    m = float32(w16[blk * 10 + 1])
                    b = int32(w[off])
                    x0 = float32(x[i0])
                    x1 = float32(x[i0 + 16])
                    acc += d * (float32(b & 15) * x0 + float32(b >> 4) * x1) + m * (x0 + x1)
        total = block_sum(buf, acc, tid, nt)
        if tid == 0:
            y[row] = total

    return matvec_kernel


@torch.inference_mode()
def q_matvec(raw: torch.Tensor, qtype: Any, x: torch.Tensor) -> torch.Tensor:
    """y = W x for W stored as GGUF blocks (out, row_bytes) and x (in,) or (1, in)."""
    name = qtype_name(qtype)
    if name not in ("Q4_0", "Q4_1", "Q8_0"):
        raise KernelInputError(f"q_matvec supports Q4_0, Q4_1 and Q8_0, not {name}")
    check_float("x", x)
    raw, raw16 = _views(raw, name)
    per_block, nbytes = GGUF_BLOCKS[name]
    if raw.dim() != 2:
        raise KernelInputError("q_matvec takes weights of shape (out, row_bytes)")
    n_out, n_in = raw.shape[0], raw.shape[1] // nbytes * per_block
    if x.numel() != n_in or x.dim() > 2:
        raise KernelInputError(f"x has shape {tuple(x.shape)}, expected ({n_in},) or (1, {n_in})")
    y = torch.empty(n_out, dtype=x.dtype, device=x.device)
    if n_out:
        units = n_in if name == "Q8_0" else n_in // 2  # steps per row
        nt = min(128, max(32, next_pow2(units // 4)))
        _common.launch(
            _matvec_kernel(name, nt), n_out, nt, raw, raw16, x.reshape(-1).contiguous(), y
        )
    return y.reshape(*x.shape[:-1], n_out)
