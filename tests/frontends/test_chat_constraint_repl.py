"""The REPL's /schema and /regex (issue 15, item 4): set, show, clear, refuse; answers held to them.

The REPL runs in-process on a tiny random model through the real engine (a constraint holds any
model's output); a --log shows what each turn asked the engine for. The last test drives the real
REPL in a pseudo-terminal with the --regex flag.
"""

from __future__ import annotations

import json
import re

import jsonschema
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
from mistralrs_cli.frontends.request_log import RequestLog
from tests.frontends.repl_pty import PROMPT, spawn_repl

FLAG_SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}


@pytest.fixture(scope="module")
def engine(tiny_mistral_dir):
    loaded = build_model(model_spec("mistral", model_id=str(tiny_mistral_dir), device="cpu"))
    with Engine(loaded, EngineConfig(max_seqs=2, kv_blocks=64)) as engine:
        yield engine


@pytest.fixture
def repl(engine, tmp_path):
    log = RequestLog(tmp_path / "chat.jsonl")
    with create_pipe_input() as pipe:
        backend = EngineChatBackend(engine, SamplingParams(temperature=0.0, max_tokens=32), log)
        yield ChatRepl(backend, ChatState(), markdown=False, session=PromptSession(input=pipe, output=DummyOutput()))
    log.close()


@pytest.fixture
def schema_file(tmp_path):
    path = tmp_path / "flag.json"
    path.write_text(json.dumps(FLAG_SCHEMA))
    return path


def _guides_sent(tmp_path) -> list[dict | None]:
    """The guide of each request the REPL submitted, from its --log."""
    lines = (tmp_path / "chat.jsonl").read_text().splitlines()
    return [json.loads(line)["request"].get("guide") for line in lines]


def _last_answer(repl: ChatRepl) -> str:
    assert repl.state.messages[-1]["role"] == "assistant"
    return repl.state.messages[-1]["content"]


def test_regex_holds_every_answer_until_cleared(repl, tmp_path, capsys):
    repl.command("/regex [0-9]{3}")
    assert capsys.readouterr().err.strip() == "constraint: regex [0-9]{3}"
    for question in ("Hello", "Hello again"):
        repl.ask(question)
        assert re.fullmatch("[0-9]{3}", _last_answer(repl))
    repl.command("/schema")  # alone: shows the active one, whichever command set it
    assert capsys.readouterr().err.strip().endswith("constraint: regex [0-9]{3}")

    repl.command("/schema off")
    assert capsys.readouterr().err.strip() == "constraint: none (free text)"
    repl.ask("Hello")
    assert _guides_sent(tmp_path) == [{"kind": "regex", "value": "[0-9]{3}"}] * 2 + [None]
    assert [m["role"] for m in repl.state.messages] == ["user", "assistant"] * 3  # kept like any answer
    assert repl.state.replies == 3


def test_schema_answer_parses_and_validates(repl, schema_file, tmp_path, capsys):
    repl.command(f"/schema {schema_file}")
    assert capsys.readouterr().err.strip() == f"constraint: JSON Schema from {schema_file}"
    repl.ask("Hello")
    jsonschema.validate(json.loads(_last_answer(repl)), FLAG_SCHEMA)
    assert "length limit" not in capsys.readouterr().err
    repl.command("/regex off")  # clears a schema as well
    assert repl.state.constraint is None
    assert _guides_sent(tmp_path) == [{"kind": "json_schema", "value": FLAG_SCHEMA}]


@pytest.mark.parametrize(("command", "refusal"), [
    ("/schema {dir}/missing.json", r"/schema: {dir}/missing\.json: cannot read it \(No such file or directory\)"),
    ("/schema {dir}/list.json", r"/schema: {dir}/list\.json: a JSON Schema must be a JSON object, got an array"),
    ("/schema {dir}/typo.json", r"/schema: {dir}/typo\.json: invalid json schema: .*integr"),
    ("/regex [0-9", r"/regex: invalid regex: .*unclosed character class"),
])
def test_refused_constraint_keeps_the_previous_one(repl, tmp_path, capsys, command, refusal):
    (tmp_path / "list.json").write_text("[]")
    (tmp_path / "typo.json").write_text(json.dumps({"type": "object", "properties": {"n": {"type": "integr"}}}))
    repl.command("/regex [0-9]{3}")
    capsys.readouterr()
    repl.command(command.format(dir=tmp_path))
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and re.fullmatch("error: " + refusal.format(dir=re.escape(str(tmp_path))), lines[0]), lines
    repl.command("/regex")
    assert capsys.readouterr().err.strip() == "constraint: regex [0-9]{3}"
    repl.ask("Hello")
    assert re.fullmatch("[0-9]{3}", _last_answer(repl))


def test_answer_cut_by_the_length_limit_says_the_json_is_incomplete(repl, schema_file, capsys):
    repl.command(f"/schema {schema_file}")
    repl.command("/params max_tokens=2")  # two byte-level tokens cannot hold a whole object
    capsys.readouterr()
    repl.ask("Hello")
    err = capsys.readouterr().err
    assert re.search(r"2 tokens · [\d.]+ tok/s · first token [\d.]+ s · length limit", err), err
    assert ("the answer reached the length limit before its JSON Schema was complete: it is cut short and does "
            "not match; /params max_tokens=N allows more") in err
    with pytest.raises(json.JSONDecodeError):
        json.loads(_last_answer(repl))  # kept in the conversation, as produced
    repl.command("/schema off")
    capsys.readouterr()
    repl.ask("Hello")
    err = capsys.readouterr().err
    assert "length limit" in err and "JSON Schema" not in err  # a free answer gets only the short note


def test_regex_flag_in_the_terminal_repl(tiny_mistral_dir, tmp_path):
    # Markdown rendering on: a constrained answer that looks like Markdown is still printed as it is.
    child = spawn_repl(tiny_mistral_dir, tmp_path, "--regex", r"\*\*[0-9]{2}\*\*", "--max-tokens", "16")
    child.expect(PROMPT)
    child.sendline("/schema")
    child.expect(r"constraint: regex \\\*\\\*\[0-9\]\{2\}\\\*\\\*")
    child.expect(PROMPT)
    child.sendline("/help")
    child.expect(r"/schema <file>\s+hold the answers to the JSON Schema in <file> \(off: clear; alone: show\)")
    child.expect(r"/regex <pattern>\s+hold the answers to a regex \(off: clear; alone: show\)")
    child.expect(PROMPT)
    child.sendline("Hello there")
    child.expect(r"\*\*[0-9]{2}\*\*\r\n")
    child.expect(r"\d+ tokens · [\d.]+ tok/s")
    assert "\x1b[J" not in child.before  # between the answer and its statistics: no re-render in place
    child.expect(PROMPT)
    child.sendline("/exit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
