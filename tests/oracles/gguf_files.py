"""Writing GGUF files in tests with `gguf.GGUFWriter`, the way llama.cpp's converter does.

`write_gguf_from_hf` takes a tiny transformers model and the byte-level tokenizer folder from
tiny_models.py and writes a llama-architecture GGUF: llama.cpp tensor names, the q/k row
permutation of convert_hf_to_gguf.py (each head's two rotary halves interleaved), weights
quantized with `gguf.quants.quantize`, and tokenizer.ggml.* metadata.
"""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import torch

Q = gguf.GGMLQuantizationType

_LAYER = {
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf.py's q/k permutation: HF rotate-half rows -> interleaved pairs."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_tensors(model, qtype: int = Q.F32) -> dict[str, tuple[np.ndarray, int]]:
    """{llama.cpp name: (array, ggml type)}: 2-D weights quantized to `qtype`, norms kept F32."""
    cfg = model.config
    out = {}
    for name, t in model.state_dict().items():
        w = t.detach().float().numpy()
        if name == "model.embed_tokens.weight":
            gname = "token_embd.weight"
        elif name == "model.norm.weight":
            gname = "output_norm.weight"
        elif name == "lm_head.weight":
            if cfg.tie_word_embeddings:
                continue
            gname = "output.weight"
        else:
            parts = name.split(".")  # model.layers.N.<module...>.weight
            module = ".".join(parts[3:-1])
            gname = f"blk.{parts[2]}.{_LAYER[module]}.{parts[-1]}"
            if module == "self_attn.q_proj":
                w = llama_cpp_permute(w, cfg.num_attention_heads)
            elif module == "self_attn.k_proj":
                w = llama_cpp_permute(w, cfg.num_key_value_heads)
        if w.ndim == 2 and qtype != Q.F32:
            out[gname] = (gguf.quants.quantize(w, qtype), qtype)
        else:
            out[gname] = (np.ascontiguousarray(w), Q.F32)
    return out


def write_gguf(path: Path, arch: str, metadata: dict, tensors: dict[str, tuple[np.ndarray, int]]) -> Path:
    """Write a GGUF with typed metadata {key: (GGUFValueType, value)} and tensors."""
    w = gguf.GGUFWriter(str(path), arch)
    for key, (vtype, value) in metadata.items():
        if vtype == gguf.GGUFValueType.ARRAY:
            w.add_array(key, value)
        else:
            w.add_key_value(key, value, vtype)
    for name, (arr, qtype) in tensors.items():
        w.add_tensor(name, arr, raw_dtype=None if qtype == Q.F32 else qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def llama_metadata(cfg, arch: str = "llama") -> dict:
    """The {arch}.* hyper-parameters llama.cpp's converter writes for a Llama/Mistral config."""
    V = gguf.GGUFValueType
    meta = {
        f"{arch}.block_count": (V.UINT32, cfg.num_hidden_layers),
        f"{arch}.context_length": (V.UINT32, cfg.max_position_embeddings),
        f"{arch}.embedding_length": (V.UINT32, cfg.hidden_size),
        f"{arch}.feed_forward_length": (V.UINT32, cfg.intermediate_size),
        f"{arch}.attention.head_count": (V.UINT32, cfg.num_attention_heads),
        f"{arch}.attention.head_count_kv": (V.UINT32, cfg.num_key_value_heads),
        f"{arch}.attention.key_length": (V.UINT32, cfg.head_dim),
        f"{arch}.attention.value_length": (V.UINT32, cfg.head_dim),
        f"{arch}.rope.dimension_count": (V.UINT32, cfg.head_dim),
        f"{arch}.rope.freq_base": (V.FLOAT32, float(cfg.rope_parameters["rope_theta"])),
        f"{arch}.attention.layer_norm_rms_epsilon": (V.FLOAT32, cfg.rms_norm_eps),
        f"{arch}.vocab_size": (V.UINT32, cfg.vocab_size),
    }
    window = getattr(cfg, "sliding_window", None)
    if window:
        meta[f"{arch}.attention.sliding_window"] = (V.UINT32, window)
    return meta


def byte_level_tokenizer_metadata(folder: Path) -> dict:
    """tokenizer.ggml.* for the tiny byte-level BPE tokenizer.json (gpt2 model) of tiny_models.py."""
    V = gguf.GGUFValueType
    tok = json.loads((folder / "tokenizer.json").read_text())
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    vocab = tok["model"]["vocab"]
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    special = {a["content"] for a in tok["added_tokens"] if a.get("special")}
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    return {
        "tokenizer.ggml.model": (V.STRING, "gpt2"),
        "tokenizer.ggml.pre": (V.STRING, "default"),
        "tokenizer.ggml.tokens": (V.ARRAY, tokens),
        "tokenizer.ggml.token_type": (V.ARRAY, [3 if t in special else 1 for t in tokens]),
        "tokenizer.ggml.merges": (V.ARRAY, merges),
        "tokenizer.ggml.bos_token_id": (V.UINT32, vocab["<s>"]),
        "tokenizer.ggml.eos_token_id": (V.UINT32, vocab["</s>"]),
        "tokenizer.ggml.unknown_token_id": (V.UINT32, vocab["<unk>"]),
        "tokenizer.ggml.add_bos_token": (V.BOOL, True),
        "tokenizer.chat_template": (V.STRING, cfg["chat_template"]),
    }


def write_gguf_from_hf(model, tokenizer_folder: Path, path: Path, qtype: int = Q.F32) -> Path:
    """A llama-architecture GGUF of a tiny transformers model, as llama.cpp's converter writes it."""
    meta = llama_metadata(model.config)
    meta.update(byte_level_tokenizer_metadata(tokenizer_folder))
    return write_gguf(path, "llama", meta, gguf_tensors(model, qtype))


def dequantized_copy(model, qtype: int):
    """The transformers model with every 2-D weight replaced by its `qtype` round trip (the oracle
    for a quantized GGUF: same quantization, then exact float math)."""
    import copy

    twin = copy.deepcopy(model)
    with torch.no_grad():
        for p in twin.parameters():
            if p.ndim == 2:
                w = p.detach().float().numpy()
                p.copy_(torch.from_numpy(gguf.quants.dequantize(gguf.quants.quantize(w, qtype), qtype)))
    return twin
