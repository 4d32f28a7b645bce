"""Output constraints through the server (tiny model): response_format and vLLM's guided_* fields hold
every answer, streamed or not, on chat and completions; invalid constraints are one-line 400s naming
the field."""

from __future__ import annotations

import json
import re

import jsonschema
import openai
import pytest

from tests.frontends.server.conftest import LiveServer

MSG = [{"role": "user", "content": "Describe a cat."}]
SCHEMA = {
    "type": "object",
    "properties": {
        "age": {"type": "integer", "minimum": 0, "maximum": 30},
        "color": {"enum": ["black", "white", "ginger"]},
        "indoor": {"type": "boolean"},
        "tags": {"type": "array", "items": {"enum": ["cute", "lazy"]}, "maxItems": 2},
    },
    "required": ["age", "color", "indoor"],
    "additionalProperties": False,
}
SCHEMA_FORMAT = {"type": "json_schema", "json_schema": {"name": "cat", "schema": SCHEMA, "strict": True}}


def _error(e: openai.APIStatusError) -> dict:
    return e.body.get("error", e.body) if isinstance(e.body, dict) else {}


def _chat(server: LiveServer, max_tokens: int = 80, **extra):
    return server.client().chat.completions.create(model="tiny", messages=MSG, max_tokens=max_tokens,
                                                   extra_body=extra)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_json_schema_answers_validate(server: LiveServer, temperature):
    for seed in range(3):
        r = _chat(server, response_format=SCHEMA_FORMAT, temperature=temperature, seed=seed)
        choice = r.choices[0]
        assert choice.finish_reason == "stop", choice
        jsonschema.validate(json.loads(choice.message.content), SCHEMA)


def test_guided_json_as_text_and_json_object_parse(server: LiveServer):
    r = _chat(server, guided_json=json.dumps(SCHEMA), temperature=0)
    jsonschema.validate(json.loads(r.choices[0].message.content), SCHEMA)
    r = _chat(server, max_tokens=200, response_format={"type": "json_object"}, temperature=1.0, seed=4)
    if r.choices[0].finish_reason == "stop":  # a random model may still be inside a long string at 200 tokens
        assert isinstance(json.loads(r.choices[0].message.content), dict)
    else:
        assert r.choices[0].message.content.startswith("{")


def test_regex_choice_and_grammar_hold_chat_and_completions(server: LiveServer):
    client = server.client()
    for seed in range(3):
        r = _chat(server, guided_regex=r"[A-Z][a-z]{2,8} (is|was) [0-9]{1,2}\.", temperature=1.0, seed=seed)
        assert re.fullmatch(r"[A-Z][a-z]{2,8} (is|was) [0-9]{1,2}\.", r.choices[0].message.content)
        assert r.choices[0].finish_reason == "stop"
    r = _chat(server, guided_choice=["yes", "no", "maybe"], temperature=1.0, seed=1)
    assert r.choices[0].message.content in ("yes", "no", "maybe")
    r = _chat(server, guided_grammar='start: "x=" NUM ";"\nNUM: /[0-9]{1,3}/', temperature=1.0, seed=2)
    assert re.fullmatch(r"x=[0-9]{1,3};", r.choices[0].message.content)
    gbnf = 'root ::= "A" [0-9] [0-9]'
    r = _chat(server, guided_grammar=gbnf, temperature=1.0, seed=2)
    assert re.fullmatch(r"A[0-9][0-9]", r.choices[0].message.content)
    c = client.completions.create(model="tiny", prompt="Answer:", max_tokens=10, n=2, temperature=1.0, seed=3,
                                  extra_body={"guided_choice": ["red", "green"]})
    assert {x.text for x in c.choices} <= {"red", "green"} and len(c.choices) == 2
    c = client.completions.create(model="tiny", prompt=["A", "B"], max_tokens=60, temperature=0,
                                  extra_body={"response_format": SCHEMA_FORMAT})
    for choice in c.choices:
        jsonschema.validate(json.loads(choice.text), SCHEMA)


def test_streamed_constrained_answer_equals_the_plain_one(server: LiveServer):
    plain = _chat(server, response_format=SCHEMA_FORMAT, temperature=0).choices[0].message.content
    chunks = list(server.client().chat.completions.create(model="tiny", messages=MSG, max_tokens=80, temperature=0,
                                                           stream=True, extra_body={"response_format": SCHEMA_FORMAT}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == plain
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_a_constraint_unfinished_at_max_tokens_is_length_with_the_partial_text(server: LiveServer):
    r = _chat(server, max_tokens=3, guided_regex=r"[a-z]{20}", temperature=1.0, seed=1)
    choice = r.choices[0]
    assert choice.finish_reason == "length" and re.fullmatch(r"[a-z]{1,19}", choice.message.content)


@pytest.mark.parametrize(("extra", "param", "fragment"), [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "foo"}}}},
     "response_format", "invalid json schema"),
    ({"guided_json": {"type": "integer", "minimum": 5, "maximum": 1}}, "guided_json", "invalid json schema"),
    ({"guided_regex": "(unclosed"}, "guided_regex", "invalid regex"),
    ({"guided_grammar": "start: missing_rule"}, "guided_grammar", "invalid grammar"),
    ({"guided_choice": ["a"], "guided_regex": "a"}, "guided_choice", "only one output constraint"),
    ({"response_format": {"type": "json_object"}, "guided_grammar": 'start: "a"'}, "guided_grammar",
     "'response_format' and 'guided_grammar'"),
    ({"response_format": {"type": "json_schema"}}, "response_format", "needs a 'json_schema' object"),
    ({"guided_choice": []}, "guided_choice", "guided_choice"),
])
def test_invalid_constraints_are_one_line_400s_naming_the_field(server: LiveServer, extra, param, fragment):
    client = server.client()
    calls = [lambda: client.chat.completions.create(model="tiny", messages=MSG, max_tokens=5, extra_body=extra),
             lambda: list(client.chat.completions.create(model="tiny", messages=MSG, max_tokens=5, stream=True,
                                                         extra_body=extra)),
             lambda: client.completions.create(model="tiny", prompt="Hi", max_tokens=5, extra_body=extra)]
    for call in calls:
        with pytest.raises(openai.BadRequestError) as e:
            call()
        err = _error(e.value)
        assert fragment in err["message"] and "\n" not in err["message"], err
        assert err["param"] == param and err["type"] == "invalid_request_error", err
    server.wait_idle()
