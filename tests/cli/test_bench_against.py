"""`mistralrs bench --against llama.cpp` from the command line: every refusal is one line, exit code 2, before any load."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.cli_helpers import assert_one_line_error, run_cli
from tests.peers.llama_python import bare_python, llama_python


@pytest.fixture(scope="module")
def no_llama_python(tmp_path_factory) -> str:
    return bare_python(tmp_path_factory.mktemp("venv"))


@pytest.fixture
def some_gguf(tmp_path):
    """A file named like a GGUF: the peer check comes first, so it is never read."""
    path = tmp_path / "m.gguf"
    path.write_bytes(b"GGUF")
    return str(path)


def test_an_unknown_peer_is_refused():
    assert_one_line_error(*run_cli(["bench", "--against", "vllm"]), "--against vllm", "llama.cpp")


@pytest.mark.parametrize("flag", [["--rounds", "5"], ["--llama-python", sys.executable]])
def test_peer_flags_without_against_are_refused(flag):
    assert_one_line_error(*run_cli(["bench", *flag]), flag[0], "bench --against llama.cpp")


@pytest.mark.parametrize("model", [["mistral", "-m", "some/model"], ["lora-gguf-mistral", "-f", "x.gguf", "-a", "y"]])
def test_only_plain_gguf_models_compare(model):
    assert_one_line_error(*run_cli(["bench", "--against", "llama.cpp", *model]), "GGUF models only", model[0])


def test_an_interpreter_without_llama_cpp_says_how_to_get_it(no_llama_python, some_gguf):
    code, out = run_cli(["bench", "--against", "llama.cpp", "--llama-python", no_llama_python,
                         "gguf-mistral", "-f", some_gguf])
    assert_one_line_error(code, out, "cannot import llama_cpp", "--llama-python", "pip install llama-cpp-python")


def test_a_bad_interpreter_path_is_refused(some_gguf, tmp_path):
    code, out = run_cli(["bench", "--against", "llama.cpp", "--llama-python", str(tmp_path / "nope"),
                         "gguf-mistral", "-f", some_gguf])
    assert_one_line_error(code, out, "--llama-python", "no such file")


@pytest.mark.slow
def test_the_command_prints_the_ratio_table_and_json(default_gguf):
    """The real command, as a user runs it, on the default model."""
    proc = subprocess.run([sys.executable, "-m", "mistralrs_cli", "bench", "--against", "llama.cpp",
                           "--llama-python", llama_python(), "--rounds", "2", "--tokens", "5", "--prompt-len", "8",
                           "--json"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["rounds"] == 2 and result["threads"] >= 1 and result["file"] == str(default_gguf)
    assert set(result["ratios"]) == {"ttft_s", "prefill_tok_s", "decode_tok_s", "load_s", "peak_rss_mib"}
    assert "mistralrs bench --against llama.cpp" in proc.stderr and "Traceback" not in proc.stderr
