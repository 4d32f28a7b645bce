"""GGUF metadata -> ModelConfig, llama.cpp tensor names -> our module names, and the q/k un-permutation."""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
import torch

from mistralrs_cli.errors import ConfigError, GGUFError
from mistralrs_cli.loading.config_schema import MAX_DIM, MAX_LAYERS, MAX_POSITIONS
from mistralrs_cli.loading.gguf_file import GGUFFile
from mistralrs_cli.models.config import ModelConfig

SUPPORTED_ARCHS = ("llama", "mistral")

_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_LAYER_RE = re.compile(r"^blk\.(\d+)\.([a-z_]+)\.(weight|bias)$")


def _int(g: GGUFFile, key: str, default: int | None = None, minimum: int = 1, maximum: int = MAX_DIM) -> int:
    value = g.get(key, default)
    if value is None:
        raise GGUFError(f"{g.path}: missing metadata {key!r}")
    if isinstance(value, bool) or not isinstance(value, int):
        raise GGUFError(f"{g.path}: metadata {key!r} should be an integer, got {value!r:.60}")
    if not minimum <= value <= maximum:
        raise GGUFError(f"{g.path}: metadata {key!r} must be between {minimum} and {maximum}, got {value}")
    return int(value)


def _float(g: GGUFFile, key: str, default: float) -> float:
    value = g.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise GGUFError(f"{g.path}: metadata {key!r} should be a number, got {value!r:.60}")
    # NaN, infinite or non-positive values here only ever produce NaN logits.
    if not math.isfinite(value) or value <= 0:
        raise GGUFError(f"{g.path}: metadata {key!r} must be a finite number > 0, got {value!r}")
    return float(value)


def architecture(g: GGUFFile) -> str:
    """`general.architecture`, checked against the architectures the one model implements."""
    arch = g.get("general.architecture")
    if not isinstance(arch, str):
        raise GGUFError(f"{g.path}: missing metadata 'general.architecture'")
    if arch not in SUPPORTED_ARCHS:
        raise GGUFError(f"{g.path}: unsupported architecture {arch!r} (supported: {', '.join(SUPPORTED_ARCHS)})")
    return arch


def config_from_gguf(g: GGUFFile) -> ModelConfig:
    """The same ModelConfig the HF path builds, from llama.*/mistral.* metadata and the tensor list.

    Every value is type- and range-checked: a bad one is a GGUFError naming the metadata key.
    """
    a = architecture(g)
    hidden = _int(g, f"{a}.embedding_length")
    n_heads = _int(g, f"{a}.attention.head_count")
    if g.get(f"{a}.attention.key_length") is None and hidden < n_heads:
        raise GGUFError(f"{g.path}: {a}.embedding_length {hidden} is smaller than {a}.attention.head_count {n_heads}")
    head_dim = _int(g, f"{a}.attention.key_length", hidden // n_heads)
    rope_dims = _int(g, f"{a}.rope.dimension_count", head_dim, minimum=2, maximum=head_dim)
    n_kv = _int(g, f"{a}.attention.head_count_kv", n_heads)
    if n_heads % n_kv:
        raise GGUFError(f"{g.path}: {a}.attention.head_count {n_heads} is not a multiple of head_count_kv {n_kv}")
    window = g.get(f"{a}.attention.sliding_window")
    window = window if isinstance(window, int) and not isinstance(window, bool) and window > 0 else None
    try:
        cfg = ModelConfig(
            vocab_size=_int(g, f"{a}.vocab_size", _vocab_guess(g)),
            hidden_size=hidden,
            intermediate_size=_int(g, f"{a}.feed_forward_length"),
            num_hidden_layers=_int(g, f"{a}.block_count", maximum=MAX_LAYERS),
            num_attention_heads=n_heads,
            num_key_value_heads=n_kv,
            head_dim=head_dim,
            max_position_embeddings=_int(g, f"{a}.context_length", 4096, maximum=MAX_POSITIONS),
            rms_norm_eps=_float(g, f"{a}.attention.layer_norm_rms_epsilon", 1e-5),
            rope_theta=_float(g, f"{a}.rope.freq_base", 10000.0),
            rope_scaling=_rope_scaling(g, a),
            partial_rotary_factor=rope_dims / head_dim,
            sliding_window=window,
            tie_word_embeddings="output.weight" not in g.tensors,
            attention_bias="blk.0.attn_q.bias" in g.tensors,
            model_type="mistral" if window else "llama",
            bos_token_id=_token_id(g.get("tokenizer.ggml.bos_token_id")),
            eos_token_ids=_eos_ids(g),
        )
        cfg.validate(str(g.path))
    except ConfigError as e:
        raise GGUFError(e.message) from None
    return cfg


def _vocab_guess(g: GGUFFile) -> int | None:
    """The vocabulary size when `{arch}.vocab_size` is absent: the token list, else the embedding rows."""
    tokens = g.get("tokenizer.ggml.tokens")
    if isinstance(tokens, (list, np.ndarray)):
        return len(tokens)
    embd = g.tensors.get("token_embd.weight")
    return embd.shape[0] if embd is not None else None


def _token_id(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _rope_scaling(g: GGUFFile, a: str) -> dict[str, Any] | None:
    kind = g.get(f"{a}.rope.scaling.type", "none")
    if kind in ("none", None):
        return None
    if kind == "linear":
        return {"rope_type": "linear", "factor": _float(g, f"{a}.rope.scaling.factor", 1.0)}
    raise GGUFError(f"{g.path}: unsupported rope scaling {kind!r:.60} (none, linear)")


def _eos_ids(g: GGUFFile) -> tuple[int, ...]:
    ids = [g.get(k) for k in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id")]
    return tuple(dict.fromkeys(i for i in map(_token_id, ids) if i is not None))


def hf_name(gguf_name: str) -> str | None:
    """Our (transformers-style) module name for a llama.cpp tensor name; None when unknown."""
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    m = _LAYER_RE.match(gguf_name)
    if m and m.group(2) in _LAYER_NAMES:
        return f"model.layers.{m.group(1)}.{_LAYER_NAMES[m.group(2)]}.{m.group(3)}"
    return None


def check_tensor_names(g: GGUFFile, cfg: ModelConfig) -> dict[str, str]:
    """Map every GGUF tensor to our name; errors name the first unexpected or missing tensor."""
    mapping: dict[str, str] = {}
    for name in g.tensors:
        if name == "rope_freqs.weight":
            # Llama 3.1-style per-frequency rope factors: our rotary table cannot take them yet.
            raise GGUFError(f"{g.path}: tensor 'rope_freqs.weight' (Llama 3.1 rope scaling) is not supported")
        ours = hf_name(name)
        layer = _LAYER_RE.match(name)
        if ours is None or (layer and int(layer.group(1)) >= cfg.num_hidden_layers):
            raise GGUFError(f"{g.path}: unexpected tensor {name!r} for a {cfg.model_type} model")
        mapping[ours] = name
    required = ["model.embed_tokens.weight", "model.norm.weight"]
    if not cfg.tie_word_embeddings:
        required.append("lm_head.weight")
    for i in range(cfg.num_hidden_layers):
        required += [f"model.layers.{i}.{m}.weight" for m in _LAYER_NAMES.values()]
    missing = [n for n in required if n not in mapping]
    if missing:
        gguf_names = {v: k for k, v in _gguf_names(cfg).items()}
        raise GGUFError(f"{g.path}: missing tensor {gguf_names.get(missing[0], missing[0])!r}")
    return mapping


def _gguf_names(cfg: ModelConfig) -> dict[str, str]:
    out = dict(_GLOBAL_NAMES)
    for i in range(cfg.num_hidden_layers):
        for short in _LAYER_NAMES:
            name = f"blk.{i}.{short}.weight"
            out[name] = hf_name(name) or name
    return out


def unpermute_rows(rows: torch.Tensor, n_head: int) -> torch.Tensor:
    """Undo llama.cpp's q/k row permutation (its converter interleaves each head's two rotary halves).

    The converter maps HF row (head, half, j) to GGUF row (head, j, half) so llama.cpp can rotate
    adjacent pairs; our model uses HF's rotate-half layout, so swap the axes back. Rows may be raw
    quantized bytes: quantization blocks run along a row, so whole rows move unchanged.
    """
    out_rows = rows.shape[0]
    if out_rows % (2 * n_head):
        raise GGUFError(f"q/k tensor with {out_rows} rows cannot be split into {n_head} heads")
    rest = rows.shape[1:]
    return rows.reshape(n_head, out_rows // n_head // 2, 2, *rest).transpose(1, 2).reshape(rows.shape)
