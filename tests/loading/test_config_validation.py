"""Broken config values end in one line naming the file and the field (exit 2), models that can
only produce NaN are refused at load, and valid configs of every supported shape still load."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import gguf
import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from mistralrs_cli.cli import app
from mistralrs_cli.cli.compose import build_model
from mistralrs_cli.cli.spec import model_spec
from mistralrs_cli.errors import ConfigError, GGUFError, WeightError
from mistralrs_cli.loading.hf_config import config_from_hf
from tests.oracles.gguf_files import (
    byte_level_tokenizer_metadata,
    gguf_tensors,
    llama_metadata,
    write_gguf,
)
from tests.oracles.tiny_models import tiny_hf_model

V = gguf.GGUFValueType
NAN, INF = float("nan"), float("inf")
runner = CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1"})


@pytest.fixture
def hf_copy(tiny_mistral_dir, tmp_path):
    """A copy of the tiny Mistral folder (weights linked) whose config.json a test may edit."""
    folder = tmp_path / "model"
    folder.mkdir()
    for f in tiny_mistral_dir.iterdir():
        if f.name == "model.safetensors":
            (folder / f.name).symlink_to(f)
        else:
            (folder / f.name).write_bytes(f.read_bytes())
    return folder


def _set_config(folder: Path, raw: object = None, **changes: object) -> None:
    path = folder / "config.json"
    if raw is None:
        raw = {**json.loads(path.read_text()), **changes}
    path.write_text(json.dumps(raw))


def _load_hf(folder: Path):
    return build_model(model_spec("mistral", model_id=str(folder), device="cpu"))


def _one_line(err: pytest.ExceptionInfo, *needles: str) -> None:
    message = str(err.value)
    assert "\n" not in message, message
    for needle in needles:
        assert needle in message, message


@pytest.mark.parametrize("raw", [[], "x", 5, None])
def test_config_that_is_not_an_object(hf_copy, raw):
    (hf_copy / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ConfigError) as err:
        _load_hf(hf_copy)
    _one_line(err, str(hf_copy / "config.json"), "must be a JSON object")


@pytest.mark.parametrize("field, value, needle", [
    ("hidden_size", INF, "invalid hidden_size: input should be a valid integer (got inf)"),
    ("vocab_size", -5, "invalid vocab_size: input should be greater than or equal to 1"),
    ("num_hidden_layers", 10**6, "invalid num_hidden_layers"),
    ("num_attention_heads", 2**32 - 1, "invalid num_attention_heads"),
    ("partial_rotary_factor", "0.5", "invalid partial_rotary_factor: input should be a valid number"),
    ("rms_norm_eps", -64, "invalid rms_norm_eps: input should be greater than 0"),
    ("rms_norm_eps", NAN, "invalid rms_norm_eps: input should be a finite number"),
    ("rope_parameters", {"rope_theta": NAN, "rope_type": "default"}, "invalid rope_parameters.rope_theta"),
    ("rope_scaling", {"rope_type": "linear", "factor": 0}, "invalid rope_scaling.factor"),
    ("rope_scaling", {"rope_type": "linear"}, "rope_scaling type 'linear' needs rope_scaling.factor"),
    ("rope_scaling", {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 64}, "high_freq_factor (4.0) must be greater"),
    ("eos_token_id", [2, "x"], "invalid eos_token_id.1"),
    ("tie_word_embeddings", 1, "invalid tie_word_embeddings: input should be a valid boolean"),
])
def test_bad_hf_values_name_the_field(hf_copy, field, value, needle):
    _set_config(hf_copy, **{field: value})
    with pytest.raises(ConfigError) as err:
        _load_hf(hf_copy)
    _one_line(err, str(hf_copy / "config.json"), needle)


def test_hidden_size_below_head_count_is_named(hf_copy):
    _set_config(hf_copy, hidden_size=2, head_dim=None)
    with pytest.raises(ConfigError) as err:
        _load_hf(hf_copy)
    _one_line(err, "hidden_size 2 is smaller than num_attention_heads 4")


@pytest.mark.parametrize("content, needle", [
    (b"\xff\xfe{", "unreadable config.json"),
    (b"[" * 100_000, "unreadable config.json"),
])
def test_unreadable_config_json(hf_copy, content, needle):
    (hf_copy / "config.json").write_bytes(content)
    with pytest.raises(ConfigError) as err:
        _load_hf(hf_copy)
    _one_line(err, needle)


def test_bad_generation_config_is_one_line(hf_copy):
    (hf_copy / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, "x"]}))
    with pytest.raises(ConfigError) as err:
        _load_hf(hf_copy)
    _one_line(err, "generation_config.json", "invalid eos_token_id")


def test_linear_rope_without_factor_exits_2_in_one_line(hf_copy):
    """It used to load, report healthy, then fail every request with KeyError: 'factor'."""
    _set_config(hf_copy, rope_scaling={"rope_type": "linear"})
    res = runner.invoke(app, ["chat", "--max-tokens", "2", "mistral", "-m", str(hf_copy)], input="Hello")
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert res.exit_code == 2 and len(lines) == 1 and "Traceback" not in res.output, res.output
    assert "rope_scaling.factor" in res.output


def test_valid_rope_variants_still_load(hf_copy):
    """Old and transformers-5 spellings of the supported rope types, and a config with nulls."""
    llama3 = {"rope_type": "llama3", "factor": 8, "low_freq_factor": 1, "high_freq_factor": 4,
              "original_max_position_embeddings": 64}
    for changes in (
        {"rope_scaling": {"type": "linear", "factor": 2.0}},
        {"rope_parameters": {**llama3, "rope_theta": 500000.0}},
        {"rope_scaling": None, "head_dim": None, "bos_token_id": None, "sliding_window": None, "architectures": None},
        {"partial_rotary_factor": 0.5, "eos_token_id": [2, 1]},
    ):
        _set_config(hf_copy, **changes)
        loaded = _load_hf(hf_copy)
        assert loaded.config.rope_theta > 0
    assert loaded.config.rotary_dim == 8 and loaded.config.eos_token_ids == (2, 1)
    # An empty rope_scaling defers to transformers 5's rope_parameters.
    _set_config(hf_copy, rope_scaling={}, rope_parameters={**llama3, "rope_theta": 500000.0})
    cfg = _load_hf(hf_copy).config
    assert cfg.rope_theta == 500000.0 and cfg.rope_scaling["rope_type"] == "llama3"


def test_transformers_config_dict_round_trips():
    """config_from_hf accepts what transformers itself writes (extra keys, nulls)."""
    for kind in ("mistral", "llama"):
        hf = tiny_hf_model(kind)
        cfg = config_from_hf(hf.config.to_dict())
        assert (cfg.hidden_size, cfg.num_key_value_heads, cfg.head_dim) == (64, 2, 16)


# --- NaN models refused by the smoke forward ---------------------------------------------------


def _poison(folder: Path, name: str, value: float) -> None:
    """Replace the linked weights with a copy where one element of `name` is `value`."""
    path = folder / "model.safetensors"
    tensors = load_file(str(path))
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[3] = value
    path.unlink()
    save_file(tensors, str(path))


@pytest.mark.parametrize("name", [
    "model.layers.0.input_layernorm.weight",
    # Only visible from the second token: one key gets attention weight 1 whatever q and k hold.
    "model.layers.1.self_attn.q_proj.weight",
    "model.layers.0.self_attn.k_proj.weight",
])
def test_nan_weights_are_refused_at_load(hf_copy, name):
    _poison(hf_copy, name, NAN)
    with pytest.raises(WeightError) as err:
        _load_hf(hf_copy)
    _one_line(err, hf_copy.name, "NaN logits", "test input")


def test_a_healthy_model_passes_the_smoke_forward(hf_copy):
    loaded = _load_hf(hf_copy)
    with torch.no_grad():
        logits = loaded.model(torch.tensor([[1, 1]]), torch.tensor([[0, 1]]))
    assert torch.isfinite(logits).all()


# --- GGUF metadata ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gguf_parts(tiny_mistral_dir):
    hf = tiny_hf_model("llama", seed=3)
    meta = llama_metadata(hf.config)
    meta.update(byte_level_tokenizer_metadata(tiny_mistral_dir))
    return meta, gguf_tensors(hf)


def _gguf(tmp_path: Path, parts, edit: dict, drop: tuple[str, ...] = ()) -> Path:
    meta, tensors = parts
    meta = {k: v for k, v in {**meta, **edit}.items() if k not in drop}
    return write_gguf(tmp_path / "m.gguf", "llama", meta, tensors)


@pytest.mark.parametrize("edit, needle", [
    ({"llama.attention.head_count": (V.UINT32, 2**32 - 1)}, "'llama.attention.head_count' must be between 1 and"),
    ({"llama.rope.freq_base": (V.FLOAT32, NAN)}, "'llama.rope.freq_base' must be a finite number > 0, got nan"),
    ({"llama.attention.layer_norm_rms_epsilon": (V.FLOAT32, NAN)}, "'llama.attention.layer_norm_rms_epsilon' must be"),
    ({"llama.attention.layer_norm_rms_epsilon": (V.FLOAT32, -64.0)}, "got -64.0"),
    ({"llama.rope.scaling.type": (V.STRING, "linear"), "llama.rope.scaling.factor": (V.FLOAT32, 0.0)},
     "'llama.rope.scaling.factor' must be a finite number > 0"),
    ({"llama.block_count": (V.UINT32, 2**32 - 1)}, "'llama.block_count' must be between 1 and 1024"),
    ({"llama.rope.dimension_count": (V.UINT32, 17)}, "'llama.rope.dimension_count' must be between 2 and 16"),
])
def test_bad_gguf_metadata_names_the_key(tmp_path, gguf_parts, edit, needle):
    path = _gguf(tmp_path, gguf_parts, edit)
    with pytest.raises(GGUFError) as err:
        build_model(model_spec("gguf-mistral", quantized_filename=str(path)))
    _one_line(err, str(path), needle)


@pytest.mark.parametrize("width", [1, 2, 7])
def test_narrow_embedding_is_one_line_not_zero_division(tmp_path, gguf_parts, width):
    """Without key_length the head size is embedding_length // head_count: 0 used to divide by zero."""
    path = _gguf(tmp_path, gguf_parts, {"llama.embedding_length": (V.UINT32, width)},
                 drop=("llama.attention.key_length", "llama.rope.dimension_count"))
    with pytest.raises((GGUFError, WeightError)) as err:
        build_model(model_spec("gguf-mistral", quantized_filename=str(path)))
    _one_line(err, str(path))


def test_relabelled_tensor_type_is_caught_in_place(tmp_path, gguf_parts):
    """An F32 norm whose type id is edited to Q5_0 in the file: the bytes no longer fit the type."""
    path = _gguf(tmp_path, gguf_parts, {})
    data = bytearray(path.read_bytes())
    key = b"blk.0.ffn_norm.weight"
    pos = data.index(struct.pack("<Q", len(key)) + key) + 8 + len(key)
    n_dims = struct.unpack_from("<I", data, pos)[0]
    struct.pack_into("<I", data, pos + 4 + 8 * n_dims, int(gguf.GGMLQuantizationType.Q5_0))
    path.write_bytes(bytes(data))
    with pytest.raises(GGUFError) as err:
        build_model(model_spec("gguf-mistral", quantized_filename=str(path)))
    _one_line(err, "'blk.0.ffn_norm.weight' (Q5_0, 44 bytes) is followed by 192 unexplained bytes")
