"""Optional fused projections: q/k/v and gate/up as one int4 matmul each, when nothing wraps them.

A decode step at batch 1 is dominated by per-call overhead, so one matmul instead of three
(q/k/v) or two (gate/up) saves ~90 kernel calls per token. The separate `q_proj`... modules
stay in place (LoRA/X-LoRA wrap them by name) and keep working: they view the fused weights.
NOTE: the fused path is used only while each of the layer's projections is still the very
module that was fused, or a LoRA wrapper directly around it (an identity check per call). A
wrapper's delta is then added to its slice of the fused output, so adapters keep the fused
base matmul and are never bypassed; any other replacement turns the fused path off.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mistralrs_cli.models.quant_linear import Int4Linear, concat_int4


@dataclass(frozen=True)
class FusedProjection:
    """One linear computing several source projections; `sizes` are their output widths."""

    sources: tuple[nn.Module, ...]
    layer: nn.Module
    sizes: tuple[int, ...]

    def applies_to(self, *modules: nn.Module) -> bool:
        """True while each given module is the source it replaces, or a delta wrapper around it."""
        return len(modules) == len(self.sources) and all(
            m is s or (getattr(m, "base", None) is s and hasattr(m, "delta"))
            for m, s in zip(modules, self.sources, strict=True)
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


def fuse_projections(model: nn.Module) -> int:
    """Fuse q/k/v and gate/up of every decoder layer whose projections are all int4; returns how many."""
    count = 0
    for layer in model.model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        qkv = _fuse([attn.q_proj, attn.k_proj, attn.v_proj])
        if qkv is not None:
            attn.fused_qkv = qkv
            count += 1
        gate_up = _fuse([mlp.gate_proj, mlp.up_proj])
        if gate_up is not None:
            mlp.fused_gate_up = gate_up
            count += 1
    return count


def unfuse_projections(model: nn.Module) -> None:
    """Drop the fused paths (the separate projections keep their weights)."""
    for layer in model.model.layers:
        layer.self_attn.fused_qkv = None
        layer.mlp.fused_gate_up = None
