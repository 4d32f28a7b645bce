"""Single-sequence generation: prefill + decode through the KV pool (the engine batches many of these)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from mistralrs_cli.errors import RequestError
from mistralrs_cli.loading.loaded import LoadedModel
from mistralrs_cli.models.attention import AttentionBatch


@dataclass(frozen=True)
class SimpleSampling:
    """Sampling settings for the single-sequence path."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    max_tokens: int = 256
    seed: int | None = None

    def validate(self) -> None:
        """Reject values no sampler can use."""
        if self.temperature < 0:
            raise RequestError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise RequestError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise RequestError(f"top_k must be >= 0, got {self.top_k}")
        if self.max_tokens < 1:
            raise RequestError(f"max_tokens must be >= 1, got {self.max_tokens}")


def sample(logits: torch.Tensor, p: SimpleSampling, gen: torch.Generator | None) -> int:
    """Pick one token from (vocab,) logits: greedy at temperature 0, else top-k/top-p sampling."""
    if p.temperature == 0:
        return int(logits.argmax())
    logits = logits / p.temperature
    if p.top_k > 0:
        kth = torch.topk(logits, min(p.top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, -1)
    if p.top_p < 1:
        sorted_p, order = probs.sort(descending=True)
        drop = sorted_p.cumsum(-1) - sorted_p > p.top_p  # keep the smallest set reaching top_p
        probs = probs.scatter(0, order, sorted_p.masked_fill(drop, 0))
    return int(torch.multinomial(probs, 1, generator=gen))


@torch.inference_mode()
def generate(loaded: LoadedModel, prompt: list[int], p: SimpleSampling) -> Iterator[int]:
    """Yield generated token ids until EOS or max_tokens."""
    p.validate()
    model, cfg = loaded.model, loaded.config
    if not prompt:
        raise RequestError("the prompt is empty")
    total = len(prompt) + p.max_tokens
    if total > cfg.max_position_embeddings:
        raise RequestError(
            f"prompt ({len(prompt)} tokens) + max_tokens ({p.max_tokens}) exceeds the context "
            f"of {cfg.max_position_embeddings} tokens"
        )
    shape = (total + 1, cfg.num_key_value_heads, cfg.head_dim)
    pool = [
        (torch.zeros(shape, dtype=loaded.dtype, device=loaded.device),
         torch.zeros(shape, dtype=loaded.dtype, device=loaded.device))
        for _ in range(cfg.num_hidden_layers)
    ]
    gen = torch.Generator(device="cpu").manual_seed(p.seed) if p.seed is not None else None
    dev = loaded.device
    ids = torch.tensor([prompt], device=dev)
    n = len(prompt)
    pos = torch.arange(n, device=dev)[None]
    batch = AttentionBatch.build(pos, pos, cfg.sliding_window, pos[0] + 1, pos + 1)
    logits = model(ids, pos, batch, pool, torch.tensor([n - 1], device=dev))
    eos = loaded.tokenizer.eos_token_ids
    for step in range(p.max_tokens):
        token = sample(logits[0].cpu(), p, gen)
        yield token
        if token in eos:
            return
        cur = n + step
        keys = torch.arange(cur + 1, device=dev)[None]
        batch = AttentionBatch.build(
            torch.tensor([[cur]], device=dev), keys, cfg.sliding_window,
            torch.tensor([cur + 1], device=dev), keys + 1,
        )
        logits = model(torch.tensor([[token]], device=dev), torch.tensor([[cur]], device=dev), batch, pool,
                       torch.tensor([0], device=dev))
