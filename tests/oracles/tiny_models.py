"""Tiny random Mistral/Llama checkpoints built with transformers, saved as HF folders."""

from __future__ import annotations

import json
from pathlib import Path

import torch

TINY_VOCAB = 320


def tiny_config(kind: str = "mistral", **overrides):
    """A transformers config for a tiny model (kind: mistral | llama)."""
    from transformers import LlamaConfig, MistralConfig

    common = dict(
        vocab_size=TINY_VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    common.update(overrides)
    if kind == "llama":
        return LlamaConfig(**common)
    common.setdefault("sliding_window", 8)
    return MistralConfig(**common)


def tiny_hf_model(kind: str = "mistral", seed: int = 0, **overrides):
    """A random transformers model in f32, eval mode, with eager attention."""
    from transformers import LlamaForCausalLM, MistralForCausalLM

    torch.manual_seed(seed)
    cfg = tiny_config(kind, **overrides)
    cfg._attn_implementation = "eager"
    cls = LlamaForCausalLM if kind == "llama" else MistralForCausalLM
    model = cls(cfg).eval()
    # Random init gives tiny weights; widen them so logits differ meaningfully.
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.08)
    return model


def save_tiny_folder(model, folder: Path, with_tokenizer: bool = True) -> Path:
    """Save an HF model folder (config + safetensors) and, optionally, a small BPE tokenizer."""
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    if with_tokenizer:
        write_tiny_tokenizer(folder)
    return folder


def write_tiny_tokenizer(folder: Path) -> None:
    """A byte-level BPE tokenizer of TINY_VOCAB tokens with a Mistral-style chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = ["Hello world, this is a tiny tokenizer. ünïcödé 日本語 🙂 " * 3] * 20
    tok.train_from_iterator(corpus, trainer)
    from tokenizers.processors import TemplateProcessing

    tok.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tok.save(str(folder / "tokenizer.json"))
    template = (
        "{{ bos_token }}{% for m in messages %}"
        "{% if m['role'] == 'system' %}[SYS]{{ m['content'] }}[/SYS]"
        "{% elif m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
        "{% else %}{{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
    )
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "bos_token": "<s>",
                "eos_token": "</s>",
                "unk_token": "<unk>",
                "chat_template": template,
                "tokenizer_class": "PreTrainedTokenizerFast",
            }
        )
    )
