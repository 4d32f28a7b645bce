"""The real default model through a real server and the official openai SDK: `beta.chat.completions.parse`
with a pydantic model, json_object and regex answers, and a tools round trip (call -> tool result ->
final answer), streamed and not, with the arguments validated against the function's parameters."""

from __future__ import annotations

import json
import re
from typing import Literal

import jsonschema
import pytest
from pydantic import BaseModel, Field

from mistralrs_cli.cli.compose import build_model
from mistralrs_cli.cli.spec import model_spec
from mistralrs_cli.frontends.options import ServeOptions
from tests.frontends.server.conftest import LiveServer, start_server

pytestmark = pytest.mark.slow

MODEL = "default"
WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 40}, "unit": {"enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Get the current weather in a city",
                                      "parameters": WEATHER}},
    {"type": "function", "function": {"name": "get_time", "description": "Get the local time in a city",
                                      "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40}},
                                                     "required": ["city"], "additionalProperties": False}}},
]
PARAMETERS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
ASK = [{"role": "user", "content": "What is the weather in Paris right now?"}]
RESULT = json.dumps({"temperature": 18, "unit": "celsius", "sky": "sunny"})


class City(BaseModel):
    name: str = Field(max_length=40)
    country: str = Field(max_length=40)
    is_capital: bool
    continent: Literal["Africa", "America", "Asia", "Europe", "Oceania"]
    founded_century: int = Field(ge=-10, le=21)


@pytest.fixture(scope="module")
def real(default_gguf) -> LiveServer:
    live = start_server(build_model(model_spec("default")),
                        ServeOptions(host="127.0.0.1", port=0, served_names=(MODEL,)))
    yield live
    live.stop()


@pytest.mark.parametrize(("city", "temperature"), [("Paris", 0.0), ("Tokyo", 0.0), ("Rome", 0.8)])
def test_parse_with_a_pydantic_model_returns_the_object(real: LiveServer, city, temperature):
    r = real.client().beta.chat.completions.parse(
        model=MODEL, messages=[{"role": "user", "content": f"Give me facts about {city} as JSON."}],
        response_format=City, max_tokens=80, temperature=temperature, seed=1)
    choice = r.choices[0]
    assert choice.finish_reason == "stop" and isinstance(choice.message.parsed, City), choice
    assert choice.message.parsed == City.model_validate_json(choice.message.content)


@pytest.mark.parametrize("seed", [0, 1])
def test_json_object_answers_parse(real: LiveServer, seed):
    r = real.client().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Reply with a JSON object with a dog's name and age."}],
        response_format={"type": "json_object"}, max_tokens=80, temperature=0.7, seed=seed)
    assert r.choices[0].finish_reason == "stop", r.choices[0]
    assert isinstance(json.loads(r.choices[0].message.content), dict)


def test_a_regex_constraint_matches(real: LiveServer):
    pattern = r"(Paris|London|Rome|Berlin) is the capital of (France|England|Italy|Germany)\."
    for seed in range(3):
        r = real.client().chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "What is the capital of France?"}],
            max_tokens=30, temperature=1.0, seed=seed, extra_body={"guided_regex": pattern})
        assert re.fullmatch(pattern, r.choices[0].message.content) and r.choices[0].finish_reason == "stop"


def _validated(name: str, arguments: str) -> dict:
    args = json.loads(arguments)
    jsonschema.validate(args, PARAMETERS[name])
    return args


def _streamed(client, **kw) -> tuple[str, list[dict], str]:
    """(content, tool calls as OpenAI message entries, finish_reason) assembled from the chunks."""
    content, calls, finish = "", [], None
    for chunk in client.chat.completions.create(stream=True, **kw):
        for choice in chunk.choices:
            content += choice.delta.content or ""
            for tc in choice.delta.tool_calls or []:
                assert tc.index == len(calls) and tc.id.startswith("call_")
                calls.append({"id": tc.id, "type": "function",
                              "function": {"name": tc.function.name, "arguments": tc.function.arguments}})
            finish = choice.finish_reason or finish
    return content, calls, finish


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("tool_choice", ["required", {"type": "function", "function": {"name": "get_weather"}}])
def test_a_tools_round_trip(real: LiveServer, stream, tool_choice):
    client = real.client()
    kw = {"model": MODEL, "tools": TOOLS, "max_tokens": 60, "temperature": 0}
    if stream:
        content, calls, finish = _streamed(client, messages=ASK, tool_choice=tool_choice, parallel_tool_calls=False, **kw)
        assistant = {"role": "assistant", "content": content or None, "tool_calls": calls}
    else:
        r = client.chat.completions.create(messages=ASK, tool_choice=tool_choice, parallel_tool_calls=False, **kw)
        finish, message = r.choices[0].finish_reason, r.choices[0].message
        assistant = message.model_dump(exclude_unset=True)
        calls = assistant["tool_calls"]
    assert finish == "tool_calls" and len(calls) == 1, assistant
    (call,) = calls
    if isinstance(tool_choice, dict):
        assert call["function"]["name"] == "get_weather"
    assert _validated(call["function"]["name"], call["function"]["arguments"])["city"]
    follow_up = [*ASK, assistant, {"role": "tool", "tool_call_id": call["id"], "content": RESULT}]
    # The final answer: tools still offered ("auto": text or calls), or withdrawn ("none").
    final_choice = "auto" if stream else "none"
    if stream:
        answer, more_calls, finish = _streamed(client, messages=follow_up, tool_choice=final_choice, **kw)
    else:
        r = client.chat.completions.create(messages=follow_up, tool_choice=final_choice, **kw)
        answer, more_calls, finish = r.choices[0].message.content, r.choices[0].message.tool_calls or [], \
            r.choices[0].finish_reason
    assert finish == "stop" and answer and more_calls == []
