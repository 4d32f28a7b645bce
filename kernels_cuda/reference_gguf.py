"""Torch twins of the GGUF kernels: block dequantization and the fused dequantize-matvec.

Layouts follow ggml (ggml-common.h); arithmetic follows the order of `gguf.quants` so the
f32 results agree bit for bit with `gguf.quants.dequantize`.
"""

from __future__ import annotations

from typing import Any

import torch

# name -> (values per block, bytes per block)
GGUF_BLOCKS: dict[str, tuple[int, int]] = {
    "Q4_0": (32, 18),
    "Q4_1": (32, 20),
    "Q8_0": (32, 34),
    "Q4_K": (256, 144),
    "Q6_K": (256, 210),
}


def qtype_name(qtype: Any) -> str:
    """Normalise a quant type (name string or gguf.GGMLQuantizationType) to its name."""
    name = str(getattr(qtype, "name", qtype)).upper()
    if name not in GGUF_BLOCKS:
        raise ValueError(f"unsupported GGUF quant type {name}; supported: {sorted(GGUF_BLOCKS)}")
    return name


def _f16(blocks: torch.Tensor, start: int) -> torch.Tensor:
    """The f16 stored at byte `start` of every block, as f32 (n, 1)."""
    return blocks[:, start : start + 2].contiguous().view(torch.float16).float()


def _nibbles(qs: torch.Tensor) -> torch.Tensor:
    """Low nibbles then high nibbles along the last dim."""
    return torch.cat([qs & 0xF, qs >> 4], dim=-1)


def _q4_0(b: torch.Tensor) -> torch.Tensor:
    q = _nibbles(b[:, 2:]).float() - 8  # (n, 32)
    return _f16(b, 0) * q


def _q4_1(b: torch.Tensor) -> torch.Tensor:
    q = _nibbles(b[:, 4:]).float()  # (n, 32)
    return _f16(b, 0) * q + _f16(b, 2)


def _q8_0(b: torch.Tensor) -> torch.Tensor:
    q = b[:, 2:].contiguous().view(torch.int8).float()  # (n, 32)
    return _f16(b, 0) * q


def _q4_k(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    s = b[:, 4:16].long()  # 12 bytes of packed 6-bit scales and mins
    lo, mid, hi = s[:, 0:4], s[:, 4:8], s[:, 8:12]
    sc = torch.cat([lo & 63, (hi & 0xF) | ((lo >> 6) << 4)], dim=1).float()  # (n, 8)
    mn = torch.cat([mid & 63, (hi >> 4) | ((mid >> 6) << 4)], dim=1).float()  # (n, 8)
    qs = b[:, 16:].reshape(n, 4, 32)
    q = torch.stack([qs & 0xF, qs >> 4], dim=2).reshape(n, 8, 32).float()  # (n, 8 sub-blocks, 32)
    d = (_f16(b, 0) * sc).unsqueeze(-1)
    m = (_f16(b, 2) * mn).unsqueeze(-1)
    return (d * q - m).reshape(n, 256)


def _q6_k(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    ql = b[:, :128].reshape(n, 2, 64)  # two halves of 128 values
    qh = b[:, 128:192].reshape(n, 2, 32)
    sc = b[:, 192:208].contiguous().view(torch.int8).float()  # (n, 16)
    low = _nibbles(ql)  # (n, 2, 128)
    high = torch.cat([(qh >> s) & 3 for s in (0, 2, 4, 6)], dim=-1)  # (n, 2, 128)
    q = ((low | (high << 4)).float() - 32).reshape(n, 16, 16)  # (n, 16 groups, 16)
    return ((_f16(b, 208) * sc).unsqueeze(-1) * q).reshape(n, 256)


_DEQUANT = {"Q4_0": _q4_0, "Q4_1": _q4_1, "Q8_0": _q8_0, "Q4_K": _q4_k, "Q6_K": _q6_k}


def dequant(raw: torch.Tensor, qtype: Any, dtype: torch.dtype = torch.float16) -> torch.Tensor:
    """GGUF blocks (uint8 (..., row_bytes)) -> values (..., row_values) in `dtype`."""
    name = qtype_name(qtype)
    per_block, nbytes = GGUF_BLOCKS[name]
    if raw.dtype != torch.uint8 or raw.dim() == 0 or raw.shape[-1] % nbytes:
        raise ValueError(f"{name} data must be uint8 with a last dim multiple of {nbytes}")
    blocks = raw.reshape(-1, nbytes)  # (n_blocks, bytes)
    values = _DEQUANT[name](blocks)  # (n_blocks, per_block) f32
    out_shape = (*raw.shape[:-1], raw.shape[-1] // nbytes * per_block)
    return values.reshape(out_shape).to(dtype)


def q_matvec(raw: torch.Tensor, qtype: Any, x: torch.Tensor) -> torch.Tensor:
    """y = W x for W stored as GGUF blocks (out, row_bytes) and x (in,) or (1, in)."""
    w = dequant(raw, qtype, torch.float32)  # (out, in)
    y = w @ x.reshape(-1).float()  # (out,)
    return y.reshape(*x.shape[:-1], w.shape[0]).to(x.dtype)
