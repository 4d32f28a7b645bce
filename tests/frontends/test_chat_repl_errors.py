"""Errors in a chat turn print one line and the REPL, with its conversation, goes on (issue 11, item 8)."""

from __future__ import annotations

import re

import pexpect
import pytest
from prompt_toolkit import PromptSession
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput

from mistralrs_cli.cli.compose import build_model
from mistralrs_cli.cli.spec import model_spec
from mistralrs_cli.engine import Engine, EngineConfig, SamplingParams
from mistralrs_cli.frontends.chat import EngineChatBackend
from mistralrs_cli.frontends.chat_repl import ChatRepl, ChatState
from tests.frontends.repl_pty import PROMPT, spawn_repl
from tests.oracles.tiny_models import save_tiny_folder, tiny_hf_model

ANSWERED = r"(\d+) tokens · [\d.]+ tok/s · first token"


@pytest.fixture(scope="module")
def short_context_model(tmp_path_factory):
    # A 64-token context: one reply without a max_tokens fills it, so the next turn cannot fit.
    model = tiny_hf_model("llama", seed=3, max_position_embeddings=64)
    return save_tiny_folder(model, tmp_path_factory.mktemp("tiny-short"))


def _leave(child: pexpect.spawn, how: str = "/exit") -> None:
    if how == "ctrl-d":
        child.sendcontrol("d")
    else:
        child.sendline(how)
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


@pytest.mark.parametrize(("setting", "refusal"), [
    ("temperature=-1", r"error: /params: temperature must be >= 0, got -1\.0"),
    ("max_tokens=100000", r"error: /params: max_tokens 100000 must be smaller than the context length 256"),
    ("top_k=many", r"error: /params: top_k must be an integer, got 'many'"),
])
def test_bad_params_are_refused_and_the_session_goes_on(tiny_mistral_dir, tmp_path, setting, refusal):
    child = spawn_repl(tiny_mistral_dir, tmp_path, "--max-tokens", "6", "--no-markdown")
    child.expect(PROMPT)
    child.sendline("/params temperature=0.5 seed=7")
    child.expect("params: temperature=0.5, seed=7")
    child.expect(PROMPT)
    child.sendline(f"/params top_p=0.9 {setting}")
    child.expect(refusal)
    child.expect(PROMPT)
    child.sendline("/params")  # the refused line changed nothing, not even its valid part
    child.expect(r"params: (.*)\r?\n")
    assert child.match.group(1).strip() == "temperature=0.5, seed=7"
    child.expect(PROMPT)
    child.sendline("Hello there")
    child.expect(ANSWERED)
    assert 1 <= int(child.match.group(1)) <= 6  # --max-tokens still rules
    child.expect(PROMPT)
    child.sendline("/stats")
    child.expect(r"replies: 1, .* messages in conversation: 2")
    child.expect(PROMPT)
    _leave(child)


def test_conversation_outgrowing_the_context_keeps_the_repl(short_context_model, tmp_path):
    child = spawn_repl(short_context_model, tmp_path, "--no-markdown")
    child.expect(PROMPT)
    child.sendline("Hello there")
    child.expect(ANSWERED)  # no max_tokens: the reply runs to the end of the context
    child.expect(PROMPT)
    child.sendline("And again")
    child.expect(r"error: the conversation \((\d+) tokens\) has outgrown the context \(64 tokens "
                 r"with room for a reply\); /clear starts a new one")
    assert int(child.match.group(1)) > 63
    child.expect(PROMPT)
    child.sendline("/stats")  # the conversation so far is kept; the message that did not fit is not
    child.expect(r"replies: 1, .* messages in conversation: 2")
    child.expect(PROMPT)
    child.sendline("/clear")
    child.expect("new conversation")
    child.expect(PROMPT)
    child.sendline("Hello there")
    child.expect(ANSWERED)
    child.expect(PROMPT)
    _leave(child, "ctrl-d")


def test_message_longer_than_the_context_is_refused(short_context_model, tmp_path):
    child = spawn_repl(short_context_model, tmp_path, "--max-tokens", "4", "--no-markdown")
    child.expect(PROMPT)
    child.sendline("Hello world, this is a tiny tokenizer. " * 8)
    child.expect(r"error: the message \(\d+ tokens\) does not fit the context \(64 tokens")
    child.expect(PROMPT)
    child.sendline("Hello there")
    child.expect(ANSWERED)
    child.expect(PROMPT)
    _leave(child)


def test_help_descriptions_line_up(tiny_mistral_dir, tmp_path):
    child = spawn_repl(tiny_mistral_dir, tmp_path)
    child.expect(PROMPT)
    child.sendline("/help")
    child.expect("Multi-line input")
    lines = [line for line in child.before.splitlines() if line.startswith("/")]
    assert any(line.startswith("/params [k=v ...] ") for line in lines)
    columns = {re.match(r"/\S*(?: \S+)*\s{2,}", line).end() for line in lines}
    assert len(columns) == 1, lines
    child.expect(PROMPT)
    _leave(child)


def test_engine_error_mid_reply_keeps_the_conversation(tiny_llama_dir, capsys):
    loaded = build_model(model_spec("mistral", model_id=str(tiny_llama_dir), device="cpu"))
    with Engine(loaded, EngineConfig(max_seqs=2, kv_blocks=64)) as engine, create_pipe_input() as pipe:
        repl = ChatRepl(EngineChatBackend(engine, SamplingParams(temperature=0.0, max_tokens=8)), ChatState(),
                        markdown=False, session=PromptSession(input=pipe, output=DummyOutput()))
        repl.ask("Hello")
        before = list(repl.state.messages)
        assert [m["role"] for m in before] == ["user", "assistant"]

        runner = engine.core.runner
        real, calls = runner.model, []

        def fails_on_the_fourth_step(*args, **kwargs):
            # Injected failure: the model raises after three steps, so the reply has begun streaming.
            calls.append(1)
            if len(calls) > 3:
                raise RuntimeError("boom")
            return real(*args, **kwargs)

        runner.model = fails_on_the_fourth_step
        capsys.readouterr()
        try:
            repl.ask("Tell me more")
        finally:
            runner.model = real
        out = capsys.readouterr()
        assert out.out.strip()  # part of the reply was shown before the failure
        assert re.findall(r"error: .*", out.err) == ["error: generation failed: RuntimeError: boom"]
        assert repl.state.messages == before and repl.state.replies == 1

        repl.ask("Tell me more")
        assert [m["role"] for m in repl.state.messages] == ["user", "assistant"] * 2
        assert repl.state.replies == 2
