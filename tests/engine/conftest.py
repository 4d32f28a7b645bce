"""Engine fixtures: the tiny random models loaded once per session, in f32 on the CPU."""

from __future__ import annotations

import pytest

from mistralrs_cli.loading.loader import load_model
from mistralrs_cli.spec import ModelSpec


@pytest.fixture(scope="session")
def tiny_mistral(tiny_mistral_dir):
    """Tiny Mistral (sliding window 8, GQA 4/2, vocab 320) with its byte-level BPE tokenizer."""
    return load_model(ModelSpec(kind="mistral", model_id=str(tiny_mistral_dir), device="cpu"))


@pytest.fixture(scope="session")
def tiny_llama(tiny_llama_dir):
    """Tiny Llama (no window, tied embeddings)."""
    return load_model(ModelSpec(kind="mistral", model_id=str(tiny_llama_dir), device="cpu"))
