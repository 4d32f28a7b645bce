"""The one model against transformers: logits and greedy generation on tiny random checkpoints."""

from __future__ import annotations

import pytest
import torch

from mistralrs_cli.loading.hf_config import config_from_hf
from mistralrs_cli.loading.weights import build_empty_model, load_state_dict
from mistralrs_cli.models.attention import AttentionBatch
from tests.oracles.tiny_models import tiny_hf_model

VARIANTS = {
    "mistral-window-gqa": ("mistral", {}),
    "mistral-mha-window4": ("mistral", {"num_key_value_heads": 4, "sliding_window": 4}),
    "mistral-no-window": ("mistral", {"sliding_window": None}),
    "llama-tied": ("llama", {"tie_word_embeddings": True}),
    "llama-gqa-untied-headdim": ("llama", {"num_key_value_heads": 1, "head_dim": 32}),
}


def _ours(hf) -> torch.nn.Module:
    cfg = config_from_hf(hf.config.to_dict())
    return load_state_dict(build_empty_model(cfg), hf.state_dict(), torch.float32, torch.device("cpu"), "test")


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_full_sequence_logits_match_transformers(variant):
    kind, overrides = VARIANTS[variant]
    hf = tiny_hf_model(kind, **overrides)
    ours = _ours(hf)
    ids = torch.randint(0, hf.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = hf(ids).logits.float()
        got = ours(ids, torch.arange(24).expand(2, 24))
    assert (expected - got).abs().max().item() < 1e-4


def _greedy_with_pool(model, prompt: list[int], steps: int) -> list[int]:
    """Greedy decoding through the paged KV pool: prefill, then one token per step."""
    cfg = model.config
    pool = [
        (torch.zeros(64, cfg.num_key_value_heads, cfg.head_dim), torch.zeros(64, cfg.num_key_value_heads, cfg.head_dim))
        for _ in range(cfg.num_hidden_layers)
    ]
    ids = list(prompt)
    n = len(ids)
    positions = torch.arange(n)[None]
    batch = AttentionBatch.build(
        positions, positions, cfg.sliding_window, torch.arange(1, n + 1), torch.arange(1, n + 1)[None]
    )
    logits = model(torch.tensor([ids]), positions, batch, pool, torch.tensor([n - 1]))
    out = []
    for _ in range(steps):
        nxt = int(logits.argmax(-1))
        out.append(nxt)
        ids.append(nxt)
        pos = len(ids) - 1
        keys = torch.arange(len(ids))[None]
        batch = AttentionBatch.build(
            torch.tensor([[pos]]), keys, cfg.sliding_window, torch.tensor([pos + 1]), keys + 1
        )
        logits = model(torch.tensor([[nxt]]), torch.tensor([[pos]]), batch, pool, torch.tensor([0]))
    return out


@pytest.mark.parametrize("variant", ["mistral-window-gqa", "llama-tied"])
def test_greedy_32_tokens_identical_to_transformers(variant):
    kind, overrides = VARIANTS[variant]
    hf = tiny_hf_model(kind, **overrides)
    ours = _ours(hf)
    prompt = [1, 17, 99, 42, 7, 250, 31, 5, 64, 12]
    with torch.no_grad():
        expected = hf.generate(
            torch.tensor([prompt]), max_new_tokens=32, do_sample=False, eos_token_id=None, pad_token_id=0
        )[0, len(prompt) :].tolist()
        got = _greedy_with_pool(ours, prompt, 32)
    assert got == expected
