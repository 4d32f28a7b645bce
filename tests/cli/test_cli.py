"""CLI: help output, every bad-input case (one line, exit 2, no traceback), a one-shot chat."""

from __future__ import annotations

import json
import shutil

import pytest

from mistralrs_cli.cli import app
from tests.cli_helpers import assert_one_line_error, run_cli

_run, _assert_one_line_error = run_cli, assert_one_line_error


@pytest.mark.parametrize(
    "args, needles",
    [
        (["--help"], ["chat", "batch", "serve", "mistral", "gguf-mistral", "x-lora-mistral", "--port"]),
        (["chat", "--help"], ["--system", "--temperature", "--max-tokens", "mistral"]),
        (["chat", "mistral", "--help"], ["--model-id", "--tokenizer-json", "--weight-file", "--revision", "--dtype", "--device", "--token-source", "--repeat-last-n"]),
        (["serve", "--help"], ["--port", "--serve-ip"]),
        (["chat", "gguf-mistral", "--help"], ["--quantized-model-id", "--quantized-filename", "--tok-model-id"]),
        (["chat", "x-lora-mistral", "--help"], ["--xlora-model-id", "--order", "--tgt-non-granular-index"]),
    ],
)
def test_help_is_complete(args, needles):
    code, out = _run(args)
    assert code == 0
    for needle in needles:
        assert needle in out, (needle, out)


def test_version():
    code, out = _run(["--version"])
    assert code == 0 and out.startswith("mistralrs ")


def test_no_flag_repeats_within_a_command():
    import typer.main

    click_app = typer.main.get_command(app)

    def walk(cmd, path):
        flags = [f for p in cmd.params for f in (*p.opts, *p.secondary_opts) if f.startswith("-")]
        assert len(flags) == len(set(flags)), (path, flags)
        for name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, [*path, name])

    walk(click_app, ["mistralrs"])


def test_one_shot_chat_on_tiny_model(tiny_mistral_dir):
    code, out = _run(["chat", "--max-tokens", "8", "mistral", "-m", str(tiny_mistral_dir)], "Hi there")
    assert code == 0, out
    assert out.endswith("\n")


def test_messages_file_and_system(tiny_mistral_dir, tmp_path):
    msgs = tmp_path / "m.json"
    msgs.write_text(json.dumps([{"role": "user", "content": "Hello"}]))
    code, out = _run(["chat", "--messages", str(msgs), "--system", "Be brief", "--max-tokens", "4",
                      "mistral", "-m", str(tiny_mistral_dir)])
    assert code == 0, out


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_missing_folder():
    _assert_one_line_error(*_run(["chat", "mistral", "-m", "./does/not/exist"]), "does/not/exist")


def test_invalid_hub_id():
    _assert_one_line_error(*_run(["chat", "mistral", "-m", "not a repo id"]), "not a Hub id")


def test_missing_model_id():
    _assert_one_line_error(*_run(["chat", "mistral"]), "--model-id")


def test_missing_config(tiny_mistral_dir, tmp_path):
    d = _copy(tiny_mistral_dir, tmp_path / "m")
    (d / "config.json").unlink()
    _assert_one_line_error(*_run(["chat", "mistral", "-m", str(d)]), "config.json")


def test_unsupported_architecture(tiny_mistral_dir, tmp_path):
    d = _copy(tiny_mistral_dir, tmp_path / "m")
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(architectures=["GPT2LMHeadModel"], model_type="gpt2")
    (d / "config.json").write_text(json.dumps(cfg))
    _assert_one_line_error(*_run(["chat", "mistral", "-m", str(d)]), "GPT2LMHeadModel", "MistralForCausalLM")


def test_mismatched_tensor_names_both_shapes(tiny_mistral_dir, tmp_path):
    d = _copy(tiny_mistral_dir, tmp_path / "m")
    cfg = json.loads((d / "config.json").read_text())
    cfg["intermediate_size"] = 96
    (d / "config.json").write_text(json.dumps(cfg))
    _assert_one_line_error(*_run(["chat", "mistral", "-m", str(d)]), "mlp", "has shape (64, 128)", "expects (64, 96)")


def test_missing_tensor(tiny_mistral_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    d = _copy(tiny_mistral_dir, tmp_path / "m")
    tensors = load_file(str(d / "model.safetensors"))
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, str(d / "model.safetensors"))
    _assert_one_line_error(*_run(["chat", "mistral", "-m", str(d)]), "model.layers.1.mlp.up_proj.weight")


def test_unreadable_safetensors(tiny_mistral_dir, tmp_path):
    d = _copy(tiny_mistral_dir, tmp_path / "m")
    (d / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00garbage")
    _assert_one_line_error(*_run(["chat", "mistral", "-m", str(d)]), "unreadable safetensors")


def test_bad_weight_file(tiny_mistral_dir):
    _assert_one_line_error(
        *_run(["chat", "mistral", "-m", str(tiny_mistral_dir), "--weight-file", "nope.safetensors"]), "nope.safetensors"
    )


def test_invalid_chat_template(tiny_mistral_dir, tmp_path):
    bad = tmp_path / "bad.jinja"
    bad.write_text("{% for m in messages %}{{ m['content'] }")
    _assert_one_line_error(*_run(["-c", str(bad), "chat", "mistral", "-m", str(tiny_mistral_dir)]), "chat template")


def test_bad_sampling_value(tiny_mistral_dir):
    _assert_one_line_error(*_run(["chat", "--top-p", "1.5", "mistral", "-m", str(tiny_mistral_dir)]), "top_p")


def test_weight_file_selects_a_specific_file(tiny_mistral_dir, tmp_path):
    d = _copy(tiny_mistral_dir, tmp_path / "m")
    (d / "model.safetensors").rename(d / "finetune-step-100.safetensors")
    (d / "model.safetensors").write_bytes(b"broken decoy")
    args = ["chat", "--max-tokens", "6", "mistral", "-m", str(d)]
    _assert_one_line_error(*_run(args), "unreadable safetensors")
    code, out = _run([*args, "--weight-file", "finetune-step-100.safetensors"])
    assert code == 0, out
    base_code, base_out = _run(["chat", "--max-tokens", "6", "mistral", "-m", str(tiny_mistral_dir)])
    assert (code, out) == (base_code, base_out)


@pytest.mark.parametrize(
    "env, args, want",
    [(None, [], None), (None, ["--compile"], True), (None, ["--no-compile"], False), ("0", [], False), ("1", [], True),
     ("1", ["--no-compile"], False)],
)
def test_compile_flag_and_default(monkeypatch, env, args, want):
    # The command line compiles where it can (None) unless --no-compile or MISTRALRS_COMPILE=0
    # (which tests/conftest.py sets for the suite); EngineConfig's own default stays eager.
    from mistralrs_cli.cli import compose
    from mistralrs_cli.engine import EngineConfig

    seen = []

    def capture(options, spec):
        seen.append(options.compile)
        raise SystemExit(0)

    if env is None:
        monkeypatch.delenv("MISTRALRS_COMPILE", raising=False)
    else:
        monkeypatch.setenv("MISTRALRS_COMPILE", env)
    monkeypatch.setattr(compose, "engine_config", capture)
    code, out = _run([*args, "chat", "mistral", "-m", "some/model"])
    assert code == 0, out
    assert seen == [want]
    assert EngineConfig().compile is False


def test_compile_command_warms_every_bucket(tiny_mistral_dir, monkeypatch):
    # Without a real compile (torch.compile is the identity here; the real one is slow, see
    # tests/engine/test_compiled_step.py): one line per batch bucket up to --max-seqs.
    import torch

    from mistralrs_cli.engine import compiled_step

    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: fn)
    monkeypatch.setattr(compiled_step, "cxx_compiler", lambda: "c++")
    code, out = _run(["--max-seqs", "3", "compile", "mistral", "-m", str(tiny_mistral_dir)])
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0].startswith("Compiling the decode step of ") and "batch sizes 1..4 into" in lines[0]
    assert [line.split(":")[0].strip() for line in lines[1:]] == ["batch 1", "batch 2", "batch 4"]
    assert all("compiled in" in line for line in lines[1:])


def test_compile_command_without_a_compiler(tiny_mistral_dir, monkeypatch):
    from mistralrs_cli.engine import compiled_step

    monkeypatch.setattr(compiled_step, "cxx_compiler", lambda: None)
    code, out = _run(["compile", "mistral", "-m", str(tiny_mistral_dir)])
    assert code == 1
    assert "no C++ compiler" in out
