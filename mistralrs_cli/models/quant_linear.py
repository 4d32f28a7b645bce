"""Quantized linear and embedding layers: weights stay 4-bit, matmuls run in torch's int4 CPU kernel.

`Int4Linear` holds one or more int4 "terms", each a weight in torch's packed layout for
`aten._weight_int4pack_mm_for_cpu` with a bf16 scale and zero per group of 32 inputs:
    w = (u - 8) * scale + zero,   u in 0..15
A 4-bit GGML block maps onto one term exactly (up to the bf16 rounding of scale and zero);
an 8-bit one (Q8_0, or 5-bit types) splits into a high-nibble and a low-nibble term whose
outputs add up. The kernel is fast only with bf16 inputs (f32/f16 take a slow reference path,
~30x slower, measured), so inputs are cast to bf16 and outputs back to the caller's dtype.
The module exposes `in_features`, `out_features` and `weight_f32()` so adapters can wrap it.
Another matmul (models/matmul_candidates.py) may take over from `large_m` rows on, or below it,
when models/matmul_choice.py measured one faster on this CPU (`use_matmuls`).
"""

from __future__ import annotations

from functools import cache

import torch
import torch.nn.functional as F
from torch import nn

GROUP = 32


def _pack(u: torch.Tensor, block: int) -> torch.Tensor:
    n, k = u.shape
    blocks = u.view(n // block, 2, block // 2, k)  # (N/B, 2, B/2, K)
    packed = blocks[:, 0] | (blocks[:, 1] << 4)  # (N/B, B/2, K)
    return packed.transpose(1, 2).contiguous().view(n, k // 2)


@cache
def block_n() -> int | None:
    """Rows per block of torch's CPU int4 layout on this machine, or None if it is not one we know.

    NOTE: the layout depends on the CPU kernel torch dispatches to (64 rows with AVX-512, 32 with
    AVX2, measured), so it is probed once against `aten._convert_weight_to_int4pack_for_cpu`.
    """
    u = torch.randint(0, 16, (128, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    try:
        expected = torch.ops.aten._convert_weight_to_int4pack_for_cpu(u.to(torch.int32), 1)
    except (RuntimeError, AttributeError):  # an exotic build without the CPU int4 kernel
        return None
    return next((b for b in (64, 32, 16) if torch.equal(_pack(u, b), expected)), None)


def int4_available() -> bool:
    """Whether the int4 CPU path can be used here (else GGUF weights are dequantized)."""
    return block_n() is not None


def pack_int4(u: torch.Tensor) -> torch.Tensor:
    """(N, K) uint8 values 0..15 -> torch's CPU int4 layout (N, K/2) uint8.

    The layout is [N/B, K, B/2] bytes with B = `block_n()`: byte (b, k, j) holds row b*B+j in
    its low nibble and row b*B+B/2+j in its high nibble (checked against
    `aten._convert_weight_to_int4pack_for_cpu` in the tests; ~2x faster, no int32 copy).
    """
    return _pack(u, block_n())


def scale_zero_table(scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """Per-group scale and zero (N, K/32) f32 -> the kernel's (K/32, N, 2) bf16 table."""
    # Transpose each 2-D table first (fast), then interleave: a strided 3-D copy is much slower.
    return torch.stack((scale.t().contiguous(), zero.t().contiguous()), dim=-1).to(torch.bfloat16)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of `pack_int4`: (N, K/2) packed bytes -> (N, K) uint8 values 0..15."""
    n, half = packed.shape
    k, block = half * 2, block_n()
    b = packed.view(n // block, k, block // 2).transpose(1, 2)  # (N/B, B/2, K)
    return torch.stack((b & 0x0F, b >> 4), dim=1).reshape(n, k)


class Int4Linear(nn.Module):
    """y = x W^T (+ bias) with W = sum of int4 terms; weights never leave their packed form."""

    def __init__(
        self,
        terms: list[tuple[torch.Tensor, torch.Tensor]],
        in_features: int,
        out_features: int,
        bias: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.n_terms = len(terms)
        for i, (packed, scale_zero) in enumerate(terms):
            self.register_buffer(f"packed{i}", packed)  # (N_padded, K/2) uint8
            self.register_buffer(f"scale_zero{i}", scale_zero)  # (K/32, N_padded, 2) bf16
        self.bias = nn.Parameter(bias, requires_grad=False) if bias is not None else None
        # Optional other kernels (matmul_candidates: objects with `matmul(x) -> f32` and
        # `compilable`), chosen per batch size at load; None means this layer's int4 terms.
        self.small: object | None = None
        self.large: object | None = None
        self.large_m = 8

    def use_matmuls(self, small: object | None, large: object | None, large_m: int) -> None:
        """Route inputs of fewer than `large_m` rows to `small`, others to `large` (None: int4)."""
        self.small, self.large, self.large_m = small, large, large_m

    @classmethod
    def from_codes(
        cls,
        codes: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
        bias: torch.Tensor | None = None,
    ) -> Int4Linear:
        """Build from terms (u (N, K) uint8 in 0..15, scale (N, K/32) f32, zero (N, K/32) f32)."""
        n, k = codes[0][0].shape
        pad = -n % block_n()  # the packed layout works on whole blocks of rows
        terms = []
        for u, scale, zero in codes:
            if pad:
                u = F.pad(u, (0, 0, 0, pad), value=8)
                scale, zero = F.pad(scale, (0, 0, 0, pad)), F.pad(zero, (0, 0, 0, pad))
            terms.append((pack_int4(u), scale_zero_table(scale, zero)))
        return cls(terms, k, n, bias)

    def terms(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The (packed, scale_zero) pairs."""
        return [(getattr(self, f"packed{i}"), getattr(self, f"scale_zero{i}")) for i in range(self.n_terms)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, self.in_features)
        # Shape-only branch (torch.compile specializes on it); kernels torch.compile cannot trace
        # (numba, TorchScript packed weights) serve eager calls only.
        other = self.large if x2.shape[0] >= self.large_m else self.small
        # A lazy weight copy (matmul_choice.LazyCandidate) is built before a graph is traced
        # (`materialize`); one that is not serves eager calls only.
        if other is not None and ((other.compilable and getattr(other, "ready", True)) or not torch.compiler.is_compiling()):
            y = other.matmul(x2).to(x.dtype)
        else:
            y = self._int4(x2).to(x.dtype)
        if self.bias is not None:
            y = y + self.bias.to(x.dtype)
        return y.view(*shape[:-1], self.out_features)

    def _int4(self, x2: torch.Tensor) -> torch.Tensor:
        xb = x2.to(torch.bfloat16)
        y = None
        for packed, scale_zero in self.terms():
            out = torch.ops.aten._weight_int4pack_mm_for_cpu(xb, packed, GROUP, scale_zero)
            y = out if y is None else y + out
        return y[:, : self.out_features] if y.shape[-1] != self.out_features else y

    def weight_f32(self) -> torch.Tensor:
        """The effective weight (N, K) in f32, for adapters, merging and tests."""
        w = None
        for packed, scale_zero in self.terms():
            u = unpack_int4(packed).float() - 8  # (N, K)
            sz = scale_zero.float().transpose(0, 1).repeat_interleave(GROUP, dim=1)  # (N, K, 2)
            part = u * sz[..., 0] + sz[..., 1]
            w = part if w is None else w + part
        return w[: self.out_features]

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int4 terms={self.n_terms}"


def concat_int4(parts: list[Int4Linear]) -> Int4Linear | None:
    """One Int4Linear computing all `parts` at once (fused q/k/v or gate/up); None if not possible.

    Packed rows come in independent blocks of `block_n()`, so concatenating along N is exact when every
    part has the same input size, the same number of terms, no padding and no bias.
    """
    first = parts[0]
    if any(
        p.in_features != first.in_features
        or p.n_terms != first.n_terms
        or p.out_features % block_n()
        or p.bias is not None
        for p in parts
    ):
        return None
    terms = []
    for i in range(first.n_terms):
        pairs = [p.terms()[i] for p in parts]
        terms.append((torch.cat([a for a, _ in pairs]), torch.cat([b for _, b in pairs], dim=1)))
    return Int4Linear(terms, first.in_features, sum(p.out_features for p in parts))


class QuantEmbedding(nn.Module):
    """Token embeddings kept in their GGUF encoding; only the looked-up rows are dequantized."""

    def __init__(self, raw: torch.Tensor, dequantize_rows, num_embeddings: int, dim: int) -> None:
        super().__init__()
        self.register_buffer("raw", raw, persistent=False)  # (vocab, bytes per row) uint8
        self.dequantize_rows = dequantize_rows  # raw rows (n, bytes) -> f32 (n, dim)
        self.num_embeddings, self.embedding_dim = num_embeddings, dim

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = self.raw[ids.reshape(-1)]
        return self.dequantize_rows(rows).view(*ids.shape, self.embedding_dim)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, quantized"
