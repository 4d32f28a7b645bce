"""Building blocks of the Mistral/Llama decoder in plain torch: RMSNorm, rotary embeddings, SwiGLU MLP.

Backend variants (fused int4, kernels_cuda) subclass these and are swapped in once after load
by models/backend.py; the classes here know nothing about them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mistralrs_cli.models.config import ModelConfig


class RMSNorm(nn.Module):
    """Root-mean-square norm computed in f32, exactly as transformers does it."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        if dtype == torch.float32 and self.weight.dtype == torch.float32:
            # One fused op, bit-identical to the formula below in f32 (checked in the tests).
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(dtype)


def rope_inv_freq(cfg: ModelConfig) -> torch.Tensor:
    """Inverse frequencies (rotary_dim // 2,) in f32, with linear or llama3 scaling applied."""
    dim = cfg.rotary_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    scaling = cfg.rope_scaling or {}
    kind = scaling.get("rope_type", "default")
    if kind == "linear":
        inv_freq = inv_freq / float(scaling["factor"])
    elif kind == "llama3":
        inv_freq = _llama3_inv_freq(inv_freq, scaling)
    return inv_freq


def _llama3_inv_freq(inv_freq: torch.Tensor, s: dict) -> torch.Tensor:
    # Llama 3.1 frequency-dependent scaling: long wavelengths are divided by `factor`,
    # short ones kept, and the band between is interpolated smoothly.
    factor, low, high = float(s["factor"]), float(s["low_freq_factor"]), float(s["high_freq_factor"])
    old_ctx = float(s["original_max_position_embeddings"])
    low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_ctx / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return torch.where(medium, smoothed, scaled)


class RotaryEmbedding(nn.Module):
    """HF rotate-half rotary embedding over one f32 cos/sin table that grows on demand.

    The table is the one rope cache of a model: the torch path reads it through `cos_sin`, the
    rope kernel (models/cuda_modules.py) through `tables`.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self._cos: torch.Tensor | None = None  # (size, rotary_dim // 2) f32
        self._sin: torch.Tensor | None = None

    def tables(self, needed: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """f32 cos/sin (size >= needed, rotary_dim // 2) on `device`, covering positions [0, needed)."""
        if self._cos is None or self._cos.shape[0] < needed or self._cos.device != device:
            size = max(needed, 2 * (self._cos.shape[0] if self._cos is not None else 1024))
            # Plain tensors even when grown under inference mode (the engine's): usable outside it,
            # and the same kind for the compiled decode step's guards (engine/compiled_step.py).
            with torch.inference_mode(False):
                inv_freq = rope_inv_freq(self.cfg).to(device)
                t = torch.arange(size, device=device, dtype=torch.float32)
                freqs = torch.outer(t, inv_freq)  # (size, rotary_dim // 2)
                self._cos, self._sin = freqs.cos(), freqs.sin()
        return self._cos, self._sin

    def cos_sin(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin for `positions` (any shape) -> (*positions.shape, rotary_dim), in `dtype`."""
        needed = int(positions.max()) + 1 if positions.numel() else 1
        cos, sin = self.tables(needed, positions.device)
        return lookup_cos_sin(cos, sin, positions, dtype)


def lookup_cos_sin(cos: torch.Tensor, sin: torch.Tensor, positions: torch.Tensor,
                   dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows `positions` (any shape, all within the tables) of the f32 tables `RotaryEmbedding.tables`
    returns -> (*positions.shape, rotary_dim) in `dtype`. No data-dependent step, so a compiled graph
    can take the tables as inputs (engine/compiled_step.py)."""
    # Both halves of a rotate-half pair share a frequency: the same values HF's cat(freqs, freqs) gives.
    cos, sin = cos[positions].to(dtype), sin[positions].to(dtype)
    return torch.cat((cos, cos), dim=-1), torch.cat((sin, sin), dim=-1)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (B, Q, heads, head_dim) by cos/sin (B, Q, rotary_dim); extra dims pass through."""
    cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)  # (B, Q, 1, rotary_dim)
    rot = cos.shape[-1]
    if rot == x.shape[-1]:
        return x * cos + _rotate_half(x) * sin
    x_rot, x_pass = x[..., :rot], x[..., rot:]
    return torch.cat((x_rot * cos + _rotate_half(x_rot) * sin, x_pass), dim=-1)


class MLP(nn.Module):
    """SwiGLU feed-forward: down(silu(gate(x)) * up(x))."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        h, i, b = cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias
        self.gate_proj = nn.Linear(h, i, bias=b)
        self.up_proj = nn.Linear(h, i, bias=b)
        self.down_proj = nn.Linear(i, h, bias=b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
