"""The kernels_cuda variants of the model's modules, swapped in by models/backend.py on a CUDA device.

Each runs its hot op through models/kernel_ops.py and falls back to its torch parent for
inputs the kernels do not take (bf16, partial rotary, a batch shape the attention kernels do
not cover), so the swap changes how the model computes, never what.
"""

from __future__ import annotations

import torch

from mistralrs_cli.models import kernel_ops
from mistralrs_cli.models.attention import Attention, AttentionBatch
from mistralrs_cli.models.layers import MLP, RMSNorm


class CudaRMSNorm(RMSNorm):
    """RMSNorm through the rmsnorm_residual kernel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if kernel_ops.takes(x):
            return kernel_ops.rmsnorm(x, self.weight, self.eps)
        return super().forward(x)


class CudaMLP(MLP):
    """SwiGLU with silu(gate) * up in the silu_mul kernel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if kernel_ops.takes(x):
            return self.down_proj(kernel_ops.silu_mul(self.gate_proj(x), self.up_proj(x)))
        return super().forward(x)


class CudaAttention(Attention):
    """Attention with rope, decode and prefill attention in kernels.

    `rope_tables` is the model's rope cache (RotaryEmbedding.tables), None for partial rotary
    (the rope kernel rotates whole heads); `window` is the model's sliding window.
    """

    rope_tables: kernel_ops.RopeTables | None
    window: int | None

    def _project(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, batch: AttentionBatch):
        if self.rope_tables is None or batch.q_positions is None or not kernel_ops.takes(x):
            return super()._project(x, cos, sin, batch)
        bsz, qlen, _ = x.shape
        q = self.q_proj(x).view(bsz, qlen, self.n_heads, self.head_dim)
        k = self.k_proj(x).view(bsz, qlen, self.n_kv, self.head_dim)
        v = self.v_proj(x).view(bsz, qlen, self.n_kv, self.head_dim)
        q, k = kernel_ops.rope(q, k, batch.q_positions, self.rope_tables)
        return q, k, v

    def _attend_pool(self, q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor,
                     batch: AttentionBatch) -> torch.Tensor:
        if batch.q_positions is not None:
            out = kernel_ops.attention(q, k_pool, v_pool, batch.ctx_slots, batch.q_positions,
                                       batch.key_positions, self.window)
            if out is not None:
                return out
        return super()._attend_pool(q, k_pool, v_pool, batch)
