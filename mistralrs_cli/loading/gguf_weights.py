"""Filling the one model from a GGUF file: int4-packed linears on CPU, or dequantized dense weights."""

from __future__ import annotations

from collections import Counter

import torch
from torch import nn

from mistralrs_cli.errors import GGUFError, WeightError
from mistralrs_cli.loading import packed_cache
from mistralrs_cli.loading.gguf_config import check_tensor_names, unpermute_rows
from mistralrs_cli.loading.gguf_file import GGUFFile, TensorInfo
from mistralrs_cli.loading.quant import check_supported, dequantize
from mistralrs_cli.loading.quant_pack import can_pack, int4_linear
from mistralrs_cli.loading.weights import build_empty_model, load_state_dict
from mistralrs_cli.models.config import ModelConfig
from mistralrs_cli.models.mistral import MistralForCausalLM
from mistralrs_cli.models.quant_linear import Int4Linear, QuantEmbedding

_DENSE_TYPES = (0, 1, 30)  # F32, F16, BF16: stored as floats already


def _raw_rows(g: GGUFFile, name: str, cfg: ModelConfig) -> torch.Tensor:
    """Raw bytes of a tensor, with llama.cpp's q/k row permutation undone."""
    raw = g.raw(name)
    if ".attn_q." in name:
        return unpermute_rows(raw, cfg.num_attention_heads)
    if ".attn_k." in name:
        return unpermute_rows(raw, cfg.num_key_value_heads)
    return raw


def _check(g: GGUFFile, info: TensorInfo, ours: str, expected: dict[str, torch.Size]) -> None:
    check_supported(info.ggml_type, f"{g.path}: tensor {info.name!r}")
    want = tuple(expected[ours])
    if info.shape != want:
        raise WeightError(f"{g.path}: tensor {info.name!r} has shape {info.shape}, the model expects {want}")


def dense_state_dict(g: GGUFFile, cfg: ModelConfig, device: torch.device) -> dict[str, torch.Tensor]:
    """Every tensor dequantized to f32 (exact: bit-identical to gguf's reference dequantization)."""
    names = check_tensor_names(g, cfg)
    expected = dict(_expected_shapes(cfg))
    out = {}
    for ours, name in names.items():
        info = g.tensors[name]
        _check(g, info, ours, expected)
        raw = _raw_rows(g, name, cfg).to(device)
        out[ours] = dequantize(raw, info.ggml_type, info.shape[-1]).reshape(info.shape)
    return out


def _expected_shapes(cfg: ModelConfig) -> dict[str, torch.Size]:
    shapes = {k: v.shape for k, v in build_empty_model(cfg).state_dict().items()}
    if cfg.tie_word_embeddings:
        shapes.pop("lm_head.weight", None)
    return shapes


def load_dense(g: GGUFFile, cfg: ModelConfig, dtype: torch.dtype, device: torch.device) -> MistralForCausalLM:
    """The model with every weight dequantized to `dtype` on `device` (the exact reference path)."""
    state = dense_state_dict(g, cfg, device)
    return load_state_dict(build_empty_model(cfg), state, dtype, device, str(g.path))


def load_quantized(g: GGUFFile, cfg: ModelConfig) -> tuple[MistralForCausalLM, dict[str, int]]:
    """The model on CPU with linears kept 4-bit (Int4Linear) and the embedding kept in its GGUF form.

    Types without an exact int4 form (Q2_K, Q3_K, Q6_K, floats) become dense bf16 linears.
    Returns the model and a count of the storage used per kind, for `info`.
    """
    names = check_tensor_names(g, cfg)
    expected = _expected_shapes(cfg)
    model = build_empty_model(cfg)
    kinds: Counter[str] = Counter()
    cache = packed_cache.cache_file(g.path)
    packed = _Packed(packed_cache.read(cache))
    biases = {ours: name for ours, name in names.items() if ours.endswith(".bias")}
    plain: dict[str, torch.Tensor] = {}
    for ours, name in names.items():
        info = g.tensors[name]
        _check(g, info, ours, expected)
        if ours.endswith(".bias"):
            continue
        module_name = ours.rsplit(".", 1)[0]
        module = model.get_submodule(module_name)
        if isinstance(module, nn.Linear):
            bias = _dense(g, biases[module_name + ".bias"], cfg) if module_name + ".bias" in biases else None
            _set(model, module_name, _linear(g, info, cfg, bias, kinds, packed))
        elif isinstance(module, nn.Embedding):
            _set(model, module_name, _embedding(g, info, kinds))
            if cfg.tie_word_embeddings:
                _set(model, "lm_head", _linear(g, info, cfg, None, kinds, packed))
        else:
            plain[ours] = _dense(g, name, cfg)
    model.load_state_dict(plain, assign=True, strict=False)
    if packed.made:  # a first load of this file: keep its packed weights for the next one
        packed_cache.write(cache, {**(packed.cached or {}), **packed.made})
    leftover = [n for n, p in [*model.named_parameters(), *model.named_buffers()] if p.is_meta]
    if leftover:
        raise GGUFError(f"{g.path}: no weights for {leftover[0]!r}")
    return model.eval(), dict(kinds)


def _dense(g: GGUFFile, name: str, cfg: ModelConfig) -> torch.Tensor:
    info = g.tensors[name]
    return dequantize(_raw_rows(g, name, cfg), info.ggml_type, info.shape[-1]).reshape(info.shape).clone()


class _Packed:
    """Packed int4 terms per GGUF tensor: read from the cache (loading/packed_cache.py), and made now."""

    def __init__(self, cached: dict[str, packed_cache.Terms] | None) -> None:
        self.cached = cached
        self.made: dict[str, packed_cache.Terms] = {}


def _linear(g: GGUFFile, info: TensorInfo, cfg: ModelConfig, bias: torch.Tensor | None, kinds: Counter,
            packed: _Packed) -> nn.Module:
    rows, cols = info.shape
    if can_pack(info.ggml_type) and cols % 32 == 0:
        kinds[f"int4 ({info.type_name})"] += rows * cols
        terms = (packed.cached or {}).get(info.name)
        if terms is not None:
            layer = Int4Linear(terms, cols, rows, bias)
        else:
            layer = int4_linear(_raw_rows(g, info.name, cfg), info.ggml_type, cols, bias)
            packed.made[info.name] = layer.terms()
        g.release(info.name)  # the packed copy replaces these pages
        return layer
    kinds[f"bf16 ({info.type_name})"] += rows * cols
    dense = nn.Linear(cols, rows, bias=bias is not None, device="meta")
    raw = _raw_rows(g, info.name, cfg)
    dense.weight = nn.Parameter(dequantize(raw, info.ggml_type, cols).to(torch.bfloat16), requires_grad=False)
    if bias is not None:
        dense.bias = nn.Parameter(bias.to(torch.bfloat16), requires_grad=False)
    # The packed or dense copy replaces these pages (a quantized embedding re-reads its rows on demand).
    g.release(info.name)
    return _Bf16Linear(dense)


def _embedding(g: GGUFFile, info: TensorInfo, kinds: Counter) -> nn.Module:
    rows, cols = info.shape
    kinds[f"embedding ({info.type_name})"] += rows * cols
    if info.ggml_type in _DENSE_TYPES:
        emb = nn.Embedding(rows, cols, device="meta")
        emb.weight = nn.Parameter(dequantize(g.raw(info.name), info.ggml_type, cols).clone(), requires_grad=False)
        return emb
    gtype = info.ggml_type

    def rows_f32(raw_rows: torch.Tensor) -> torch.Tensor:
        return dequantize(raw_rows, gtype, cols)

    # NOTE: `raw` views the memory-mapped file: only the rows actually looked up are read in.
    return QuantEmbedding(g.raw(info.name), rows_f32, rows, cols)


class _Bf16Linear(nn.Module):
    """A dense bf16 linear that takes and returns the caller's dtype (for types int4 cannot hold)."""

    def __init__(self, inner: nn.Linear) -> None:
        super().__init__()
        self.inner = inner
        self.in_features, self.out_features = inner.in_features, inner.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.to(torch.bfloat16)).to(x.dtype)


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, module)
