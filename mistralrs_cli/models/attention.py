"""GQA self-attention over a paged KV pool, and the per-step AttentionBatch that describes the batch.

Every forward runs a padded batch of B sequences with Q new tokens each (decode: Q = 1; a
prefill chunk: B = 1). New keys/values are written into a flat slot pool shared by all
sequences, then each sequence attends to the slots it owns (`ctx_slots`). Slot 0 is a
scratch slot: padded query positions write there and it is never attended to.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mistralrs_cli.models.config import ModelConfig
from mistralrs_cli.models.layers import apply_rotary

KVLayer = tuple[torch.Tensor, torch.Tensor]  # k and v pools, each (num_slots, n_kv, head_dim)


@dataclass
class AttentionBatch:
    """Where this step's tokens go and what each sequence attends to; shared by all layers."""

    write_slots: torch.Tensor  # (B*Q,) pool slot of each new token (0 = scratch for padding)
    ctx_slots: torch.Tensor | None  # (B, L) pool slots of each sequence's keys; None = no cache
    mask: torch.Tensor  # (B, 1, Q, L) bool, True where the query may attend the key
    # Engine request ids of the B rows, for models that keep per-sequence state (X-LoRA).
    seq_ids: tuple[int, ...] | None = None

    @staticmethod
    def build(
        q_positions: torch.Tensor,
        key_positions: torch.Tensor,
        window: int | None,
        write_slots: torch.Tensor | None = None,
        ctx_slots: torch.Tensor | None = None,
    ) -> AttentionBatch:
        """Build the causal (and sliding-window) mask from positions; -1 marks padding."""
        q = q_positions.unsqueeze(-1)  # (B, Q, 1)
        k = key_positions.unsqueeze(1)  # (B, 1, L)
        mask = (k >= 0) & (k <= q)
        if window is not None:
            mask &= (q - k) < window
        # NOTE: a padded query would see no key and SDPA would return NaN for it; let it see key 0.
        empty = ~mask.any(-1)  # (B, Q)
        mask[..., 0] |= empty
        if write_slots is None:
            write_slots = torch.zeros(q_positions.numel(), dtype=torch.long, device=q_positions.device)
        return AttentionBatch(write_slots.reshape(-1), ctx_slots, mask.unsqueeze(1))

    @staticmethod
    def no_cache(positions: torch.Tensor, window: int | None) -> AttentionBatch:
        """Full-sequence attention without a KV pool (positions (B, T), -1 = padding)."""
        return AttentionBatch.build(positions, positions, window)


class Attention(nn.Module):
    """Grouped-query attention with rotary embeddings; q/k/v/o stay separate linears for adapters."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads, self.n_kv, self.head_dim = (
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
        )
        h, b = cfg.hidden_size, cfg.attention_bias
        self.q_proj = nn.Linear(h, self.n_heads * self.head_dim, bias=b)
        self.k_proj = nn.Linear(h, self.n_kv * self.head_dim, bias=b)
        self.v_proj = nn.Linear(h, self.n_kv * self.head_dim, bias=b)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, h, bias=b)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        batch: AttentionBatch,
        kv: KVLayer | None,
    ) -> torch.Tensor:
        bsz, qlen, _ = x.shape
        q = self.q_proj(x).view(bsz, qlen, self.n_heads, self.head_dim)
        k = self.k_proj(x).view(bsz, qlen, self.n_kv, self.head_dim)
        v = self.v_proj(x).view(bsz, qlen, self.n_kv, self.head_dim)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if kv is not None and batch.ctx_slots is not None:
            k_pool, v_pool = kv
            k_pool.index_copy_(0, batch.write_slots, k.reshape(-1, self.n_kv, self.head_dim).to(k_pool.dtype))
            v_pool.index_copy_(0, batch.write_slots, v.reshape(-1, self.n_kv, self.head_dim).to(v_pool.dtype))
            k = k_pool[batch.ctx_slots].to(q.dtype)  # (B, L, n_kv, head_dim)
            v = v_pool[batch.ctx_slots].to(q.dtype)
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2),  # (B, n_heads, Q, head_dim)
            k.transpose(1, 2),  # (B, n_kv, L, head_dim)
            v.transpose(1, 2),
            attn_mask=batch.mask,
            enable_gqa=self.n_heads != self.n_kv,
        )
        return self.o_proj(out.transpose(1, 2).reshape(bsz, qlen, -1))
