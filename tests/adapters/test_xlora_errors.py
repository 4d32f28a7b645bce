"""Bad X-LoRA inputs: one-line AdapterError messages and exit code 2 from the CLI; base id checks."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from mistralrs_cli.cli import app
from mistralrs_cli.cli.compose import build_model
from mistralrs_cli.cli.spec import model_spec
from mistralrs_cli.errors import AdapterError
from tests.adapters.test_xlora_oracle import build

runner = CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1"})


@pytest.fixture
def xlora(tmp_path, adapter_dirs):
    """A valid X-LoRA folder (adapters expert_0, expert_1 in subfolders) and its ordering file."""
    xdir, ordering, *_ = build(tmp_path, adapter_dirs, "depth1-global-2ad")
    return xdir, ordering


def run_cli(base, xdir, ordering, *extra):
    args = ["chat", "--max-tokens", "4", "x-lora-mistral", "-m", str(base), "-x", str(xdir), *extra]
    if ordering is not None:
        args += ["-o", str(ordering)]
    res = runner.invoke(app, args, input="Hello")
    return res.exit_code, res.output


def edit_json(path, **changes):
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_valid_folder_chats(xlora, tiny_mistral_dir):
    code, out = run_cli(tiny_mistral_dir, *xlora, "--tgt-non-granular-index", "1")
    assert code == 0, out


def _missing_weights(x, o):
    (x / "expert_1" / "adapter_model.safetensors").unlink()


def _missing_adapter(x, o):
    for f in (x / "expert_1").iterdir():
        f.unlink()
    (x / "expert_1").rmdir()


def _rank_mismatch(x, o):
    edit_json(x / "expert_0" / "adapter_config.json", r=8)


def _shape_mismatch(x, o):
    path = x / "expert_0" / "adapter_model.safetensors"
    tensors = load_file(str(path))
    key = "base_model.model.model.layers.1.mlp.down_proj.lora_A.weight"
    tensors[key] = torch.zeros(4, 96)
    save_file(tensors, str(path))


def _classifier_depth(x, o):
    edit_json(x / "xlora_config.json", xlora_depth=2, xlora_size=16)


CASES = {
    "missing adapter weights": (_missing_weights, ["expert_1", "adapter_model.safetensors"]),
    "missing adapter folder": (_missing_adapter, ["no files for adapter 'expert_1'"]),
    "unknown adapter in order": (lambda x, o: edit_json(o, order=["expert_0", "nope"]), ["unknown adapter 'nope'"]),
    "adapter left out of order": (lambda x, o: edit_json(o, order=["expert_0"]), ["leaves out adapter 'expert_1'"]),
    "unknown layer": (
        lambda x, o: edit_json(o, layers={**json.loads(o.read_text())["layers"], "model.layers.5.self_attn.q_proj": 14}),
        ["model.layers.5.self_attn.q_proj", "not a module"]),
    "indices not dense": (
        lambda x, o: edit_json(o, layers={**json.loads(o.read_text())["layers"], "model.layers.1.mlp.down_proj": 20}),
        ["layer indices must be 0..13"]),
    "adapted layer not listed": (
        lambda x, o: edit_json(o, layers={k: i for i, k in enumerate(
            k for k in json.loads(o.read_text())["layers"] if "down" not in k)}),
        ["model.layers.0.mlp.down_proj", "which 'layers' does not list"]),
    "rank mismatch": (_rank_mismatch, ["rank 4", "r=8"]),
    "shape mismatch": (_shape_mismatch, ["down_proj", "do not fit", "(4, 96)"]),
    "depth 0": (lambda x, o: edit_json(x / "xlora_config.json", xlora_depth=0), ["xlora_depth must be an integer >= 1"]),
    "unknown config field": (lambda x, o: edit_json(x / "xlora_config.json", gating="hard"), ["unknown field 'gating'"]),
    "temperature 0": (lambda x, o: edit_json(x / "xlora_config.json", softmax_temperature=0), ["softmax_temperature"]),
    "top-k above adapters": (lambda x, o: edit_json(x / "xlora_config.json", top_k_lora=3), ["top_k_lora=3"]),
    "classifier depth": (_classifier_depth, ["1 linear layers but xlora_depth=2"]),
    "DoRA adapter": (lambda x, o: edit_json(x / "expert_0" / "adapter_config.json", use_dora=True), ["use_dora"]),
    "bad target regex": (lambda x, o: edit_json(x / "expert_0" / "adapter_config.json", target_modules="(q_proj"),
                         ["invalid pattern '(q_proj'"]),
    "hidden size": (lambda x, o: edit_json(x / "xlora_config.json", hidden_size=32), ["hidden_size 32"]),
    # Values that used to raise TypeError deep in the matching code.
    "rank_pattern -1": (lambda x, o: edit_json(x / "expert_0" / "adapter_config.json", rank_pattern={"q_proj": -1}),
                        ["expert_0", "adapter_config.json", "invalid rank_pattern.q_proj"]),
    "layers_to_transform NaN": (
        lambda x, o: edit_json(x / "expert_1" / "adapter_config.json", layers_to_transform=float("nan")),
        ["expert_1", "invalid layers_to_transform"]),
    "target_modules 1": (lambda x, o: edit_json(x / "expert_0" / "adapter_config.json", target_modules=1),
                         ["expert_0", "invalid target_modules"]),
    "base_model_id not a string": (lambda x, o: edit_json(x / "xlora_config.json", base_model_id=5),
                                   ["xlora_config.json", "base_model_id must be a string"]),
    "xlora_config not UTF-8": (lambda x, o: (x / "xlora_config.json").write_bytes(b"\xff{"),
                               ["unreadable xlora_config.json"]),
    # Loads, but every logit is NaN: refused by the load's smoke forward.
    "NaN model": (lambda x, o: edit_json(x / "xlora_config.json", scaling_pass_value=1e30), ["NaN logits"]),
    "bad ordering JSON": (lambda x, o: o.write_text("{"), ["ordering file", "unreadable"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_one_line_exit_2(case, xlora, tiny_mistral_dir):
    mutate, needles = CASES[case]
    mutate(*xlora)
    code, out = run_cli(tiny_mistral_dir, *xlora)
    assert code == 2, out
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in out, out
    for needle in needles:
        assert needle in out, out


def test_missing_order_option(xlora, tiny_mistral_dir):
    code, out = run_cli(tiny_mistral_dir, xlora[0], None)
    assert code == 2 and "-o/--order is required" in out, out


def _spec(base, xdir, ordering):
    return model_spec("x-lora-mistral", model_id=str(base), xlora_model_id=str(xdir), order=ordering, dtype="f32", device="cpu")


def test_base_id_mismatch_warns_when_tensors_fit(xlora, tiny_mistral_dir, caplog):
    xdir, ordering = xlora
    edit_json(ordering, base_model_id="someone/another-model")
    with caplog.at_level(logging.WARNING):
        build_model(_spec(tiny_mistral_dir, xdir, ordering))
    assert "someone/another-model" in caplog.text and "fits the base" in caplog.text


def test_base_id_mismatch_is_an_error_when_tensors_do_not_fit(xlora, tiny_mistral_dir):
    xdir, ordering = xlora
    edit_json(xdir / "xlora_config.json", base_model_id="someone/another-model")
    _shape_mismatch(xdir, ordering)
    with pytest.raises(AdapterError, match="do not fit.*note: base model .*someone/another-model"):
        build_model(_spec(tiny_mistral_dir, xdir, ordering))


def test_classifier_in_top_level_adapter_model(xlora, tiny_mistral_dir):
    """A PEFT-style save keeps the classifier in adapter_model.safetensors: read it from there."""
    xdir, ordering = xlora
    ids, pos = torch.tensor([[1, 5, 9, 13]]), torch.arange(4)[None]
    with torch.no_grad():
        want = build_model(_spec(tiny_mistral_dir, xdir, ordering)).model(ids, pos)
        (xdir / "xlora_classifier.safetensors").rename(xdir / "adapter_model.safetensors")
        got = build_model(_spec(tiny_mistral_dir, xdir, ordering)).model(ids, pos)
    assert torch.equal(got, want)
    (xdir / "adapter_model.safetensors").unlink()
    with pytest.raises(AdapterError, match="missing xlora_classifier.safetensors or adapter_model.safetensors"):
        build_model(_spec(tiny_mistral_dir, xdir, ordering))
