"""LoRA and X-LoRA over a GGUF base: dense (F32 file) equals the HF path; int4 linears get wrapped."""

from __future__ import annotations

import gguf
import pytest
import torch

from mistralrs_cli.adapters.lora import LoraLinear
from mistralrs_cli.cli.compose import build_model
from mistralrs_cli.cli.spec import model_spec
from mistralrs_cli.models.quant_linear import Int4Linear
from tests.adapters.helpers import pool_greedy
from tests.adapters.test_xlora_oracle import PROMPT, SEQ, build
from tests.oracles.gguf_files import write_gguf_from_hf
from tests.oracles.tiny_models import tiny_hf_model

Q = gguf.GGMLQuantizationType


@pytest.fixture(scope="module")
def gguf_files(tiny_mistral_dir, tmp_path_factory):
    """The tiny Mistral of tiny_mistral_dir as F32 and Q4_1 GGUF files."""
    root = tmp_path_factory.mktemp("gguf")
    hf = tiny_hf_model("mistral")
    return {q: write_gguf_from_hf(hf, tiny_mistral_dir, root / f"m-{q.name}.gguf", q) for q in (Q.F32, Q.Q4_1)}


def _logits(model):
    with torch.no_grad():
        return model(torch.tensor([SEQ]), torch.arange(len(SEQ))[None])[0]


def test_xlora_over_f32_gguf_equals_hf_base(gguf_files, tmp_path, adapter_dirs, tiny_mistral_dir):
    xdir, ordering, *_ = build(tmp_path, adapter_dirs, "depth2-layerwise-temp-3ad")
    common = dict(xlora_model_id=str(xdir), order=ordering, dtype="f32", device="cpu")
    on_gguf = build_model(model_spec("x-lora-gguf-mistral", quantized_filename=str(gguf_files[Q.F32]), **common))
    on_hf = build_model(model_spec("x-lora-mistral", model_id=str(tiny_mistral_dir), **common))
    assert (_logits(on_gguf.model) - _logits(on_hf.model)).abs().max().item() < 1e-4
    assert pool_greedy(on_gguf.model, PROMPT, 16) == pool_greedy(on_hf.model, PROMPT, 16)


@pytest.mark.parametrize("kind", ["lora-gguf-mistral", "x-lora-gguf-mistral"])
def test_adapters_wrap_int4_linears(kind, gguf_files, tmp_path, adapter_dirs):
    """The int4 path (bf16 compute) against the exact path over the same quantized weights."""
    xdir, ordering, *_ = build(tmp_path, adapter_dirs, "depth1-global-2ad")
    extra = (dict(adapter=(str(adapter_dirs[0]),)) if kind == "lora-gguf-mistral"
             else dict(xlora_model_id=str(xdir), order=ordering))
    path = str(gguf_files[Q.Q4_1])
    fast = build_model(model_spec(kind, quantized_filename=path, dtype="auto", device="cpu", **extra))
    exact = build_model(model_spec(kind, quantized_filename=path, dtype="f32", device="cpu", **extra))
    wrapped = [m for m in fast.model.modules() if isinstance(m, LoraLinear)]
    assert len(wrapped) == 14 and all(isinstance(w.base, Int4Linear) for w in wrapped)
    base = build_model(model_spec("gguf-mistral", quantized_filename=path, dtype="f32", device="cpu"))
    want, got = _logits(exact.model), _logits(fast.model)
    scale = want.abs().max().item()
    assert (got - want).abs().max().item() < 0.02 * scale  # bf16 activations in the int4 kernel
    assert (_logits(base.model) - want).abs().max().item() > 0.1 * scale  # far larger: adapters applied
