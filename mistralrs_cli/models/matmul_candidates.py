"""Candidate CPU matmul kernels for a quantized linear, one interface, chosen per shape at load.

Each candidate is prepared from an `Int4Linear` (its exact int4 terms, or the effective weight
they encode) and computes `matmul(x (M, K) f32|bf16) -> (M, N) f32` without bias:
  - "int4":     torch's int4 pack kernel (`_weight_int4pack_mm_for_cpu`, bf16 in), today's path;
                exact to the GGUF up to bf16 scales and bf16 activations.
  - "int8":     `_weight_int8pack_mm`, int8 weights with one scale per output channel, bf16 in;
                re-quantizing the GGUF weight to per-channel int8 costs accuracy.
  - "dyn-int8-fbgemm", "dyn-int8-onednn": `quantized::linear_dynamic` on weights prepacked by
                that engine (VNNI; AMX via oneDNN), per-channel int8 weights, activations
                quantized per tensor to uint8 at each call.
  - "bf16":     dense bf16 weight, `F.linear` (oneDNN; AMX where the CPU has it). 4x the bytes.
  - "numba-q4q8": llama.cpp's scheme, 4-bit blocks x int8 activations per block of 32
                (models/numba_q4q8.py); eager only (numba is not traceable by torch.compile).
`CANDIDATES` maps each name to its class; `prepare(name, layer)` builds one.
"""

from __future__ import annotations

import warnings
from typing import ClassVar, Protocol

import torch
import torch.nn.functional as F

from mistralrs_cli.models.quant_linear import Int4Linear, unpack_int4


class Candidate(Protocol):
    name: ClassVar[str]
    compilable: ClassVar[bool]  # usable inside a torch.compile'd graph

    def matmul(self, x: torch.Tensor) -> torch.Tensor: ...

    def nbytes(self) -> int: ...

    @staticmethod
    def bytes_for(k: int, n: int) -> int:
        """Bytes a copy of a (k in, n out) weight takes in this format (0: none)."""
        ...


def _per_channel_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K) f32 -> symmetric int8 codes (N, K) and one f32 scale per row (N,)."""
    scale = w.abs().amax(dim=1).clamp_min(1e-12) / 127
    return torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8), scale


class Int4Pack:
    """Today's path: the layer's own packed terms, shared (no copy)."""

    name: ClassVar[str] = "int4"
    compilable: ClassVar[bool] = True

    @staticmethod
    def bytes_for(k: int, n: int) -> int:
        return 0  # shares the layer's packed weight

    def __init__(self, layer: Int4Linear) -> None:
        self.layer = layer

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer._int4(x).float()  # the layer's own int4 path, whatever else it routes to

    def nbytes(self) -> int:
        return sum(p.numel() + 2 * sz.numel() for p, sz in self.layer.terms())


class Int8WeightOnly:
    """Per-channel int8 weights, bf16 activations (`_weight_int8pack_mm`)."""

    name: ClassVar[str] = "int8"
    compilable: ClassVar[bool] = True

    @staticmethod
    def bytes_for(k: int, n: int) -> int:
        return k * n + 4 * n  # int8 codes + one f32 scale per row

    def __init__(self, layer: Int4Linear) -> None:
        self.codes, scale = _per_channel_int8(layer.weight_f32())
        self.scale = scale.to(torch.bfloat16)

    def weight(self) -> torch.Tensor:
        """The weight this candidate multiplies by, (N, K) f32 (its reference)."""
        return self.codes.float() * self.scale.float()[:, None]

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        # f32 inputs take a slow path (~40x, measured): bf16 in, as for int4.
        return torch.ops.aten._weight_int8pack_mm(x.to(torch.bfloat16), self.codes, self.scale).float()

    def nbytes(self) -> int:
        return self.codes.numel() + 2 * self.scale.numel()


class DynamicInt8:
    """Dynamic quantized linear: per-channel int8 weights, uint8 activations per call (`engine`'s
    prepacked format; `quantized::linear_dynamic` dispatches on it)."""

    name: ClassVar[str] = "dyn-int8-fbgemm"
    engine: ClassVar[str] = "fbgemm"
    compilable: ClassVar[bool] = False  # a TorchScript packed-params object: eager only

    @staticmethod
    def bytes_for(k: int, n: int) -> int:
        return k * n + 4 * n  # int8 codes + one f32 scale per row

    def __init__(self, layer: Int4Linear) -> None:
        codes, scale = _per_channel_int8(layer.weight_f32())
        self.codes, self.scale = codes, scale
        with warnings.catch_warnings():  # torch's deprecation notice for quantized tensors
            warnings.simplefilter("ignore", UserWarning)
            qweight = torch._make_per_channel_quantized_tensor(
                codes, scale.double(), torch.zeros_like(scale, dtype=torch.long), 0
            )
        with _quant_engine(self.engine):
            self.packed = torch.ops.quantized.linear_prepack(qweight, None)

    def weight(self) -> torch.Tensor:
        return self.codes.float() * self.scale[:, None]

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        # The packed object remembers its engine; no global switch is needed per call.
        return torch.ops.quantized.linear_dynamic(x.float(), self.packed, False)

    def nbytes(self) -> int:
        return self.codes.numel() + 4 * self.scale.numel()


class DynamicInt8OneDNN(DynamicInt8):
    """The same with oneDNN's prepacked weights (VNNI/AMX through oneDNN)."""

    name: ClassVar[str] = "dyn-int8-onednn"
    engine: ClassVar[str] = "onednn"


class Bf16Dense:
    """The effective weight dequantized to bf16 (oneDNN; AMX tiles where present)."""

    name: ClassVar[str] = "bf16"
    compilable: ClassVar[bool] = True

    @staticmethod
    def bytes_for(k: int, n: int) -> int:
        return 2 * k * n

    def __init__(self, layer: Int4Linear) -> None:
        self.w = torch.cat([part.to(torch.bfloat16) for part in weight_rows(layer)])

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.to(torch.bfloat16), self.w).float()

    def nbytes(self) -> int:
        return 2 * self.w.numel()


class NumbaQ4Q8:
    """4-bit blocks of 32 (GGML's nibble order) times int8 activations per block (llama.cpp's dot)."""

    name: ClassVar[str] = "numba-q4q8"
    compilable: ClassVar[bool] = False

    @staticmethod
    def bytes_for(k: int, n: int) -> int:
        return k * n // 2 + k // 32 * n * 4  # nibbles + scale and min per block (approximate)

    def __init__(self, layer: Int4Linear) -> None:
        from mistralrs_cli.models import numba_q4q8

        self.kernel = numba_q4q8
        self.terms = [numba_q4q8.from_int4_term(u, sz, layer.out_features) for u, sz in _codes(layer)]

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        xq = self.kernel.quantize_activations(x.float())
        y = None
        for term in self.terms:
            out = self.kernel.matmul(xq, term)
            y = out if y is None else y + out
        return y

    def nbytes(self) -> int:
        return sum(t.nbytes() for t in self.terms)


def weight_rows(layer: Int4Linear, rows: int = 2048) -> list[torch.Tensor]:
    """`layer.weight_f32()` in chunks of `rows` output rows, so that dequantizing a large weight
    (the 49152-row head) never holds more than one chunk's f32 temporaries (~5x its size)."""
    out, terms = [], layer.terms()
    for start in range(0, layer.out_features, rows):
        stop = min(start + rows, layer.out_features)
        # Packed rows come in blocks of block_n(), which divides `rows`: a slice stays a valid layer.
        end = min(start + rows, terms[0][0].shape[0])
        part = Int4Linear([(p[start:end], sz[:, start:end]) for p, sz in terms], layer.in_features, stop - start)
        out.append(part.weight_f32())
    return out


def _codes(layer: Int4Linear) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The layer's terms as (u (N_padded, K) uint8 0..15, scale_zero (K/32, N_padded, 2) bf16)."""
    return [(unpack_int4(packed), scale_zero) for packed, scale_zero in layer.terms()]


class _quant_engine:
    """Set torch's quantized engine for a block (prepacking reads it)."""

    def __init__(self, engine: str) -> None:
        self.engine = engine

    def __enter__(self) -> None:
        self.saved = torch.backends.quantized.engine
        torch.backends.quantized.engine = self.engine

    def __exit__(self, *exc: object) -> None:
        torch.backends.quantized.engine = self.saved


CANDIDATES: dict[str, type] = {
    c.name: c for c in (Int4Pack, Int8WeightOnly, DynamicInt8, DynamicInt8OneDNN, Bf16Dense, NumbaQ4Q8)
}


def prepare(name: str, layer: Int4Linear) -> Candidate:
    """Candidate `name` prepared from `layer`'s weights."""
    return CANDIDATES[name](layer)
