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

from mistralrs_cli.models import kernel_ops
from mistralrs_cli.models.config import ModelConfig
from mistralrs_cli.models.fused import FusedProjection
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
        return AttentionBatch(write_slots.reshape(-1), ctx_slots, mask.unsqueeze(1),
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

    # Optional one-matmul q/k/v (models/fused.py); used only while it still matches q/k/v_proj.
    fused_qkv: FusedProjection | None = None
    # CUDA kernel path (models/kernel_ops.py): set by `set_kernels`, with the rope tables it needs.
    use_kernels: bool = False
    rope_tables: kernel_ops.RopeTables | None = None
    window: int | None = None

    def _qkv_kernels(self, x: torch.Tensor, positions: torch.Tensor):
        bsz, qlen, _ = x.shape
        q = self.q_proj(x).view(bsz, qlen, self.n_heads, self.head_dim)
        k = self.k_proj(x).view(bsz, qlen, self.n_kv, self.head_dim)
        v = self.v_proj(x).view(bsz, qlen, self.n_kv, self.head_dim)
        q, k = kernel_ops.rope(q, k, positions, self.rope_tables)
        return q, k, v

    def _qkv(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        bsz, qlen, _ = x.shape
        nh, nkv, hd = self.n_heads, self.n_kv, self.head_dim
        fused = self.fused_qkv
        projections = (self.q_proj, self.k_proj, self.v_proj)
        if fused is not None and fused.applies_to(*projections):
            qkv = fused(x, *projections)  # (B, Q, (nh + 2 nkv) * hd)
            # q and k heads are adjacent: rotate them in one go.
            qk = apply_rotary(qkv[..., : (nh + nkv) * hd].view(bsz, qlen, nh + nkv, hd), cos, sin)
            v = qkv[..., (nh + nkv) * hd :].view(bsz, qlen, nkv, hd)
            return qk[:, :, :nh], qk[:, :, nh:], v
        q = self.q_proj(x).view(bsz, qlen, nh, hd)
        k = self.k_proj(x).view(bsz, qlen, nkv, hd)
        v = self.v_proj(x).view(bsz, qlen, nkv, hd)
        return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), v

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        batch: AttentionBatch,
        kv: KVLayer | None,
    ) -> torch.Tensor:
        bsz, qlen, _ = x.shape
        kernels = self.use_kernels and batch.q_positions is not None and kernel_ops.takes(x)
        if kernels and self.rope_tables is not None:
            q, k, v = self._qkv_kernels(x, batch.q_positions)
        else:
            q, k, v = self._qkv(x, cos, sin)
        if kv is not None and batch.ctx_slots is not None:
            k_pool, v_pool = kv
            k_pool.index_copy_(0, batch.write_slots, k.reshape(-1, self.n_kv, self.head_dim).to(k_pool.dtype))
            v_pool.index_copy_(0, batch.write_slots, v.reshape(-1, self.n_kv, self.head_dim).to(v_pool.dtype))
            if kernels:
                out = kernel_ops.attention(q, k_pool, v_pool, batch.ctx_slots, batch.q_positions,
                                           batch.key_positions, self.window)
                if out is not None:
                    return self.o_proj(out.reshape(bsz, qlen, -1))
            # index_select on the flat slot list: cheaper than advanced indexing per call.
            flat = batch.ctx_slots.reshape(-1)
            shape = (*batch.ctx_slots.shape, self.n_kv, self.head_dim)  # (B, L, n_kv, head_dim)
            k = k_pool.index_select(0, flat).view(shape).to(q.dtype)
            v = v_pool.index_select(0, flat).view(shape).to(q.dtype)
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2),  # (B, n_heads, Q, head_dim)
            k.transpose(1, 2),  # (B, n_kv, L, head_dim)
            v.transpose(1, 2),
            attn_mask=batch.additive_mask(q.dtype),
            enable_gqa=self.n_heads != self.n_kv,
        )
        return self.o_proj(out.transpose(1, 2).reshape(bsz, qlen, -1))
