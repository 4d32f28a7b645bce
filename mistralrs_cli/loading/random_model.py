"""A randomly initialised model of SmolLM2-135M's shapes: a stand-in for speed measurements without weights."""

from __future__ import annotations

import torch

from mistralrs_cli.loading.loaded import LoadedModel
from mistralrs_cli.loading.tokenizer import TextTokenizer
from mistralrs_cli.models.config import ModelConfig
from mistralrs_cli.models.mistral import MistralForCausalLM

# SmolLM2-135M's shapes: the stand-in for the default model while no weights are at hand.
SMOLLM2_135M = ModelConfig(
    vocab_size=49152,
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    head_dim=64,
    max_position_embeddings=8192,
    rms_norm_eps=1e-5,
    rope_theta=100000.0,
    tie_word_embeddings=True,
    model_type="llama",
)


def random_model(cfg: ModelConfig = SMOLLM2_135M, dtype: torch.dtype = torch.float32, seed: int = 0) -> LoadedModel:
    """A randomly initialised model of `cfg`'s shapes with a word-level tokenizer: speed only."""
    from tokenizers import Tokenizer, models

    torch.manual_seed(seed)
    model = MistralForCausalLM(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02)
    model.tie_weights()
    model = model.to(dtype).eval()
    vocab = {f"t{i}": i for i in range(cfg.vocab_size)}
    tokenizer = TextTokenizer(Tokenizer(models.WordLevel(vocab, unk_token="t0")))
    return LoadedModel(model, cfg, tokenizer, "random-smollm2-135m", torch.device("cpu"), dtype, {"format": "random"})
