"""Fused int4 projections: q/k/v and gate/up as one int4 matmul each (the CPU int4 backend).

A decode step at batch 1 is dominated by per-call overhead, so one matmul instead of three
(q/k/v) or two (gate/up) saves ~90 kernel calls per token. models/backend.py swaps a layer's
Attention / MLP for FusedInt4Attention / FusedInt4MLP when all its projections are int4. The
separate `q_proj`... modules stay in place (LoRA/X-LoRA wrap them by name) and keep working:
they view the fused weights.
NOTE: the fused path is used only while each of the layer's projections is still the very
module that was fused, or a LoRA wrapper directly around it (an identity check per call). A
wrapper's delta is then added to its slice of the fused output, so adapters keep the fused
base matmul and are never bypassed; any other replacement falls back to the separate path.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mistralrs_cli.models.attention import Attention, AttentionBatch
from mistralrs_cli.models.layers import MLP, apply_rotary
from mistralrs_cli.models.quant_linear import Int4Linear, concat_int4
from mistralrs_cli.models.swap import become


@dataclass(frozen=True)
class FusedProjection:
    """One linear computing several source projections; `sizes` are their output widths."""

    sources: tuple[nn.Module, ...]
    layer: nn.Module
    sizes: tuple[int, ...]

    def applies_to(self, *modules: nn.Module) -> bool:
        """True while each given module is the source it replaces, or a delta wrapper around it."""
        return len(modules) == len(self.sources) and all(
            _source(m) is s for m, s in zip(modules, self.sources, strict=True)
        )

    def __call__(self, x: torch.Tensor, *modules: nn.Module) -> torch.Tensor:
        """The concatenated outputs of `modules` (checked with `applies_to`), base matmul fused."""
        y = self.layer(x)
        start = 0
        for module, source, size in zip(modules, self.sources, self.sizes, strict=True):
            if module is not source:
                delta = module.delta(x)
                if delta is not None:
                    y[..., start : start + size] += delta.to(y.dtype)
            start += size
        return y


def _source(module: nn.Module) -> nn.Module:
    """The linear under a LoRA wrapper (adapters attach before the backend is chosen), else the module."""
    return module.base if hasattr(module, "delta") and hasattr(module, "base") else module


def _fuse(parts: list[nn.Module]) -> FusedProjection | None:
    parts = [_source(p) for p in parts]
    if not all(isinstance(p, Int4Linear) for p in parts):
        return None
    fused = concat_int4(parts)
    if fused is None:
        return None
    # Re-point each part at its rows of the fused weights so memory is not duplicated;
    # the small scale tables are copied (the kernel wants them contiguous).
    start = 0
    for p in parts:
        for i, (packed, scale_zero) in enumerate(fused.terms()):
            setattr(p, f"packed{i}", packed[start : start + p.out_features])
            setattr(p, f"scale_zero{i}", scale_zero[:, start : start + p.out_features].contiguous())
        start += p.out_features
    return FusedProjection(tuple(parts), fused, tuple(p.out_features for p in parts))


class FusedInt4Attention(Attention):
    """Attention whose q/k/v run as one int4 matmul (`fused_qkv`) while they still match it."""

    fused_qkv: FusedProjection

    def _project(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, batch: AttentionBatch):
        fused = self.fused_qkv
        projections = (self.q_proj, self.k_proj, self.v_proj)
        if not fused.applies_to(*projections):
            return super()._project(x, cos, sin, batch)
        bsz, qlen, _ = x.shape
        nh, nkv, hd = self.n_heads, self.n_kv, self.head_dim
        qkv = fused(x, *projections)  # (B, Q, (nh + 2 nkv) * hd)
        # q and k heads are adjacent: rotate them in one go.
        qk = apply_rotary(qkv[..., : (nh + nkv) * hd].view(bsz, qlen, nh + nkv, hd), cos, sin)
        v = qkv[..., (nh + nkv) * hd :].view(bsz, qlen, nkv, hd)
        return qk[:, :, :nh], qk[:, :, nh:], v


class FusedInt4MLP(MLP):
    """SwiGLU whose gate/up run as one int4 matmul (`fused_gate_up`) while they still match it."""

    fused_gate_up: FusedProjection

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fused = self.fused_gate_up
        if not fused.applies_to(self.gate_proj, self.up_proj):
            return super().forward(x)
        gate, up = fused(x, self.gate_proj, self.up_proj).split(fused.sizes, dim=-1)
        return self.down_proj(F.silu(gate) * up)


def fuse_projections(model: nn.Module) -> int:
    """Swap in the fused variant of every Attention / MLP whose projections are all int4; returns how many."""
    count = 0
    for module in list(model.modules()):
        if type(module) is Attention:
            qkv = _fuse([module.q_proj, module.k_proj, module.v_proj])
            if qkv is not None:
                become(module, FusedInt4Attention, fused_qkv=qkv)
                count += 1
        elif type(module) is MLP:
            gate_up = _fuse([module.gate_proj, module.up_proj])
            if gate_up is not None:
                become(module, FusedInt4MLP, fused_gate_up=gate_up)
                count += 1
    return count
