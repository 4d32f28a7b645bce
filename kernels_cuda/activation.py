"""SiLU-and-multiply for the gated MLP: out = silu(gate) * up, elementwise, f32 math."""

from __future__ import annotations

import math

import torch
from numba import cuda, float32

from . import _common
from ._common import check_float, check_shape, next_pow2

BLOCK = 256


@cuda.jit
def silu_mul_kernel(gate, up, out):
    """One thread per element of the flattened (T * intermediate) tensors."""
    i = cuda.grid(1)
    if i < out.shape[0]:
        g = float32(gate[i])
        out[i] = g / (float32(1.0) + math.exp(-g)) * float32(up[i])


@torch.inference_mode()
def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up, computed in f32."""
    check_float("gate", gate)
    check_float("up", up)
    check_shape("up", up, tuple(gate.shape))
    g = gate.contiguous().reshape(-1)  # (T * intermediate,)
    u = up.contiguous().reshape(-1)
    out = torch.empty_like(g)
    n = g.numel()
    if n:
        # Small launches (tests, tiny models) use one block sized to fit.
        block = min(BLOCK, max(32, next_pow2(n)))
        _common.launch(silu_mul_kernel, (n + block - 1) // block, block, g, u, out)
    return out.reshape(gate.shape)
