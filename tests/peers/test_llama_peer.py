"""The llama.cpp peer: its worker protocol, its errors, and the crash retry (the AMX crash of docs/performance.md).

Tests that need llama_cpp skip without it (see tests/peers/llama_python.py); the error paths
run everywhere, against real interpreters and real processes.
"""

from __future__ import annotations

import ast
import os
import signal
import subprocess
import sys

import pytest

from mistralrs_cli.peers.llama_peer import (
    WORKER,
    LlamaPeer,
    PeerCrashed,
    PeerError,
    _Process,
    death,
)
from tests.peers.llama_python import bare_python, llama_python


@pytest.fixture(scope="module")
def no_llama_python(tmp_path_factory) -> str:
    return bare_python(tmp_path_factory.mktemp("venv"))


def test_the_worker_imports_only_the_standard_library_and_llama_cpp():
    """It runs under the peer's interpreter, where mistralrs is not installed."""
    tree = ast.parse(WORKER.read_text())
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    roots = {name.split(".")[0] for name in names} - {"__future__"}
    assert "llama_cpp" in roots
    assert roots - {"llama_cpp", "numpy"} <= set(sys.stdlib_module_names), roots  # numpy: llama_cpp's own dependency


def test_an_interpreter_without_llama_cpp_is_one_clear_error(no_llama_python):
    with pytest.raises(PeerError) as e:
        LlamaPeer(no_llama_python)
    msg = e.value.message
    assert "\n" not in msg and e.value.exit_code == 2
    assert f"{no_llama_python} cannot import llama_cpp" in msg
    assert "--llama-python" in msg and 'CMAKE_ARGS="-DGGML_NATIVE=ON" pip install llama-cpp-python' in msg


def test_the_worker_says_what_is_missing_then_exits(no_llama_python):
    proc = _Process(no_llama_python)
    try:
        hello = proc.read()
        assert hello["missing"] == "llama_cpp" and "No module named 'llama_cpp'" in hello["error"]
        with pytest.raises(PeerCrashed) as e:
            proc.read()
        assert e.value.returncode == 3 and "exited with code 3" in e.value.message
    finally:
        proc.close()


def test_a_path_that_is_not_a_python_is_refused(tmp_path):
    with pytest.raises(PeerError, match=r"^--llama-python /no/such/python: no such file$"):
        LlamaPeer("/no/such/python")
    with pytest.raises(PeerError, match="cannot run it"):
        LlamaPeer(str(tmp_path))  # a folder
    chatty = tmp_path / "chatty"
    chatty.write_text("#!/bin/sh\necho hello\n")
    chatty.chmod(0o755)
    with pytest.raises(PeerError, match="answered 'hello' .is it a Python 3 interpreter"):
        LlamaPeer(str(chatty))
    silent = tmp_path / "silent"
    silent.write_text("#!/bin/sh\necho oops >&2\nexit 0\n")
    silent.chmod(0o755)
    with pytest.raises(PeerError, match="exited with code 0: oops before answering; is it a Python 3 interpreter"):
        LlamaPeer(str(silent))


def test_death_names_the_signal():
    killed = subprocess.run([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"])
    assert death(killed.returncode) == "killed by SIGSEGV"
    assert death(subprocess.run([sys.executable, "-c", "raise SystemExit(3)"]).returncode) == "exited with code 3"


# ---- with llama_cpp --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer(default_gguf):
    from mistralrs_cli.loading.gguf_file import GGUFFile
    from mistralrs_cli.loading.gguf_tokenizer import gguf_tokenizer

    return gguf_tokenizer(GGUFFile(default_gguf))


@pytest.mark.slow
def test_a_round_is_greedy_exact_in_length_and_starts_afresh(default_gguf, tokenizer):
    prompt = tokenizer.encode("The capital of France is", add_special_tokens=False)
    with LlamaPeer(llama_python()) as peer:
        loaded = peer.load(default_gguf, threads=2, n_ctx=256)
        assert loaded["n_vocab"] == 49152 and loaded["load_s"] > 0 and peer.last_load is loaded
        first = peer.round(prompt, 12)
        other = peer.round(prompt[:3], 5)
        again = peer.round(prompt, 12)
    assert len(first["tokens"]) == 12 and len(other["tokens"]) == 5
    assert again["tokens"] == first["tokens"]  # the previous round's KV cache does not leak into the next
    assert tokenizer.decode(first["tokens"][:1]).strip() == "Paris"
    assert first["prefill_tok_s"] == pytest.approx(len(prompt) / first["ttft_s"])
    assert first["decode_tok_s"] == pytest.approx(11 / first["decode_s"])
    assert peer.last_rss == again["peak_rss_mib"] > 0


@pytest.mark.slow
def test_a_command_error_is_one_reply_and_the_worker_lives_on(default_gguf):
    with LlamaPeer(llama_python()) as peer:
        with pytest.raises(PeerError, match="llama.cpp round: ValueError: round before load"):
            peer.round([1, 2, 3], 4)
        peer.load(default_gguf, threads=1, n_ctx=256)
        assert len(peer.round([1, 2, 3], 2)["tokens"]) == 2


@pytest.mark.slow
def test_a_worker_killed_by_a_signal_is_retried_once_without_extra_buffers(default_gguf):
    notes: list[str] = []
    with LlamaPeer(llama_python(), notify=notes.append) as peer:
        peer.load(default_gguf, threads=2, n_ctx=256)
        first_pid, first_load = peer.pid, peer.last_load
        os.kill(first_pid, signal.SIGSEGV)  # what the AMX crash does to the process
        reply = peer.round([1, 2, 3, 4], 6)
        assert len(reply["tokens"]) == 6
        assert peer.pid != first_pid and not peer.extra_bufts and peer.last_load is not first_load
        assert len(notes) == 1 and "killed by SIGSEGV" in notes[0] and "use_extra_bufts=False" in notes[0]
        assert "killed by SIGSEGV" in peer.crashed
        os.kill(peer.pid, signal.SIGSEGV)  # a second crash is not retried
        with pytest.raises(PeerCrashed, match="killed by SIGSEGV"):
            peer.round([1, 2, 3, 4], 6)
    assert len(notes) == 1
