"""GGUF loading end to end on tiny random models: same logits as the HF path, q/k permutation, bad files."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch

from mistralrs_cli.cli.compose import build_model
from mistralrs_cli.cli.spec import model_spec
from mistralrs_cli.errors import GGUFError, ModelSourceError, WeightError
from mistralrs_cli.models.fused import FusedInt4Attention, FusedInt4MLP, FusedProjection
from mistralrs_cli.models.quant_linear import Int4Linear, QuantEmbedding, block_n
from tests.models.test_model_oracle import _greedy_with_pool
from tests.oracles.gguf_files import (
    byte_level_tokenizer_metadata,
    dequantized_copy,
    gguf_tensors,
    llama_metadata,
    write_gguf,
    write_gguf_from_hf,
)
from tests.oracles.tiny_models import save_tiny_folder, tiny_hf_model

Q = gguf.GGMLQuantizationType
V = gguf.GGUFValueType
VARIANTS = {"mistral": ("mistral", {}), "llama-tied": ("llama", {"tie_word_embeddings": True})}


@pytest.fixture(scope="module", params=list(VARIANTS))
def tiny(request, tmp_path_factory):
    """(transformers model, HF folder, {qtype: gguf path}) for one tiny variant."""
    kind, overrides = VARIANTS[request.param]
    hf = tiny_hf_model(kind, seed=3, **overrides)
    folder = save_tiny_folder(hf, tmp_path_factory.mktemp(request.param))
    files = {q: write_gguf_from_hf(hf, folder, folder / f"model-{Q(q).name}.gguf", q) for q in (Q.F32, Q.Q8_0, Q.Q4_1)}
    return hf, folder, files


def _gguf(path, dtype="f32"):
    return build_model(model_spec("gguf-mistral", quantized_filename=str(path), dtype=dtype))


def _logits(model, ids):
    with torch.inference_mode():
        return model(ids, torch.arange(ids.shape[1]).expand_as(ids))


IDS = torch.randint(0, 320, (2, 24), generator=torch.Generator().manual_seed(5))


def test_f32_gguf_gives_the_hf_path_logits(tiny):
    hf, folder, files = tiny
    ours_hf = build_model(model_spec("mistral", model_id=str(folder)))
    ours_gguf = _gguf(files[Q.F32])
    assert ours_gguf.config.sliding_window == ours_hf.config.sliding_window
    assert ours_gguf.config.tie_word_embeddings == hf.config.tie_word_embeddings
    diff = (_logits(ours_gguf.model, IDS) - _logits(ours_hf.model, IDS)).abs().max().item()
    assert diff < 1e-5


def test_q_k_permutation_is_undone_exactly(tiny):
    hf, _, files = tiny
    ours = _gguf(files[Q.F32]).model
    for name in ("q_proj", "k_proj"):
        got = getattr(ours.model.layers[1].self_attn, name).weight
        assert torch.equal(got, getattr(hf.model.layers[1].self_attn, name).weight)


@pytest.mark.parametrize("qtype", [Q.Q8_0, Q.Q4_1], ids=lambda t: Q(t).name)
def test_quantized_gguf_exact_and_fast_paths(tiny, qtype):
    hf, _, files = tiny
    expected = dequantized_copy(hf, qtype)(IDS).logits.detach()
    exact = _gguf(files[qtype], "f32")
    assert (_logits(exact.model, IDS) - expected).abs().max().item() < 1e-5
    fast = _gguf(files[qtype], "auto")
    assert isinstance(fast.model.model.embed_tokens, QuantEmbedding)
    assert isinstance(fast.model.lm_head, Int4Linear)
    # gate/up (128 rows each) fuse; k/v (32 rows) fuse only where the packed layout's row block
    # divides 32 (AVX2: 32 rows), else they are padded and keep q/k/v separate (AVX-512: 64).
    mlp, attn = fast.model.model.layers[0].mlp, fast.model.model.layers[0].self_attn
    assert isinstance(mlp, FusedInt4MLP) and isinstance(mlp.fused_gate_up, FusedProjection)
    assert isinstance(attn, FusedInt4Attention) == (32 % block_n() == 0)
    # bf16 scales/activations inside the int4 matmuls: ~1% of the logit scale (measured 0.5%).
    scale = expected.abs().max().item()
    assert (_logits(fast.model, IDS) - expected).abs().max().item() < 0.02 * scale


def test_fast_path_greedy_generation_matches_exact_path(tiny):
    _, _, files = tiny
    prompt = [1, 17, 99, 42, 7, 250, 31, 5]
    exact = _greedy_with_pool(_gguf(files[Q.Q8_0], "f32").model, prompt, 12)
    fast = _greedy_with_pool(_gguf(files[Q.Q8_0], "auto").model, prompt, 12)
    assert fast == exact


def test_unfused_path_used_when_a_projection_is_wrapped(tiny):
    _, _, files = tiny
    model = _gguf(files[Q.Q4_1], "auto").model
    before = _logits(model, IDS)
    mlp = model.model.layers[0].mlp

    class Wrapper(torch.nn.Module):
        def __init__(self, base):
            super().__init__()
            self.base, self.calls = base, 0

        def forward(self, x):
            self.calls += 1
            return self.base(x)

    mlp.up_proj = Wrapper(mlp.up_proj)
    after = _logits(model, IDS)
    assert mlp.up_proj.calls == 1
    # Separate and fused int4 matmuls run the same kernel on the same rows.
    assert torch.allclose(before, after, atol=1e-4)


def test_gguf_tokenizer_and_chat_template_match_the_hf_folder(tiny):
    _, folder, files = tiny
    ours = _gguf(files[Q.F32]).tokenizer
    ref = build_model(model_spec("mistral", model_id=str(folder))).tokenizer
    for text in ["Hello world, ünïcödé 日本語 🙂", "tiny  tokenizer\n\tend", "</s> <s>x"]:
        assert ours.encode(text) == ref.encode(text)
        assert ours.decode(ours.encode(text)) == ref.decode(ref.encode(text))
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    assert ours.render_chat(chat) == ref.render_chat(chat)
    assert ours.eos_token_ids == ref.eos_token_ids


def test_tokenizer_from_tok_model_id(tiny):
    _, folder, files = tiny
    spec = model_spec("gguf-mistral", quantized_filename=str(files[Q.F32]), tok_model_id=str(folder), dtype="f32")
    assert build_model(spec).tokenizer.encode("Hello") == _gguf(files[Q.F32]).tokenizer.encode("Hello")


def test_file_resolution_from_folder_and_errors(tiny):
    _, folder, files = tiny
    spec = model_spec("gguf-mistral", quantized_model_id=str(folder), quantized_filename=files[Q.F32].name, dtype="f32")
    assert build_model(spec).info["format"] == "gguf"
    with pytest.raises(ModelSourceError, match="-f/--quantized-filename is required"):
        build_model(model_spec("gguf-mistral", quantized_model_id=str(folder)))
    with pytest.raises(ModelSourceError, match="missing nope.gguf"):
        build_model(model_spec("gguf-mistral", quantized_model_id=str(folder), quantized_filename="nope.gguf"))


def _variant_file(tmp_path, name, meta_edit=None, tensor_edit=None, arch="llama"):
    hf = tiny_hf_model("llama", seed=4)
    folder = save_tiny_folder(hf, tmp_path / f"{name}-hf")
    meta = llama_metadata(hf.config, arch)
    meta.update(byte_level_tokenizer_metadata(folder))
    tensors = gguf_tensors(hf, Q.Q8_0)
    if meta_edit:
        meta_edit(meta)
    if tensor_edit:
        tensor_edit(tensors)
    return write_gguf(tmp_path / f"{name}.gguf", arch, meta, tensors)


def test_bad_model_files_give_one_line_errors(tmp_path):
    cases = [
        (_variant_file(tmp_path, "arch", arch="qwen2"), GGUFError, "unsupported architecture 'qwen2'"),
        (
            _variant_file(tmp_path, "missing", tensor_edit=lambda t: t.pop("blk.1.ffn_up.weight")),
            GGUFError,
            "missing tensor 'blk.1.ffn_up.weight'",
        ),
        (
            _variant_file(
                tmp_path,
                "iq",
                tensor_edit=lambda t: t.update({"blk.0.attn_v.weight": (np.zeros((32, 2 * 66), np.uint8), Q.IQ2_XXS)}),
            ),
            GGUFError,
            "blk.0.attn_v.weight.*IQ2_XXS, which is not supported",
        ),
        (
            _variant_file(
                tmp_path,
                "vocab",
                meta_edit=lambda m: m["tokenizer.ggml.tokens"][1].extend(f"extra{i}" for i in range(40)),
            ),
            GGUFError,
            "vocab size mismatch",
        ),
        (
            _variant_file(
                tmp_path,
                "shape",
                tensor_edit=lambda t: t.update({"blk.0.ffn_norm.weight": (np.ones(32, np.float32), Q.F32)}),
            ),
            WeightError,
            "blk.0.ffn_norm.weight.*shape",
        ),
    ]
    for path, error, match in cases:
        for dtype in ("auto", "f32"):
            with pytest.raises(error, match=match) as err:
                _gguf(path, dtype)
            assert "\n" not in str(err.value) and path.name in str(err.value)


def test_rmsnorm_fast_path_is_bit_identical_to_the_hf_formula():
    from mistralrs_cli.models.layers import RMSNorm

    norm = RMSNorm(576, 1e-5)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    for shape in [(1, 1, 576), (3, 37, 576)]:
        x = torch.randn(*shape) * 3
        h = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5)
        assert torch.equal(norm(x), norm.weight * h)
