"""Shared fixtures: tiny random HF checkpoints saved to temporary folders."""

from __future__ import annotations

import os

import pytest
import torch

# Without a GPU, numba.cuda kernels run in numba's simulator; it must be chosen before numba.cuda
# is first imported by any test module (tests/kernels/conftest.py checks it again).
if not torch.cuda.is_available():
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

# The command line compiles the decode step by default: tests that spawn or invoke `mistralrs`
# stay eager (and fast) unless they pass --compile.
os.environ.setdefault("MISTRALRS_COMPILE", "0")

# Keep the suite predictable on the 2-core CI machine.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def tiny_mistral_dir(tmp_path_factory):
    """A tiny random Mistral (sliding window 8, GQA 4/2) saved as an HF folder with a tokenizer."""
    from tests.oracles.tiny_models import save_tiny_folder, tiny_hf_model

    return save_tiny_folder(tiny_hf_model("mistral"), tmp_path_factory.mktemp("tiny-mistral"))


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory):
    """A tiny random Llama with tied embeddings saved as an HF folder with a tokenizer."""
    from tests.oracles.tiny_models import save_tiny_folder, tiny_hf_model

    model = tiny_hf_model("llama", seed=1, tie_word_embeddings=True)
    return save_tiny_folder(model, tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def default_gguf():
    """The real default model's GGUF, downloaded into the cache on first use like the CLI does."""
    from mistralrs_cli.loading.default_model import resolve_default_model

    return resolve_default_model().gguf_path
