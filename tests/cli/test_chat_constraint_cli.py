"""`mistralrs chat --json-schema FILE` / `--regex PATTERN` through the real CLI (issue 15, item 4).

Bad input is one line and exit 2, found before any model loads when the file alone shows it,
else when the engine compiles the constraint, before any answer. One-shot answers on the real
default model parse and validate (JSON Schema) or match (regex).
"""

from __future__ import annotations

import json
import re

import jsonschema
import pytest

from mistralrs_cli.cli import app
from tests.cli_helpers import assert_one_line_error, run_cli, runner

# Nested array, an enum, bounded integers, required and optional fields; bounded so that the
# default model finishes it well within MAX_TOKENS.
CITY_SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 24},
        "country": {"type": "string", "enum": ["France", "Germany", "Italy", "Spain"]},
        "population_millions": {"type": "integer", "minimum": 0, "maximum": 100},
        "landmarks": {"type": "array", "items": {"type": "string", "maxLength": 30}, "maxItems": 2},
    },
    "required": ["city", "country", "population_millions"],
    "additionalProperties": False,
}
MAX_TOKENS = "64"


@pytest.fixture
def city_schema(tmp_path):
    path = tmp_path / "city.json"
    path.write_text(json.dumps(CITY_SCHEMA))
    return path


def _answer(args: list[str], prompt: str) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of a one-shot `mistralrs ARGS` with `prompt` piped in."""
    res = runner.invoke(app, args, input=prompt)
    return res.exit_code, res.stdout, res.stderr


def test_chat_help_lists_the_constraint_flags():
    code, out = run_cli(["chat", "--help"])
    assert code == 0
    for needle in ("Output constraint", "--json-schema", "<file>", "--regex", "<pattern>", "/schema", "/regex"):
        assert needle in out, (needle, out)


# --- bad input: one line, exit 2 ---------------------------------------------------------------

def test_both_flags_are_refused(city_schema):
    assert_one_line_error(*run_cli(["chat", "--json-schema", str(city_schema), "--regex", "[0-9]+"]),
                          "error: --json-schema and --regex: give only one")


@pytest.mark.parametrize(("content", "reason"), [
    (None, "cannot read it (No such file or directory)"),
    ("{not json", "not JSON (Expecting property name enclosed in double quotes at line 1 column 2)"),
    ("[1, 2]", "a JSON Schema must be a JSON object, got an array"),
    ("", "not JSON (Expecting value at line 1 column 1)"),
])
def test_unusable_schema_file_fails_before_the_model_loads(tmp_path, content, reason):
    path = tmp_path / "schema.json"
    if content is not None:
        path.write_text(content)
    # The model folder does not exist: reaching the loader would be a different error.
    code, out = run_cli(["chat", "--json-schema", str(path), "mistral", "-m", str(tmp_path / "no-model")])
    assert_one_line_error(code, out, f"error: --json-schema {path}: {reason}")


def test_schema_file_that_is_a_folder(tmp_path):
    assert_one_line_error(*run_cli(["chat", "--json-schema", str(tmp_path)]),
                          f"error: --json-schema {tmp_path}: cannot read it (Is a directory)")


def test_invalid_schema_is_refused_before_the_model_loads(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"type": "object", "properties": {"n": {"type": "integr"}}}))
    # The model folder does not exist: reaching the loader would be a different error.
    code, out = run_cli(["chat", "--json-schema", str(path), "mistral", "-m", str(tmp_path / "no-model")])
    assert_one_line_error(code, out, f"error: --json-schema {path}: invalid json schema: ", "integr")


def test_invalid_regex_is_refused_before_the_model_loads(tmp_path):
    code, out = run_cli(["chat", "--regex", "[0-9", "mistral", "-m", str(tmp_path / "no-model")])
    assert_one_line_error(code, out, "error: --regex: invalid regex: ", "unclosed character class")


# --- answers ---------------------------------------------------------------------------------

def test_regex_one_shot_on_a_tiny_model_and_logged(tiny_mistral_dir, tmp_path):
    log = tmp_path / "chat.jsonl"
    code, out, err = _answer(["--log", str(log), "chat", "--regex", "[0-9]{3}", "--max-tokens", "8",
                              "mistral", "-m", str(tiny_mistral_dir)], "Hello")
    assert code == 0, err
    assert re.fullmatch("[0-9]{3}", out.removesuffix("\n")), out
    record = json.loads(log.read_text())
    assert record["request"]["guide"] == {"kind": "regex", "value": "[0-9]{3}"}
    assert record["response"]["text"] == out.removesuffix("\n")
    assert record["response"]["finish_reason"] == "stop"  # the constraint completed the answer


def test_constrained_answer_cut_by_max_tokens_warns(tiny_mistral_dir, city_schema):
    # Two tokens of a byte-level tokenizer cannot hold a whole object: the answer ends at "length".
    code, out, err = _answer(["chat", "--json-schema", str(city_schema), "--max-tokens", "2",
                              "mistral", "-m", str(tiny_mistral_dir)], "Hello")
    assert code == 0, err
    assert out.startswith("{") and len(out.strip()) < 10
    with pytest.raises(json.JSONDecodeError):
        json.loads(out)
    assert [line for line in err.splitlines() if line.strip()] == [
        "warning: the answer reached the length limit before its JSON Schema was complete: it is cut short "
        "and does not match; raise --max-tokens"]


@pytest.mark.slow
@pytest.mark.parametrize("sampling", [[], ["--temperature", "0.8", "--seed", "3"]], ids=["greedy", "sampled"])
def test_json_schema_one_shot_on_the_default_model(default_gguf, city_schema, sampling):
    code, out, err = _answer(["chat", "--json-schema", str(city_schema), "--max-tokens", MAX_TOKENS, *sampling],
                             "Describe Paris as JSON.")
    assert code == 0, err
    jsonschema.validate(json.loads(out), CITY_SCHEMA)
    assert "warning" not in err


@pytest.mark.slow
def test_regex_one_shot_on_the_default_model(default_gguf):
    pattern = r"(Yes|No), because [a-z ,]{1,40}\."
    code, out, err = _answer(["chat", "--regex", pattern, "--max-tokens", MAX_TOKENS], "Is Paris in France?")
    assert code == 0, err
    assert re.fullmatch(pattern, out.removesuffix("\n")), out
