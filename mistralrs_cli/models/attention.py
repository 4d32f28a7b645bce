"""GQA self-attention over a paged KV pool, and the per-step AttentionBatch that describes the batch.

Every forward runs a padded batch of B sequences with Q new tokens each (decode: Q = 1; a
prefill chunk: B = 1). New keys/values are written into a flat slot pool shared by all
sequences, then each sequence attends to the slots it owns (`ctx_slots`). Slot 0 is a
scratch slot: padded query positions write there and it is never attended to.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
    # Query (B, Q) and key (B, L) positions, -1 = padding (the CUDA kernels take these, not the mask).
    q_positions: torch.Tensor | None = None
    key_positions: torch.Tensor | None = None
    # Engine request ids of the B rows, for models that keep per-sequence state (X-LoRA).
    seq_ids: tuple[int, ...] | None = None
    # Prompt length of each row's sequence (tells stateful wrappers where generation starts).
    prompt_lens: tuple[int, ...] | None = None
    # Additive (0 / -inf) versions of `mask` per dtype, built once per step instead of once per
    # layer inside SDPA (same values, so the same results).
    # init=False: dataclasses.replace() (e.g. with another mask) starts a fresh cache.
    _additive: dict[torch.dtype, torch.Tensor | None] = field(default_factory=dict, init=False, repr=False, compare=False)

    def additive_mask(self, dtype: torch.dtype) -> torch.Tensor | None:
        """`mask` as 0 / -inf in `dtype` (B, 1, Q, L), cached for the step; None when every key is
        allowed (a single decoding sequence), which lets SDPA skip the mask altogether."""
        if dtype not in self._additive:
            if bool(self.mask.all()):
                self._additive[dtype] = None
            else:
                additive = torch.zeros(self.mask.shape, dtype=dtype, device=self.mask.device)
                self._additive[dtype] = additive.masked_fill_(~self.mask, float("-inf"))
        return self._additive[dtype]

    @classmethod
    def build(
        cls,
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
        return cls(write_slots.reshape(-1), ctx_slots, mask.unsqueeze(1),
                   q_positions=q_positions, key_positions=key_positions)

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

    # The two steps backend variants (models/fused.py, models/cuda_modules.py) override.

    def _project(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, batch: AttentionBatch):
        """Rotated q (B, Q, n_heads, hd), rotated k and v (B, Q, n_kv, hd) for x (B, Q, hidden)."""
        bsz, qlen, _ = x.shape
        q = self.q_proj(x).view(bsz, qlen, self.n_heads, self.head_dim)
        k = self.k_proj(x).view(bsz, qlen, self.n_kv, self.head_dim)
        v = self.v_proj(x).view(bsz, qlen, self.n_kv, self.head_dim)
        return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), v

    def _attend_pool(self, q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor,
                     batch: AttentionBatch) -> torch.Tensor:
        """Attention of q over each sequence's slots of the pool (new keys already written): (B, Q, n_heads, hd)."""
        # index_select on the flat slot list: cheaper than advanced indexing per call.
        flat = batch.ctx_slots.reshape(-1)
        shape = (*batch.ctx_slots.shape, self.n_kv, self.head_dim)  # (B, L, n_kv, head_dim)
        k = k_pool.index_select(0, flat).view(shape).to(q.dtype)
        v = v_pool.index_select(0, flat).view(shape).to(q.dtype)
        return self._sdpa(q, k, v, batch)

    def _sdpa(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, batch: AttentionBatch) -> torch.Tensor:
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2),  # (B, n_heads, Q, head_dim)
            k.transpose(1, 2),  # (B, n_kv, L, head_dim)
            v.transpose(1, 2),
            attn_mask=batch.additive_mask(q.dtype),
            enable_gqa=self.n_heads != self.n_kv,
        )
        return out.transpose(1, 2)  # (B, Q, n_heads, head_dim)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        batch: AttentionBatch,
        kv: KVLayer | None,
    ) -> torch.Tensor:
        bsz, qlen, _ = x.shape
        q, k, v = self._project(x, cos, sin, batch)
        if kv is not None and batch.ctx_slots is not None:
            k_pool, v_pool = kv
            k_pool.index_copy_(0, batch.write_slots, k.reshape(-1, self.n_kv, self.head_dim).to(k_pool.dtype))
            v_pool.index_copy_(0, batch.write_slots, v.reshape(-1, self.n_kv, self.head_dim).to(v_pool.dtype))
            out = self._attend_pool(q, k_pool, v_pool, batch)
        else:
            out = self._sdpa(q, k, v, batch)
        return self.o_proj(out.reshape(bsz, qlen, -1))
