"""Seeded fuzz of what the loaders read: GGUF headers, metadata and tensor data, HF config.json
values, X-LoRA and LoRA config values. Every variant must end in a one-line MistralrsError naming
the file, or in a model whose smoke forward (the loader's: the first token, then a second one)
is finite: never another exception, a hang, or a NaN model accepted. Run with -s for the counts."""

from __future__ import annotations

import json
import random
import shutil
import signal
import struct
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from mistralrs_cli.cli.compose import build_model
from mistralrs_cli.cli.spec import model_spec
from mistralrs_cli.errors import MistralrsError
from mistralrs_cli.loading.loaded import LoadedModel
from tests.adapters.helpers import (
    ALL,
    classifier_weights,
    write_adapter,
    write_ordering,
    write_xlora,
)
from tests.oracles.gguf_files import (
    byte_level_tokenizer_metadata,
    gguf_tensors,
    llama_metadata,
    write_gguf,
)
from tests.oracles.tiny_models import tiny_hf_model

V = gguf.GGUFValueType
Q = gguf.GGMLQuantizationType
SEED = 12
NAN, INF = float("nan"), float("inf")
# A hang guard, not a speed bound: a variant that is still loading after this long is stuck.
HANG_SECONDS = 300


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models on one thread: a second one only adds OpenMP waits when the other core is busy."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


class _Hang(BaseException):
    """Raised by the alarm; a BaseException so loaders' `except Exception` cannot swallow it."""


@contextmanager
def _hang_guard(label: str) -> Iterator[None]:
    def fire(signum, frame):
        raise _Hang(label)

    old = signal.signal(signal.SIGALRM, fire)
    signal.alarm(HANG_SECONDS)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


class Outcomes:
    """Counts of clean errors and finite models; anything else is a failure with its label."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.kinds: Counter[str] = Counter()
        self.failures: list[str] = []

    def run(self, label: str, names: tuple[str, ...], load: Callable[[], LoadedModel]) -> None:
        """Load one variant; its error must be one line naming one of `names` (file or folder)."""
        try:
            with _hang_guard(label):
                loaded = load()
                logits = _smoke_logits(loaded)
        except _Hang:
            self.failures.append(f"{label}: still loading after {HANG_SECONDS} s")
            return
        except MistralrsError as e:
            msg = str(e)
            if "\n" in msg or not any(n in msg for n in names):
                self.failures.append(f"{label}: error not one line naming {names[0]}: {msg!r}")
            else:
                self.counts["clean error"] += 1
                self.kinds[type(e).__name__] += 1
            return
        except Exception as e:
            tb = traceback.format_exception(type(e), e, e.__traceback__)[-3:]
            self.failures.append(f"{label}: {type(e).__name__}: {e} | {''.join(tb)!r:.400}")
            return
        if bool(torch.isfinite(logits).all()):
            self.counts["finite model"] += 1
        else:
            self.failures.append(f"{label}: accepted a model with non-finite logits")

    def check(self, family: str, n: int) -> None:
        """No failures, every variant counted, both outcomes seen; print the counts."""
        print(f"\n{family}: {n} variants: {dict(self.counts)}; errors by type: {dict(self.kinds)}")
        assert not self.failures, f"{len(self.failures)} bad outcomes:\n" + "\n".join(self.failures[:20])
        assert sum(self.counts.values()) == n
        # Both outcomes must be common, or the variants test little (or the loader refuses all).
        assert self.counts["clean error"] >= n // 5 and self.counts["finite model"] >= n // 10, self.counts


@torch.no_grad()
def _smoke_logits(loaded: LoadedModel) -> torch.Tensor:
    """Logits of the loader's smoke input, one token alone and then two (bos, else token 0)."""
    cfg = loaded.config
    token = cfg.bos_token_id if cfg.bos_token_id is not None and cfg.bos_token_id < cfg.vocab_size else 0
    one = loaded.model(torch.tensor([[token]]), torch.tensor([[0]]))
    two = loaded.model(torch.tensor([[token, token]]), torch.tensor([[0, 1]]))
    return torch.cat([one.reshape(-1), two.reshape(-1)])


def _pick(rng: random.Random, pool: list) -> object:
    return pool[rng.randrange(len(pool))]


# --- HF config.json -------------------------------------------------------------------------

_ANY = [None, True, False, 0, 1, 2, 3, 7, -1, -64, 2**31, 2**63, 10**30, 0.5, 1.0, 1e-6, 1e30, NAN, INF, -INF,
        "x", "64", "", [], [1], {}, {"a": 1}]
_ROPE = [
    {"rope_type": "linear"}, {"rope_type": "linear", "factor": 0}, {"rope_type": "linear", "factor": NAN},
    {"type": "linear", "factor": 2.0}, {"rope_type": "linear", "factor": -1}, {"rope_type": "linear", "factor": "2"},
    {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
     "original_max_position_embeddings": 64},
    {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 1.0,
     "original_max_position_embeddings": 64},
    {"rope_type": "llama3", "factor": 8.0}, {"rope_type": "yarn", "factor": 2.0}, {"rope_type": "dynamic"},
    {"rope_type": 5}, {"rope_type": "default"}, {"factor": INF}, {}, None,
]
_HF_PLAUSIBLE = {
    "vocab_size": [320, 640, 319], "hidden_size": [64, 32, 63, 1, 2, 7], "intermediate_size": [128, 64],
    "num_hidden_layers": [2, 1, 3, 10**6], "num_attention_heads": [4, 8, 3, 2**32 - 1],
    "num_key_value_heads": [2, 4, 1, 3, None], "head_dim": [16, 8, 15, None], "max_position_embeddings": [256, 16, 1],
    "rms_norm_eps": [1e-6, 1e-3, 1e-12, 0.0, -64.0, NAN], "rope_theta": [10000.0, 500000.0, 1.0, 0.0, NAN, -1.0],
    "partial_rotary_factor": [1.0, 0.5, 0.25, 0.3, 0.0, 2.0, "0.5"], "sliding_window": [8, 4, 0, 1, None, 4096],
    "use_sliding_window": [False, True], "tie_word_embeddings": [True, False], "attention_bias": [True, False],
    "mlp_bias": [False, True], "hidden_act": ["silu", "gelu", "swish"], "model_type": ["mistral", "llama", "qwen2"],
    "architectures": [["MistralForCausalLM"], ["LlamaForCausalLM"], ["BertModel"], "MistralForCausalLM"],
    "bos_token_id": [1, 0, 319, 5000, None], "eos_token_id": [2, [2, 3], [], None, [2, "x"]],
}


def _hf_variant(rng: random.Random, base: dict) -> tuple[object, str]:
    if rng.random() < 0.04:
        raw = _pick(rng, [[], "x", 5, None, [base]])
        return raw, f"config is {raw!r:.30}"
    cfg = dict(base)
    changes = []
    for _ in range(rng.choice((1, 1, 2))):
        key = _pick(rng, [*_HF_PLAUSIBLE, "rope_scaling", "rope_parameters"])
        if key == "rope_scaling":
            value = _pick(rng, _ROPE)
        elif key == "rope_parameters":
            value = {**(_pick(rng, _ROPE) or {}), "rope_theta": _pick(rng, [10000.0, NAN, 0, "1e4"])}
        elif rng.random() < 0.7:
            value = _pick(rng, _HF_PLAUSIBLE[key])
        else:
            value = _pick(rng, _ANY)
        if rng.random() < 0.08:
            cfg.pop(key, None)
            changes.append(f"-{key}")
        else:
            cfg[key] = value
            changes.append(f"{key}={value!r}")
    return cfg, ", ".join(changes)


def test_fuzzed_hf_configs_load_or_fail_in_one_line(tiny_mistral_dir, tmp_path):
    base = json.loads((tiny_mistral_dir / "config.json").read_text())
    rng, out, n = random.Random(SEED), Outcomes(), 100
    for i in range(n):
        raw, label = _hf_variant(rng, base)
        folder = tmp_path / f"hf{i}"
        folder.mkdir()
        for f in tiny_mistral_dir.iterdir():
            if f.name != "config.json":
                (folder / f.name).symlink_to(f)
        (folder / "config.json").write_text(json.dumps(raw))
        spec = model_spec("mistral", model_id=str(folder), device="cpu")
        out.run(f"hf{i} {label}", (folder.name,), lambda spec=spec: build_model(spec))
        shutil.rmtree(folder)
    out.check("HF config.json", n)


# --- GGUF headers, metadata and tensor data -------------------------------------------------------

_META_KEYS = [
    "llama.embedding_length", "llama.attention.head_count", "llama.attention.head_count_kv",
    "llama.attention.key_length", "llama.rope.dimension_count", "llama.block_count", "llama.feed_forward_length",
    "llama.context_length", "llama.vocab_size", "llama.rope.freq_base", "llama.attention.layer_norm_rms_epsilon",
    "llama.rope.scaling.type", "llama.rope.scaling.factor", "llama.attention.sliding_window", "general.alignment",
    "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
]
_INTS = [0, 1, 2, 3, 7, 8, 16, 31, 32, 63, 64, 128, 320, 2**16, 2**31 - 1, 2**32 - 1, 2**63 - 1]
_FLOATS = [NAN, INF, -INF, 0.0, -0.0, -64.0, 1e-30, 1e-6, 0.5, 1.0, 2.0, 1e4, 1e30]
_STRINGS = ["", "x", "linear", "none", "yarn", "llama"]


def _gguf_value(rng: random.Random, original: tuple | None) -> tuple:
    r = rng.random()
    if original is not None and r < 0.25 and isinstance(original[1], (int, float)):
        vtype, value = original
        scaled = _pick(rng, [value * 2, value / 2, value + 1, value - 1])
        if vtype in (V.FLOAT32, V.FLOAT64):
            return vtype, float(scaled)
        return (V.UINT32, int(scaled)) if 0 <= scaled < 2**32 else (V.INT64, int(scaled))
    if r < 0.55:
        value = _pick(rng, _INTS)
        return (V.UINT32 if value < 2**32 else V.UINT64), value
    if r < 0.65:
        return _pick(rng, [V.INT32, V.INT64]), _pick(rng, [-1, -2, -(2**31)])
    if r < 0.85:
        return _pick(rng, [V.FLOAT32, V.FLOAT64]), _pick(rng, _FLOATS)
    if r < 0.93:
        return V.STRING, _pick(rng, _STRINGS)
    if r < 0.97:
        return V.BOOL, rng.random() < 0.5
    return V.ARRAY, _pick(rng, [[1, 2], ["a"], [0.5]])


def _entry(data: bytearray, name: str) -> int:
    """Byte position of a tensor's dimension count in the directory (just after its name)."""
    key = struct.pack("<Q", len(name)) + name.encode()
    return data.index(key) + len(key)


def _patch_directory(rng: random.Random, data: bytearray, names: list[str]) -> str:
    name = _pick(rng, names)
    pos = _entry(data, name)
    n_dims = struct.unpack_from("<I", data, pos)[0]
    type_pos = pos + 4 + 8 * n_dims
    what = rng.random()
    if what < 0.4:
        new = _pick(rng, [int(t) for t in Q] + [99, 2**32 - 1])
        struct.pack_into("<I", data, type_pos, new)
        return f"{name} type {new}"
    if what < 0.75:
        old = struct.unpack_from("<Q", data, type_pos + 4)[0]
        new = (old + _pick(rng, [1, -1, 32, -32, 64, -64, 4096, 2**40, -old])) % 2**64
        struct.pack_into("<Q", data, type_pos + 4, new)
        return f"{name} offset {old}->{new}"
    if what < 0.95:
        d = rng.randrange(n_dims)
        old = struct.unpack_from("<Q", data, pos + 4 + 8 * d)[0]
        new = _pick(rng, [0, 1, 2, 31, 32, 33, old * 2, old // 2, 2**32, 2**62])
        struct.pack_into("<Q", data, pos + 4 + 8 * d, new)
        return f"{name} dim{d} {old}->{new}"
    new = _pick(rng, [0, 1, 3, 5])
    struct.pack_into("<I", data, pos, new)
    return f"{name} n_dims {n_dims}->{new}"


def _poison(rng: random.Random, tensors: dict) -> str:
    """One tensor's data given a NaN, an infinity or huge values."""
    name = _pick(rng, sorted(tensors))
    arr, qtype = tensors[name]
    arr = arr.copy()
    if qtype == Q.F32:
        value = _pick(rng, [NAN, INF, -INF, 3e38])
        if rng.random() < 0.3:
            arr *= np.float32(1e30)
            value = "x1e30"
        else:
            arr.reshape(-1)[rng.randrange(arr.size)] = value
    else:  # Q8_0: each 34-byte block starts with its f16 scale; make one NaN or infinite
        block = rng.randrange(arr.size // 34)
        value = _pick(rng, [b"\x00\x7e", b"\x00\x7c", b"\xff\x7b"])
        arr.reshape(-1)[block * 34 : block * 34 + 2] = np.frombuffer(value, np.uint8)
    tensors[name] = (arr, qtype)
    return f"{name} data {value!r}"


@pytest.fixture(scope="module")
def gguf_parts(tiny_mistral_dir):
    """(metadata, {qtype: tensors}) of a tiny Llama GGUF with the tiny byte-level tokenizer."""
    hf = tiny_hf_model("llama", seed=3)
    meta = llama_metadata(hf.config)
    meta.update(byte_level_tokenizer_metadata(tiny_mistral_dir))
    return meta, {Q.F32: gguf_tensors(hf), Q.Q8_0: gguf_tensors(hf, Q.Q8_0)}


def test_fuzzed_gguf_files_load_or_fail_in_one_line(gguf_parts, tmp_path):
    base_meta, by_type = gguf_parts
    rng, out, n = random.Random(SEED), Outcomes(), 120
    for i in range(n):
        meta, tensors = dict(base_meta), dict(by_type[_pick(rng, [Q.F32, Q.Q8_0])])
        arch, kind, changes = "llama", rng.random(), []
        if kind < 0.5:
            for _ in range(rng.choice((1, 1, 2))):
                key = _pick(rng, _META_KEYS)
                if key in meta and rng.random() < 0.15:
                    del meta[key]
                    changes.append(f"-{key}")
                else:
                    meta[key] = _gguf_value(rng, meta.get(key))
                    changes.append(f"{key}={meta[key][1]!r}")
            if rng.random() < 0.03:
                arch = _pick(rng, ["mistral", "qwen2"])
                changes.append(f"arch {arch}")
        elif kind < 0.8:
            changes.append("directory")
        else:
            changes.append(_poison(rng, tensors))
        path = tmp_path / f"g{i}.gguf"
        write_gguf(path, arch, meta, tensors)
        if changes == ["directory"]:
            data = bytearray(path.read_bytes())
            changes = [_patch_directory(rng, data, sorted(tensors))]
            path.write_bytes(bytes(data))
        dtype = _pick(rng, ["auto", "f32"])
        spec = model_spec("gguf-mistral", quantized_filename=str(path), dtype=dtype, device="cpu")
        out.run(f"g{i} ({dtype}) {'; '.join(changes)}", (path.name,), lambda spec=spec: build_model(spec))
        path.unlink()
    out.check("GGUF", n)


# --- X-LoRA: xlora_config.json and the adapters' adapter_config.json -----------------------------

_XLORA_VALUES = {
    "hidden_size": [64, 32, 0], "adapters": [["expert_0", "expert_1"], ["expert_0"], [], ["expert_0", "expert_0"], {}, 5],
    "enable_softmax": [True, False], "enable_softmax_topk": [True, False], "layerwise_scalings": [True, False],
    "xlora_depth": [1, 2, 0], "xlora_size": [16, 8, None, 0], "enable_relu_and_dropout": [True, False],
    "use_bias": [True, False], "softmax_temperature": [1.0, 0.1, 0, -1, 1e-30, 1e30],
    "top_k_lora": [1, 2, 3, None, 0], "scaling_pass_value": [0.0, None, 0.5, 1e30],
    "global_scaling_weight": [1.0, 0.0, -1.0, 1e3, 1e30], "xlora_dropout_p": [0.0, 0.5, 1.0, -0.1],
    "base_model_id": ["someone/else", None, 5], "peft_type": ["XLORA", "LORA"], "gating": ["hard"],
}
_LORA_VALUES = {
    "r": [4, 8, 0, -1, 4.0, "4"], "lora_alpha": [8, 0, -8, 1e30, "8"], "use_rslora": [True, False, "yes"],
    "target_modules": [list(ALL), ["q_proj"], "all-linear", ".*", "(q_proj", 1, [1], None, []],
    "exclude_modules": [["q_proj"], "down_proj", "(", None, 3],
    "layers_to_transform": [[0], [0, 1], 0, 1, 5, -1, [1.5], None],
    "rank_pattern": [{"q_proj": 8}, {"q_proj": 4}, {"q_proj": -1}, {"(": 4}, {"x(?i)": 4}, {"q_proj": "4"}, [], None],
    "alpha_pattern": [{"q_proj": 16}, {"q_proj": NAN}, {"q_proj": "x"}, None],
    "bias": ["none", "all", None], "peft_type": ["LORA", "IA3"], "use_dora": [True, False],
    "lora_dropout": [0.1, NAN], "init_lora_weights": [True, "gaussian"],
}


@pytest.fixture(scope="module")
def xlora_parts(tmp_path_factory):
    """A valid X-LoRA folder over the tiny Mistral (two adapters on every projection) and its ordering."""
    root = tmp_path_factory.mktemp("xlora-fuzz")
    adapters = {f"expert_{i}": write_adapter(root / f"a{i}", seed=20 + i, r=4, alpha=8) for i in range(2)}
    xdir = write_xlora(root / "x", adapters, {}, classifier_weights(2, 14, 1))
    return xdir, write_ordering(root / "ordering.json", list(adapters))


def _copy_tree(src: Path, dst: Path) -> None:
    """JSON files copied (they get edited), weights linked."""
    for f in src.rglob("*"):
        target = dst / f.relative_to(src)
        if f.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        elif f.suffix == ".json":
            shutil.copy(f, target)
        else:
            target.symlink_to(f)


def _edit(path: Path, key: str, value: object, rng: random.Random) -> str:
    data = json.loads(path.read_text())
    if rng.random() < 0.08 and key in data:
        del data[key]
        path.write_text(json.dumps(data))
        return f"{path.parent.name}/{path.name} -{key}"
    data[key] = value
    path.write_text(json.dumps(data))
    return f"{path.parent.name}/{path.name} {key}={value!r}"


def test_fuzzed_xlora_configs_load_or_fail_in_one_line(xlora_parts, tiny_mistral_dir, tmp_path):
    src, ordering = xlora_parts
    rng, out, n = random.Random(SEED), Outcomes(), 80
    for i in range(n):
        xdir = tmp_path / f"x{i}"
        xdir.mkdir()
        _copy_tree(src, xdir)
        changes = []
        for _ in range(rng.choice((1, 1, 2))):
            if rng.random() < 0.5:
                key = _pick(rng, sorted(_XLORA_VALUES))
                changes.append(_edit(xdir / "xlora_config.json", key, _pick(rng, _XLORA_VALUES[key]), rng))
            else:
                key = _pick(rng, sorted(_LORA_VALUES))
                value = _pick(rng, _LORA_VALUES[key])
                for expert in ("expert_0", "expert_1") if rng.random() < 0.5 else (_pick(rng, ["expert_0", "expert_1"]),):
                    changes.append(_edit(xdir / expert / "adapter_config.json", key, value, rng))
        spec = model_spec("x-lora-mistral", model_id=str(tiny_mistral_dir), xlora_model_id=str(xdir),
                          order=ordering, device="cpu")
        out.run(f"x{i} {'; '.join(changes)}", (xdir.name, ordering.name), lambda spec=spec: build_model(spec))
        shutil.rmtree(xdir)
    out.check("X-LoRA", n)

