"""`mistralrs batch` with response_format, guided_* and tools lines: the same output shapes as the server
(answers that validate, message.tool_calls with finish_reason "tool_calls"); an invalid constraint, two
constraints or an unknown field make an error record and the other lines still run."""

from __future__ import annotations

import json

import jsonschema
import pytest
from typer.testing import CliRunner

from mistralrs_cli.cli import app
from tests.oracles.tiny_models import save_tiny_folder, tiny_hf_model

runner = CliRunner(env={"COLUMNS": "200"})
SCHEMA = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 99},
                                           "ok": {"type": "boolean"}},
          "required": ["n", "ok"], "additionalProperties": False}
PARAMS = {"type": "object", "properties": {"city": {"type": "string", "pattern": "^[A-Za-z]{1,10}$"}},
          "required": ["city"], "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": PARAMS}}]
ASK = [{"role": "user", "content": "Weather in Oslo?"}]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    # A 2048-token context: the tiny 320-token vocabulary spells the tools' system message out in ~600 tokens.
    return save_tiny_folder(tiny_hf_model("mistral", max_position_embeddings=2048), tmp_path_factory.mktemp("tiny-2k"))


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_structured_and_tool_lines_answer_and_bad_ones_are_error_records(model_dir, tmp_path):
    rows = [
        {"custom_id": "schema", "method": "POST", "url": "/v1/chat/completions",
         "body": {"messages": ASK, "max_tokens": 40, "temperature": 1.0, "seed": 1,
                  "response_format": {"type": "json_schema", "json_schema": {"name": "r", "schema": SCHEMA}}}},
        {"id": "choice", "prompt": "Pick:", "max_tokens": 5, "guided_choice": ["left", "right"]},
        {"id": "tools", "messages": ASK, "tools": TOOLS, "tool_choice": "required", "parallel_tool_calls": False,
         "max_tokens": 150, "temperature": 0},
        {"id": "bad-schema", "messages": ASK, "guided_json": {"type": "object", "properties": {"a": {"type": "nope"}}}},
        {"id": "two", "messages": ASK, "guided_regex": "a+", "guided_choice": ["a"]},
        {"id": "unknown", "messages": ASK, "guided_whitespace_pattern": " "},
        {"id": "bad-tool", "messages": ASK, "tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "x"}}},
    ]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out.jsonl"
    res = runner.invoke(app, ["batch", str(src), "-o", str(out), "mistral", "-m", str(model_dir)])
    assert res.exit_code == 1, res.output
    answers = {r["custom_id"]: r["response"]["body"] for r in _lines(out)}
    assert sorted(answers) == ["choice", "schema", "tools"]

    schema_choice = answers["schema"]["choices"][0]
    assert schema_choice["finish_reason"] == "stop"
    jsonschema.validate(json.loads(schema_choice["message"]["content"]), SCHEMA)
    assert answers["choice"]["choices"][0]["text"] in ("left", "right")
    tool_choice = answers["tools"]["choices"][0]
    assert tool_choice["finish_reason"] == "tool_calls" and tool_choice["message"]["content"] is None
    (call,) = tool_choice["message"]["tool_calls"]
    assert call["id"].startswith("call_") and call["type"] == "function" and call["function"]["name"] == "get_weather"
    jsonschema.validate(json.loads(call["function"]["arguments"]), PARAMS)

    errors = {r["custom_id"]: r["error"] for r in _lines(tmp_path / "out.errors.jsonl")}
    assert sorted(errors) == ["bad-schema", "bad-tool", "two", "unknown"]
    assert errors["bad-schema"]["message"].startswith("line 4: invalid json schema:")
    assert "only one output constraint" in errors["two"]["message"]
    assert errors["unknown"]["message"] == "line 6: unknown field 'guided_whitespace_pattern'"
    assert "no function 'x'" in errors["bad-tool"]["message"]
    assert all(e["code"] == "invalid_request" and "\n" not in e["message"] for e in errors.values())
