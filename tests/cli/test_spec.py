"""ModelSpec: what each model subcommand's options become, the base alone, and the names a model answers to."""

from __future__ import annotations

from pathlib import Path

import pytest

from mistralrs_cli.adapters.spec import LoraSpec, XLoraSpec
from mistralrs_cli.cli.model_commands import MODEL_COMMANDS
from mistralrs_cli.cli.spec import ModelSpec, model_spec
from mistralrs_cli.loading.spec import DefaultSource, GgufSource, HfSource, LoadOptions


def test_default_takes_the_defaults():
    assert model_spec("default") == ModelSpec("default", DefaultSource(), LoadOptions())
    assert model_spec("default", dtype="f32", device="cpu", chat_template="t.jinja").load == LoadOptions(
        dtype="f32", device="cpu", chat_template="t.jinja")


def test_mistral():
    spec = model_spec("mistral", model_id="m", tokenizer_json="tok.json", weight_file=["a.safetensors"],
                      repeat_last_n=8, revision="v1", token_source="none", dtype="bf16", device="cuda")
    assert spec == ModelSpec("mistral", HfSource("m", ("a.safetensors",), "tok.json"),
                             LoadOptions("v1", "none", "bf16", "cuda"), None, 8)


def test_gguf_mistral():
    spec = model_spec("gguf-mistral", quantized_model_id="repo", quantized_filename="m.gguf", tok_model_id="tok")
    assert spec.base == GgufSource("repo", "m.gguf", "tok") and spec.adapters is None
    assert spec.load == LoadOptions() and spec.repeat_last_n == 64


@pytest.mark.parametrize("command, base", [("x-lora-mistral", HfSource("m")),
                                           ("x-lora-gguf-mistral", GgufSource(quantized_filename="m"))])
def test_xlora(command, base):
    name = "model_id" if isinstance(base, HfSource) else "quantized_filename"
    spec = model_spec(command, **{name: "m"}, xlora_model_id="x", order="o.json", tgt_non_granular_index=2)
    assert spec.base == base
    assert spec.adapters == XLoraSpec("x", Path("o.json"), 2)


def test_lora():
    spec = model_spec("lora-mistral", model_id="m", adapter=["a", "b"], merge=True)
    assert spec.base == HfSource("m") and spec.adapters == LoraSpec(("a", "b"), None, True)
    spec = model_spec("lora-gguf-mistral", quantized_filename="m.gguf", adapter=["repo"], order=Path("o.json"))
    assert spec.base == GgufSource(quantized_filename="m.gguf")
    assert spec.adapters == LoraSpec(("repo",), Path("o.json"), False)


def test_every_command_builds_from_its_defaults():
    for name in MODEL_COMMANDS:
        assert model_spec(name).command == name


def test_an_option_the_command_lacks_is_refused():
    with pytest.raises(TypeError, match="xlora_model_id"):
        model_spec("mistral", xlora_model_id="x")
    with pytest.raises(TypeError, match="merge"):
        model_spec("lora-gguf-mistral", merge=True)  # a quantized base keeps its adapters unmerged
    with pytest.raises(ValueError, match="no-such"):
        model_spec("no-such")


def test_base_only_drops_the_adapters():
    xlora = model_spec("x-lora-gguf-mistral", quantized_filename="m.gguf", xlora_model_id="x", order="o.json",
                       dtype="f32", repeat_last_n=5)
    assert xlora.base_only() == model_spec("gguf-mistral", quantized_filename="m.gguf", dtype="f32", repeat_last_n=5)
    lora = model_spec("lora-mistral", model_id="m", adapter=["a"], merge=True)
    assert lora.base_only() == model_spec("mistral", model_id="m")
    plain = model_spec("mistral", model_id="m")
    assert plain.base_only() is plain


def test_display_name(tmp_path):
    folder = tmp_path / "my-model"
    folder.mkdir()
    assert model_spec("mistral", model_id=str(folder)).display_name == "my-model"  # a path: its last part
    assert model_spec("mistral", model_id="owner/name").display_name == "owner/name"  # a Hub id as given
    xlora = model_spec("x-lora-mistral", model_id="base", xlora_model_id="owner/xlora", order="o.json")
    assert xlora.display_name == "owner/xlora"  # the X-LoRA model's own name, not its base's
    assert model_spec("gguf-mistral", quantized_model_id="repo", quantized_filename="m.gguf").display_name == "m.gguf"
    assert model_spec("gguf-mistral", quantized_model_id="repo").display_name == "repo"
    assert model_spec("default").display_name == "default"


def test_command_line_names(tmp_path):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"")
    spec = model_spec("gguf-mistral", quantized_filename=str(gguf))
    assert spec.command_line_names() == (str(gguf),)  # already absolute: listed once
    spec = model_spec("gguf-mistral", quantized_model_id="owner/repo", quantized_filename="m.gguf")
    assert spec.command_line_names() == ("m.gguf", "owner/repo")
    xlora = model_spec("x-lora-mistral", model_id="base", xlora_model_id="owner/x", order="o.json")
    assert xlora.command_line_names() == ("owner/x",)  # never the base's
    lora = model_spec("lora-mistral", model_id="base", adapter=["a"])
    assert lora.command_line_names() == ("base",)
    assert model_spec("default").command_line_names() == ()


def test_a_relative_path_is_named_as_typed_and_resolved(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "here").mkdir()
    spec = model_spec("mistral", model_id="here")
    assert spec.command_line_names() == ("here", str(tmp_path.resolve() / "here"))
