"""Re-packing GGML quantized blocks into torch's int4 layout (no dequantization to floats).

Every type handled here stores, per group of 32 weights, an unsigned code u, a scale s and an
offset c with w = s * u + c (Q4_K/Q5_K: s = d * sub-scale, c = -dmin * sub-min). torch's
kernel computes w = (u4 - 8) * scale + zero with 4-bit u4, so:
  - 4-bit codes: one term, scale = s, zero = c + 8s;
  - 8-bit codes u = 16 hi + lo: two terms, (hi, 16s, 0) and (lo, s, c + 136s), since
    16s (hi - 8) + s (lo - 8) + c + 136s = s (16 hi + lo) + c;
  - 5-bit codes (hi in 0..1): (hi + 8, 16s, 0) and (lo, s, c + 8s), which keeps every term
    small so the bf16 roundings below do not get amplified by cancellation.
The only rounding is bf16 storage of scale and zero (relative 2^-9, about half of what
llama.cpp's own q8 activation quantization costs). Sub-blocks of 16 (Q2_K, Q3_K, Q6_K) do not
fit groups of 32; those tensors are dequantized instead.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from mistralrs_cli.loading.quant import f16_at, k_scale_min, nibbles, q5_high_bits
from mistralrs_cli.models.quant_linear import (
    Int4Linear,
    block_n,
    int4_available,
    pack_int4,
    scale_zero_table,
)

Q = GGMLQuantizationType
Codes = tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]  # u (n_blocks, 32), s, c (n_blocks, 1), bits
_CHUNK_ROWS = 4096  # rows converted at once: bounds the temporaries (a multiple of any block_n())


def _q4_0(b: torch.Tensor) -> Codes:
    d = f16_at(b, 0)
    return nibbles(b[:, 2:], 1).reshape(-1, 32), d, -8 * d, 4


def _q4_1(b: torch.Tensor) -> Codes:
    return nibbles(b[:, 4:], 1).reshape(-1, 32), f16_at(b, 0), f16_at(b, 2), 4


def _q5_0(b: torch.Tensor) -> Codes:
    d = f16_at(b, 0)
    u = nibbles(b[:, 6:], 1).reshape(-1, 32) | (q5_high_bits(b[:, 2:6]) << 4)
    return u, d, -16 * d, 5


def _q5_1(b: torch.Tensor) -> Codes:
    u = nibbles(b[:, 8:], 1).reshape(-1, 32) | (q5_high_bits(b[:, 4:8]) << 4)
    return u, f16_at(b, 0), f16_at(b, 2), 5


def _q8_0(b: torch.Tensor) -> Codes:
    d = f16_at(b, 0)
    # int8 v stored as byte v mod 256; v + 128 is that byte with its top bit flipped.
    return b[:, 2:] ^ 0x80, d, -128 * d, 8


def _k_scales(b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_K/Q5_K super-block (256) -> per-32 scale s and offset c, each (n*8, 1)."""
    d, dmin = f16_at(b, 0), f16_at(b, 2)
    sc, mn = k_scale_min(b[:, 4:16])
    return (d * sc.float()).reshape(-1, 1), (-(dmin * mn.float())).reshape(-1, 1)


def _q4_k(b: torch.Tensor) -> Codes:
    s, c = _k_scales(b)
    return nibbles(b[:, 16:], 4).reshape(-1, 32), s, c, 4


def _q5_k(b: torch.Tensor) -> Codes:
    s, c = _k_scales(b)
    n = b.shape[0]
    lo = nibbles(b[:, 48:], 4).reshape(n, 8, 32)
    hi = ((b[:, 16:48].reshape(n, 1, 32) >> torch.arange(8, dtype=torch.uint8).view(8, 1)) & 1)
    return (lo | (hi << 4)).reshape(-1, 32), s, c, 5


_CODES: dict[int, Callable[[torch.Tensor], Codes]] = {
    Q.Q4_0: _q4_0,
    Q.Q4_1: _q4_1,
    Q.Q5_0: _q5_0,
    Q.Q5_1: _q5_1,
    Q.Q8_0: _q8_0,
    Q.Q4_K: _q4_k,
    Q.Q5_K: _q5_k,
}
INT4_TYPES = frozenset(_CODES)


def int4_codes(raw: torch.Tensor, ggml_type: int, cols: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Raw rows (N, row_bytes) -> int4 terms [(u (N, K) uint8 0..15, scale (N, K/32), zero (N, K/32))]."""
    rows = raw.shape[0]
    groups = cols // 32
    _, size = GGML_QUANT_SIZES[Q(ggml_type)]
    u, s, c, bits = _CODES[ggml_type](raw.reshape(-1, size))
    u = u.reshape(rows, cols)
    s, c = s.reshape(rows, groups), c.reshape(rows, groups)
    if bits == 4:
        return [(u, s, c + 8 * s)]
    if bits == 5:
        # hi is 0 or 1: store hi + 8 so the high term is 16s * hi, not a large -128s offset
        # whose bf16 rounding would not cancel against the zero.
        return [((u >> 4) + 8, 16 * s, torch.zeros_like(s)), (u & 0x0F, s, c + 8 * s)]
    return [(u >> 4, 16 * s, torch.zeros_like(s)), (u & 0x0F, s, c + 136 * s)]


# Block layouts as numpy structured types: reading the f16 scales through them is one strided
# pass (torch's strided copy of 2-byte slices is ~30x slower, measured).
_BLOCK_DTYPES = {
    Q.Q4_0: np.dtype([("d", "<f2"), ("qs", "u1", 16)]),
    Q.Q4_1: np.dtype([("d", "<f2"), ("m", "<f2"), ("qs", "u1", 16)]),
    Q.Q8_0: np.dtype([("d", "<f2"), ("qs", "u1", 32)]),
}


def _block_scales(src: np.ndarray, ggml_type: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-block scale s and offset c (w = s*u + c, u unsigned) for the directly re-packed types, f32 (N, B)."""
    blocks = src.view(_BLOCK_DTYPES[ggml_type])  # (N, B) records
    s = torch.from_numpy(blocks["d"].astype(np.float32))
    if ggml_type == Q.Q4_1:
        return s, torch.from_numpy(blocks["m"].astype(np.float32))
    return s, (-8 if ggml_type == Q.Q4_0 else -128) * s


def _direct_terms(raw: torch.Tensor, ggml_type: int, cols: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Q4_0/Q4_1/Q8_0 straight from block bytes to the packed layout (no (N, K) code matrix).

    With B = block_n(), row r = Bb + j pairs with row r + B/2 in one byte, so split the rows into
    the two halves of each B-row block (A, C) and combine their nibbles where they lie in the
    GGML block.
    """
    rows, block = raw.shape[0], block_n()
    groups = cols // 32
    _, size = GGML_QUANT_SIZES[Q(ggml_type)]
    s, c = _block_scales(raw.contiguous().numpy(), ggml_type)
    blocks = raw.reshape(rows // block, 2, block // 2, groups, size)
    a, b = blocks[:, 0], blocks[:, 1]  # (N/B, B/2, groups, size): rows Bn+j and Bn+B/2+j

    def layout(packed: torch.Tensor) -> torch.Tensor:  # (N/B, B/2, K) bytes -> (N, K/2)
        return packed.reshape(rows // block, block // 2, cols).transpose(1, 2).contiguous().view(rows, cols // 2)

    if ggml_type == Q.Q8_0:
        ua, ub = a[..., 2:] ^ 0x80, b[..., 2:] ^ 0x80  # u = int8 + 128
        hi = layout((ua >> 4) | (ub & 0xF0))
        lo = layout((ua & 0x0F) | ((ub & 0x0F) << 4))
        # Same arithmetic as int4_codes, so both paths give identical tables.
        return [(hi, scale_zero_table(16 * s, torch.zeros_like(s))), (lo, scale_zero_table(s, c + 136 * s))]
    off = 2 if ggml_type == Q.Q4_0 else 4
    qa, qb = a[..., off:], b[..., off:]  # byte t holds values t (low nibble) and t + 16 (high)
    first = (qa & 0x0F) | ((qb & 0x0F) << 4)
    second = (qa >> 4) | (qb & 0xF0)
    packed = layout(torch.stack((first, second), dim=3))  # (N/B, B/2, groups, 2, 16) = (N/B, B/2, K)
    return [(packed, scale_zero_table(s, c + 8 * s))]


def int4_linear(
    raw: torch.Tensor, ggml_type: int, cols: int, bias: torch.Tensor | None = None, direct: bool = True
) -> Int4Linear:
    """An Int4Linear from a GGML tensor's raw rows (direct re-pack, or via code matrices in chunks)."""
    rows = raw.shape[0]
    if direct and ggml_type in _BLOCK_DTYPES and rows % block_n() == 0 and raw.device.type == "cpu":
        return Int4Linear(_direct_terms(raw, ggml_type, cols), cols, rows, bias)
    parts: list[list[tuple[torch.Tensor, torch.Tensor]]] = []
    for start in range(0, rows, _CHUNK_ROWS):
        chunk = raw[start : start + _CHUNK_ROWS]
        layer = Int4Linear.from_codes(int4_codes(chunk, ggml_type, cols))
        parts.append(layer.terms())
    if len(parts) == 1:
        terms = parts[0]
    else:
        # Every chunk but the last is a whole number of row blocks, so packed rows concatenate.
        terms = [
            (torch.cat([p[i][0] for p in parts]), torch.cat([p[i][1] for p in parts], dim=1))
            for i in range(len(parts[0]))
        ]
    return Int4Linear(terms, cols, rows, bias)


def can_pack(ggml_type: int) -> bool:
    """Whether tensors of this type go to the int4 path (else they are dequantized)."""
    return ggml_type in INT4_TYPES and int4_available()


__all__ = ["INT4_TYPES", "can_pack", "int4_codes", "int4_linear", "pack_int4"]
