"""Engine fixtures: the tiny random models loaded once per session, in f32 on the CPU."""

from __future__ import annotations

import pytest

from mistralrs_cli.cli.compose import build_model
from mistralrs_cli.cli.spec import model_spec


@pytest.fixture(scope="session")
def tiny_mistral(tiny_mistral_dir):
    """Tiny Mistral (sliding window 8, GQA 4/2, vocab 320) with its byte-level BPE tokenizer."""
    return build_model(model_spec("mistral", model_id=str(tiny_mistral_dir), device="cpu"))


@pytest.fixture(scope="session")
def tiny_llama(tiny_llama_dir):
    """Tiny Llama (no window, tied embeddings)."""
    return build_model(model_spec("mistral", model_id=str(tiny_llama_dir), device="cpu"))
