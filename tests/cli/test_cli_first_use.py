"""What a new user meets first: piped prompts, global flags in the wrong place, --help, -i, --log."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.cli_helpers import assert_one_line_error, run_cli

_run, _one_line_error = run_cli, assert_one_line_error


def _chat(stdin: str) -> subprocess.CompletedProcess:
    """The README's first command, as a real process on the real default model."""
    return subprocess.run([sys.executable, "-m", "mistralrs_cli", "chat", "--max-tokens", "48"], input=stdin,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_piped_newline_gets_the_answer_of_the_bare_prompt():
    piped, bare = _chat("What is the capital of France?\n"), _chat("What is the capital of France?")
    assert piped.returncode == bare.returncode == 0, piped.stderr + bare.stderr
    assert piped.stdout == bare.stdout
    assert "Paris" in piped.stdout


@pytest.mark.parametrize("stdin", ["", "\n  \n"])
def test_empty_stdin_is_one_line_exit_2(stdin):
    _one_line_error(*_run(["chat"], stdin), "stdin is empty")


def test_port_before_chat_is_refused():
    _one_line_error(*_run(["--port", "1234", "chat"]), "--port", "mistralrs serve --port 1234")


def test_serve_ip_before_batch_is_refused(tmp_path):
    _one_line_error(*_run(["--serve-ip", "0.0.0.0", "batch", str(tmp_path / "in.jsonl")]), "--serve-ip")


def test_log_with_bench_is_refused():
    _one_line_error(*_run(["--log", "x.jsonl", "bench"]), "--log")


def test_switches_show_no_value_and_i_is_listed():
    code, out = _run(["--help"])
    assert code == 0
    assert "<bool>" not in out
    assert "--interactive" in out and "-i" in out
    for args in (["chat", "--help"], ["batch", "--help"], ["chat", "lora-mistral", "--help"]):
        code, out = _run(args)
        assert code == 0 and "<bool>" not in out, out


def test_debug_takes_no_value():
    code, out = _run(["--debug", "true", "chat"])
    assert code == 2 and "true" in out  # click: unexpected extra argument / no such command 'true'


def test_batch_max_tokens_help_says_lines_override_it():
    code, out = _run(["batch", "--help"])
    assert code == 0 and "overrides it" in out


def test_i_is_chat(tiny_mistral_dir):
    code, out = _run(["-i", "mistral", "-m", str(tiny_mistral_dir)], "Hi")
    assert code == 0 and out.endswith("\n"), out


def test_log_records_a_chat_turn(tiny_mistral_dir, tmp_path):
    log = tmp_path / "chat.jsonl"
    code, out = _run(["--log", str(log), "chat", "--max-tokens", "4", "mistral", "-m", str(tiny_mistral_dir)], "Hi")
    assert code == 0, out
    (record,) = [json.loads(line) for line in log.read_text().splitlines()]
    assert record["mode"] == "chat"
    assert record["request"]["messages"] == [{"role": "user", "content": "Hi"}]
    assert record["response"]["finish_reason"] in ("stop", "length")
    assert record["response"]["text"] == out.rstrip("\n")
    assert record["response"]["usage"]["completion_tokens"] >= 1


def test_weights_and_compute_dtype_are_reported_apart(tmp_path, tiny_mistral_dir):
    from mistralrs_cli.cli.compose import build_model
    from mistralrs_cli.cli.spec import model_spec
    from mistralrs_cli.loading.gguf import load_gguf_file
    from mistralrs_cli.loading.spec import LoadOptions
    from tests.oracles.gguf_files import Q, write_gguf_from_hf
    from tests.oracles.tiny_models import save_tiny_folder, tiny_hf_model

    hf = tiny_hf_model("llama", seed=2, tie_word_embeddings=True)
    path = write_gguf_from_hf(hf, save_tiny_folder(hf, tmp_path / "hf"), tmp_path / "t.gguf", Q.Q4_0)
    quant = load_gguf_file(path, LoadOptions())
    assert quant.weights.startswith("int4") and quant.compute_dtype == "float32"
    dense = build_model(model_spec("mistral", model_id=str(tiny_mistral_dir)))
    assert dense.weights == "dense float32" and dense.compute_dtype == "float32"


def test_log_records_every_batch_line(tiny_mistral_dir, tmp_path):
    src, out, log = tmp_path / "in.jsonl", tmp_path / "out.jsonl", tmp_path / "batch.log"
    src.write_text(json.dumps({"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}})
                   + "\nnot json\n")
    code, output = _run(["--log", str(log), "batch", str(src), "-o", str(out), "mistral", "-m", str(tiny_mistral_dir)])
    assert code == 1, output  # the bad line is an error record
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert sorted(r["line"] for r in records) == [1, 2] and {r["mode"] for r in records} == {"batch"}
    answered = next(r for r in records if r["line"] == 1)
    assert answered["request"]["max_tokens"] == 3 and answered["response"]["custom_id"] == "a"
    assert answered["response"]["error"] is None
