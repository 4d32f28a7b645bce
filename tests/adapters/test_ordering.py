"""`mistralrs x-lora-ordering`, the shipped ordering.json.template, and ordering checks against a model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mistralrs_cli.adapters.files import find_adapter, open_source
from mistralrs_cli.adapters.ordering import check_layers, parse_ordering
from mistralrs_cli.cli import app
from mistralrs_cli.cli.compose import build_model
from mistralrs_cli.cli.spec import model_spec
from mistralrs_cli.errors import AdapterError
from tests.adapters.helpers import ALL, write_adapter, write_ordering
from tests.adapters.test_xlora_oracle import build

TEMPLATE = Path(__file__).resolve().parents[2] / "ordering.json.template"
ZEPHYR = "HuggingFaceH4/zephyr-7b-beta"
runner = CliRunner()


def run(*args: str) -> tuple[int, str]:
    """`mistralrs x-lora-ordering ARGS` in process."""
    res = runner.invoke(app, ["x-lora-ordering", *args])
    return res.exit_code, res.output


def test_template_is_what_the_generator_writes(tmp_path):
    code, out = run("--num-layers", "32", "--base-model-id", ZEPHYR)
    assert code == 0, out
    assert out == TEMPLATE.read_text()
    data = json.loads(out)
    assert data["order"] == [] and len(data["layers"]) == 32 * 7 and data["base_model_id"] == ZEPHYR
    # The same from a config.json of the zephyr shape, written to a file.
    (tmp_path / "config.json").write_text(json.dumps({"num_hidden_layers": 32, "hidden_size": 4096}))
    code, out = run("--config", str(tmp_path / "config.json"), "--base-model-id", ZEPHYR, "-o", str(tmp_path / "o.json"))
    assert code == 0, out
    assert (tmp_path / "o.json").read_text() == TEMPLATE.read_text()


def test_from_base_folder_and_targets(tiny_mistral_dir):
    code, out = run("-m", str(tiny_mistral_dir), "--target-modules", "q_proj, v_proj", "-a", "x", "-a", "y")
    assert code == 0, out
    data = json.loads(out)
    assert data["order"] == ["x", "y"] and data["base_model_id"] == str(tiny_mistral_dir)
    assert list(data["layers"]) == [f"model.layers.{i}.self_attn.{p}" for i in range(2) for p in ("q_proj", "v_proj")]
    assert list(data["layers"].values()) == [0, 1, 2, 3]


def test_from_xlora_model_loads(tmp_path, adapter_dirs, tiny_mistral_dir):
    """Generated from the X-LoRA folder (names, adapted modules), the file loads as is."""
    xdir, ordering, *_ = build(tmp_path, adapter_dirs, "no-bias-subset-targets")
    out_file = tmp_path / "generated.json"
    code, out = run("-x", str(xdir), "-m", str(tiny_mistral_dir), "-o", str(out_file))
    assert code == 0, out
    data = json.loads(out_file.read_text())
    assert data["order"] == ["expert_0", "expert_1"] and len(data["layers"]) == 6
    assert data == json.loads(ordering.read_text()) | {"base_model_id": str(tiny_mistral_dir)}
    spec = model_spec("x-lora-mistral", model_id=str(tiny_mistral_dir), xlora_model_id=str(xdir), order=out_file,
                      dtype="f32", device="cpu")
    assert build_model(spec).model.layer_names == tuple(data["layers"])


@pytest.mark.parametrize("args, needle", [
    (("--num-layers", "2", "--target-modules", "qkv_proj"), "unknown target module 'qkv_proj'"),
    ((), "give exactly one of"),
    (("--config", "/nonexistent/config.json"), "unreadable config.json"),
])
def test_bad_options_exit_2(args, needle):
    code, out = run(*args)
    assert code == 2 and needle in out and len(out.strip().splitlines()) == 1, out


def test_ordering_layer_without_weights_is_rejected():
    """Adapters on q/v only, ordering generated for all seven projections."""
    ordering = parse_ordering({"order": ["a"], "layers": {f"model.layers.0.self_attn.{p}": i for i, p in
                                                          enumerate(("q_proj", "k_proj", "v_proj"))}})
    model_paths = {f"model.layers.0.{'mlp' if 'gate' in p or 'up' in p or 'down' in p else 'self_attn'}.{p}" for p in ALL}
    with pytest.raises(AdapterError, match="'model.layers.0.self_attn.k_proj' has no LoRA weights"):
        check_layers(ordering, model_paths, {"model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj"})


@pytest.mark.parametrize("raw, needle", [
    ({"order": "a"}, "'order' must be a list"),
    ({"order": ["a", "a"]}, "names adapter 'a' twice"),
    ({"order": ["a"], "layers": {"x": "0"}}, "integer indices"),
    ({"order": ["a"], "colour": 1}, "unknown field 'colour'"),
    ({"order": ["a"], "preload_adapters": [{"name": "b"}]}, "preload_adapters"),
])
def test_ordering_file_shape(raw, needle):
    with pytest.raises(AdapterError, match=needle):
        parse_ordering(raw)


def test_adapter_layouts(tmp_path, adapter_dirs):
    """Adapters found in a nested folder, flat with exact names, and flat by unique substring."""
    root = tmp_path / "x"
    shutil.copytree(adapter_dirs[0], root / "adapters" / "alpha")
    for f in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copy(adapter_dirs[1] / f, root / f"beta_{f}")
        shutil.copy(adapter_dirs[2] / f, root / f"gamma-v2.{f}")
    source, listing = open_source(str(root), "none", "test")
    assert find_adapter(source, listing, "alpha", "t").config == root / "adapters" / "alpha" / "adapter_config.json"
    assert find_adapter(source, listing, "beta", "t").weights == root / "beta_adapter_model.safetensors"
    assert find_adapter(source, listing, "gamma", "t").weights == root / "gamma-v2.adapter_model.safetensors"
    with pytest.raises(AdapterError, match="no files for adapter 'delta'"):
        find_adapter(source, listing, "delta", "t")


def test_lora_with_ordering_names_subfolders(tmp_path, adapter_dirs, tiny_mistral_dir):
    """mistral.rs's `lora-mistral -a REPO -o ordering.json`: order names subfolders of one repo."""
    repo = tmp_path / "repo"
    shutil.copytree(adapter_dirs[0], repo / "first")
    write_adapter(repo / "second", seed=5, targets=("q_proj",))
    ordering = write_ordering(tmp_path / "o.json", ["first", "second"])
    spec = model_spec("lora-mistral", model_id=str(tiny_mistral_dir), adapter=(str(repo),), order=ordering,
                      dtype="f32", device="cpu")
    loaded = build_model(spec)
    assert loaded.info["adapters"] == ["first", "second"] and loaded.info["lora_wrapped"] == 14
