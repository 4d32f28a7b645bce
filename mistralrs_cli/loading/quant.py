"""Vectorized dequantization of GGML tensor types with torch, bit-exact with `gguf.quants.dequantize`.

Each function takes the raw blocks of a tensor as a uint8 tensor (n_blocks, type_size) and
returns f32 values (n_blocks, block_size). Only whole-tensor torch ops are used (no Python
loop per block), so a 50 MB tensor dequantizes in tens of milliseconds, on CPU or GPU.
NOTE: the float operations follow gguf's reference order exactly (e.g. `d * q + m`, never a
fused multiply-add) so results are identical bit for bit, which the tests check.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from mistralrs_cli.errors import GGUFError

Q = GGMLQuantizationType
QK_K = 256


def f16_at(blocks: torch.Tensor, start: int) -> torch.Tensor:
    """The f16 stored at byte `start` of each block, as f32 (n, 1)."""
    return blocks[:, start : start + 2].contiguous().view(torch.float16).float()


def nibbles(qs: torch.Tensor, groups: int) -> torch.Tensor:
    """(n, groups*L) bytes -> (n, groups, 2, L) low then high nibbles, as llama.cpp orders them."""
    qs = qs.reshape(qs.shape[0], groups, 1, -1)
    return torch.cat((qs & 0x0F, qs >> 4), dim=2)


def bit_planes(data: torch.Tensor, shifts: range | tuple[int, ...], mask: int) -> torch.Tensor:
    """(n, ..., L) -> (n, ..., len(shifts), L): each shift of every byte, masked."""
    shift = torch.tensor(list(shifts), dtype=torch.uint8, device=data.device).view(-1, 1)
    return (data.unsqueeze(-2) >> shift) & mask


def _q4_0(b: torch.Tensor) -> torch.Tensor:
    d = f16_at(b, 0)
    q = nibbles(b[:, 2:], 1).reshape(b.shape[0], 32).to(torch.int8) - 8
    return d * q.float()


def _q4_1(b: torch.Tensor) -> torch.Tensor:
    d, m = f16_at(b, 0), f16_at(b, 2)
    q = nibbles(b[:, 4:], 1).reshape(b.shape[0], 32).float()
    return d * q + m


def q5_high_bits(qh: torch.Tensor) -> torch.Tensor:
    """Q5_0/Q5_1: the 32 high bits stored as one little-endian u32, bit j for value j."""
    # Little-endian u32 bit j == bit j % 8 of byte j // 8: shift each byte by 0..7, bytes outer.
    shift = torch.arange(8, dtype=torch.uint8, device=qh.device)
    return ((qh.unsqueeze(-1) >> shift) & 1).reshape(qh.shape[0], 32)


def _q5_0(b: torch.Tensor) -> torch.Tensor:
    d = f16_at(b, 0)
    q = nibbles(b[:, 6:], 1).reshape(b.shape[0], 32) | (q5_high_bits(b[:, 2:6]) << 4)
    return d * (q.to(torch.int8) - 16).float()


def _q5_1(b: torch.Tensor) -> torch.Tensor:
    d, m = f16_at(b, 0), f16_at(b, 2)
    q = nibbles(b[:, 8:], 1).reshape(b.shape[0], 32) | (q5_high_bits(b[:, 4:8]) << 4)
    return d * q.float() + m


def _q8_0(b: torch.Tensor) -> torch.Tensor:
    d = f16_at(b, 0)
    return b[:, 2:].contiguous().view(torch.int8).float() * d


def _q2_k(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    scales, qs = b[:, :16], b[:, 16:80]
    d, dmin = f16_at(b, 80), f16_at(b, 82)
    dl = (d * (scales & 0xF).float()).reshape(n, 16, 1)
    ml = (dmin * (scales >> 4).float()).reshape(n, 16, 1)
    q = bit_planes(qs.reshape(n, 2, 32), (0, 2, 4, 6), 3).reshape(n, 16, 16).float()
    return (dl * q - ml).reshape(n, QK_K)


def _q3_k(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    hmask, qs, sc = b[:, :32], b[:, 32:96], b[:, 96:108]
    d = f16_at(b, 108)
    # 16 six-bit scales: low 4 bits from bytes 0..7 (two per byte), high 2 bits from bytes 8..11.
    low = bit_planes(sc[:, :8], (0, 4), 0x0F).reshape(n, 16)
    high = bit_planes(sc[:, 8:], (0, 2, 4, 6), 0x03).reshape(n, 16)
    scales = ((low | (high << 4)).to(torch.int8) - 32).float()
    dl = (d * scales).reshape(n, 16, 1)
    ql = bit_planes(qs.reshape(n, 2, 32), (0, 2, 4, 6), 3).reshape(n, 16, 16)
    qh = bit_planes(hmask.reshape(n, 1, 32), range(8), 1).reshape(n, 16, 16) ^ 1
    q = (ql.to(torch.int8) - (qh << 2).to(torch.int8)).float()
    return (dl * q).reshape(n, QK_K)


def k_scale_min(sc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_K/Q5_K: 8 six-bit scales and 8 six-bit mins packed in 12 bytes."""
    n = sc.shape[0]
    d, m, md = sc[:, 0:4], sc[:, 4:8], sc[:, 8:12]
    scale = torch.cat((d & 0x3F, (md & 0x0F) | ((d >> 2) & 0x30)), dim=-1)
    mins = torch.cat((m & 0x3F, (md >> 4) | ((m >> 2) & 0x30)), dim=-1)
    return scale.reshape(n, 8), mins.reshape(n, 8)


def _q4_k(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    d, dmin = f16_at(b, 0), f16_at(b, 2)
    sc, mn = k_scale_min(b[:, 4:16])
    ds = (d * sc.float()).reshape(n, 8, 1)
    dm = (dmin * mn.float()).reshape(n, 8, 1)
    q = nibbles(b[:, 16:], 4).reshape(n, 8, 32).float()
    return (ds * q - dm).reshape(n, QK_K)


def _q5_k(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    d, dmin = f16_at(b, 0), f16_at(b, 2)
    sc, mn = k_scale_min(b[:, 4:16])
    ds = (d * sc.float()).reshape(n, 8, 1)
    dm = (dmin * mn.float()).reshape(n, 8, 1)
    ql = nibbles(b[:, 48:], 4).reshape(n, 8, 32)
    qh = bit_planes(b[:, 16:48].reshape(n, 1, 32), range(8), 1).reshape(n, 8, 32)
    q = (ql | (qh << 4)).float()
    return (ds * q - dm).reshape(n, QK_K)


def _q6_k(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    ql, qh, sc = b[:, :128], b[:, 128:192], b[:, 192:208]
    d = f16_at(b, 208)
    ds = (d * sc.contiguous().view(torch.int8).float()).reshape(n, 16, 1)
    low = nibbles(ql, 2).reshape(n, 8, 32)
    high = bit_planes(qh.reshape(n, 2, 32), (0, 2, 4, 6), 3).reshape(n, 8, 32)
    q = ((low | (high << 4)).to(torch.int8) - 32).reshape(n, 16, 16).float()
    return (ds * q).reshape(n, QK_K)


_BLOCK_DEQUANT: dict[int, Callable[[torch.Tensor], torch.Tensor]] = {
    Q.Q4_0: _q4_0,
    Q.Q4_1: _q4_1,
    Q.Q5_0: _q5_0,
    Q.Q5_1: _q5_1,
    Q.Q8_0: _q8_0,
    Q.Q2_K: _q2_k,
    Q.Q3_K: _q3_k,
    Q.Q4_K: _q4_k,
    Q.Q5_K: _q5_k,
    Q.Q6_K: _q6_k,
}
SUPPORTED_TYPES: tuple[int, ...] = (Q.F32, Q.F16, Q.BF16, *_BLOCK_DEQUANT)
SUPPORTED_NAMES = ", ".join(Q(t).name for t in SUPPORTED_TYPES)
_CHUNK_BLOCKS = 1 << 16  # bounds the temporaries of one dequantization step (~8 MB of output)


def check_supported(ggml_type: int, what: str) -> None:
    """Raise a GGUFError naming the type when this project cannot read it."""
    if ggml_type not in SUPPORTED_TYPES:
        raise GGUFError(f"{what} uses ggml type {Q(ggml_type).name}, which is not supported ({SUPPORTED_NAMES})")


def dequantize(raw: torch.Tensor, ggml_type: int, cols: int) -> torch.Tensor:
    """Raw bytes (rows, row_bytes) of one tensor -> f32 values (rows, cols)."""
    rows = raw.shape[0]
    if ggml_type == Q.F32:
        return raw.contiguous().view(torch.float32).reshape(rows, cols)
    if ggml_type == Q.F16:
        return raw.contiguous().view(torch.float16).float().reshape(rows, cols)
    if ggml_type == Q.BF16:
        return raw.contiguous().view(torch.bfloat16).float().reshape(rows, cols)
    fn = _BLOCK_DEQUANT.get(ggml_type)
    if fn is None:
        check_supported(ggml_type, "tensor")
    block, size = GGML_QUANT_SIZES[Q(ggml_type)]
    blocks = raw.reshape(-1, size)
    out = torch.empty(blocks.shape[0], block, dtype=torch.float32, device=raw.device)
    for i in range(0, blocks.shape[0], _CHUNK_BLOCKS):
        out[i : i + _CHUNK_BLOCKS] = fn(blocks[i : i + _CHUNK_BLOCKS])
    return out.reshape(rows, cols)
