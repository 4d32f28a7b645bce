"""The real chat REPL in a pseudo-terminal (pexpect): a question, slash commands, Ctrl-C mid-reply, /exit."""

from __future__ import annotations

import time

import pexpect
import pytest

from tests.frontends.repl_pty import PROMPT
from tests.frontends.repl_pty import spawn_repl as _spawn
from tests.oracles.tiny_models import save_tiny_folder, tiny_hf_model


@pytest.fixture(scope="module")
def long_context_model(tmp_path_factory):
    # A long context so that a reply runs for seconds: time to press Ctrl-C in the middle.
    model = tiny_hf_model("llama", seed=2, max_position_embeddings=4096)
    return save_tiny_folder(model, tmp_path_factory.mktemp("tiny-long"))


def test_repl_question_command_interrupt_exit(long_context_model, tmp_path):
    child = _spawn(long_context_model, tmp_path, "--max-tokens", "12", "--no-markdown")
    child.expect("/help for commands")
    child.expect(PROMPT)
    child.sendline("Hello there")
    child.expect(r"12 tokens · [\d.]+ tok/s · first token")
    child.expect(PROMPT)

    child.sendline("/params max_tokens=3000 temperature=0")
    child.expect("params: max_tokens=3000, temperature=0")
    child.expect(PROMPT)

    child.sendline("Tell me a very long story")
    child.expect("long story")
    child.expect("\n")
    time.sleep(0.5)  # the reply is streaming (3000 tokens take seconds)
    child.sendintr()
    child.expect(r"(\d+) tokens · .* · stopped", timeout=30)
    assert int(child.match.group(1)) < 3000
    child.expect(PROMPT)

    child.sendline("/stats")
    child.expect(r"replies: 2")
    child.expect(PROMPT)
    child.sendline("/exit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert (tmp_path / "mistralrs" / "chat_history").read_text().count("Hello there") == 1


def test_double_ctrl_c_at_empty_prompt_exits_130(tiny_mistral_dir, tmp_path):
    child = _spawn(tiny_mistral_dir, tmp_path)
    child.expect(PROMPT)
    child.sendintr()
    child.expect("Ctrl-C again")
    child.sendintr()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 130
