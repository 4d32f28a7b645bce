"""The one Mistral/Llama causal LM. It never knows where its weights came from.

Module names follow transformers (`model.layers.N.self_attn.q_proj`, `lm_head`...), so HF
state dicts load as they are; loaders swap linears for quantized or adapter-wrapped ones.
"""

from __future__ import annotations

import torch
from torch import nn

from mistralrs_cli.models.attention import Attention, AttentionBatch, KVLayer
from mistralrs_cli.models.config import ModelConfig
from mistralrs_cli.models.contract import SequenceHooks
from mistralrs_cli.models.layers import MLP, RMSNorm, RotaryEmbedding


class DecoderLayer(nn.Module):
    """Pre-norm transformer block: attention then SwiGLU MLP, each with a residual."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.self_attn = Attention(cfg)
        self.mlp = MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x, cos, sin, batch: AttentionBatch, kv: KVLayer | None) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, batch, kv)
        return x + self.mlp(self.post_attention_layernorm(x))


class MistralBackbone(nn.Module):
    """Embeddings, decoder stack and final norm (HF's `model.` prefix)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.rotary = RotaryEmbedding(cfg)


class MistralForCausalLM(nn.Module):
    """Mistral (and Llama: no sliding window) causal LM over a padded batch and a paged KV pool.

    Satisfies models.contract.CausalLM: stateless, so prefixes can be shared and there are
    no per-sequence hooks.
    """

    prefix_cache_safe = True
    sequence_hooks: SequenceHooks | None = None

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.model = MistralBackbone(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)

    @property
    def num_kv_layers(self) -> int:
        """How many (k, v) pool pairs the engine must allocate: one per decoder layer."""
        return self.config.num_hidden_layers

    def tie_weights(self) -> None:
        """Share the embedding matrix with the output head when the config says so."""
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        batch: AttentionBatch,
        kv: list[KVLayer] | None = None,
    ) -> torch.Tensor:
        """Final-norm hidden states (B, Q, hidden) for ids/positions (B, Q)."""
        m = self.model
        x = m.embed_tokens(input_ids)  # a module call: GGUF embeddings stay quantized
        cos, sin = m.rotary.cos_sin(positions.clamp(min=0), x.dtype)  # (B, Q, rotary_dim)
        return self.decoder_stack(x, cos, sin, batch, kv)

    def decoder_stack(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        batch: AttentionBatch,
        kv: list[KVLayer] | None,
    ) -> torch.Tensor:
        """The decoder layers and final norm over embedded x (B, Q, hidden) and its rotary cos/sin.

        Shared by `hidden_states` and the compiled decode step (engine/compiled_step.py), which
        looks cos/sin up itself (`layers.lookup_cos_sin`) so its graph has no data-dependent step.
        """
        for i, layer in enumerate(self.model.layers):
            x = layer(x, cos, sin, batch, kv[i] if kv is not None else None)
        return self.model.norm(x)

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        batch: AttentionBatch | None = None,
        kv: list[KVLayer] | None = None,
        last_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits in f32: (B, Q, vocab), or (B, vocab) at `last_index` (B,) when given."""
        if batch is None:
            batch = AttentionBatch.no_cache(positions, self.config.sliding_window)
        h = self.hidden_states(input_ids, positions, batch, kv)
        if last_index is not None:
            h = h[torch.arange(h.shape[0], device=h.device), last_index]  # (B, hidden)
        return self.lm_head(h).float()
