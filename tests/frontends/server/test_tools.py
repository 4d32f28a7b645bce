"""Tool calls through the server (tiny model): with tool_choice "required" or a named function every answer
is calls whose arguments validate against the function's parameters, streamed as delta.tool_calls and
equal to the plain answer; earlier calls and tool results are accepted on the next turn; "auto" holds a
call once `<tool_call>` is written; bad tools are 400s."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest

from mistralrs_cli.cli.compose import build_model
from mistralrs_cli.cli.spec import model_spec
from mistralrs_cli.engine import Guide
from mistralrs_cli.frontends.guided_fields import output_plan
from mistralrs_cli.frontends.openai_types import ChatCompletionRequest
from mistralrs_cli.frontends.tool_grammar import auto_grammar
from tests.frontends.server.conftest import LiveServer, start_server
from tests.oracles.tiny_models import save_tiny_folder, tiny_hf_model

WEATHER_PARAMS = {
    "type": "object",
    "properties": {"city": {"type": "string", "pattern": "^[A-Za-z ]{1,12}$"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"],
    "additionalProperties": False,
}
# Open (no additionalProperties): calls are closed to the listed keys all the same, as OpenAI's strict mode.
TIME_PARAMS = {"type": "object", "properties": {"hour24": {"type": "boolean"}}, "required": ["hour24"]}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city", "parameters": WEATHER_PARAMS}},
    {"type": "function", "function": {"name": "get_time", "description": "The time now", "parameters": TIME_PARAMS}},
]
PARAMS = {"get_weather": WEATHER_PARAMS, "get_time": TIME_PARAMS}
MSG = [{"role": "user", "content": "What is the weather in Paris?"}]
CALL_TEXT = '<tool_call>\n{"name": "get_time", "arguments": {"hour24": true}}\n</tool_call>'


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The tiny model with a 2048-token context: its 320-token vocabulary spells the tools' system message
    out in ~750 tokens, more than the shared tiny server's 256."""
    folder = save_tiny_folder(tiny_hf_model("mistral", max_position_embeddings=2048),
                              tmp_path_factory.mktemp("tiny-2k"))
    live = start_server(build_model(model_spec("mistral", model_id=str(folder), device="cpu")))
    yield live
    live.stop()


def _error(e: openai.APIStatusError) -> dict:
    return e.body.get("error", e.body) if isinstance(e.body, dict) else {}


def _check_calls(calls) -> None:
    for call in calls:
        assert call.id.startswith("call_") and call.type == "function"
        jsonschema.validate(json.loads(call.function.arguments), PARAMS[call.function.name])


def _create(server: LiveServer, **kw):
    return server.client().chat.completions.create(model="tiny", messages=kw.pop("messages", MSG), tools=TOOLS,
                                                   max_tokens=kw.pop("max_tokens", 200), **kw)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_required_calls_validate_and_finish_with_tool_calls(server: LiveServer, temperature):
    for seed in range(3):
        r = _create(server, tool_choice="required", parallel_tool_calls=False, temperature=temperature, seed=seed)
        choice = r.choices[0]
        assert choice.finish_reason == "tool_calls", choice
        assert choice.message.content is None and len(choice.message.tool_calls) == 1
        _check_calls(choice.message.tool_calls)


def test_a_named_function_is_the_one_called(server: LiveServer):
    named = {"type": "function", "function": {"name": "get_time"}}
    r = _create(server, tool_choice=named, temperature=1.0, seed=5, n=2, parallel_tool_calls=False)
    assert len(r.choices) == 2
    for choice in r.choices:
        assert choice.finish_reason == "tool_calls"
        assert [c.function.name for c in choice.message.tool_calls] == ["get_time"]
        _check_calls(choice.message.tool_calls)


def test_streamed_calls_equal_the_plain_answer(server: LiveServer):
    kw = {"tool_choice": "required", "temperature": 0.0}
    plain = _create(server, **kw).choices[0]
    chunks = list(_create(server, stream=True, **kw))
    assert chunks[0].choices[0].delta.role == "assistant"
    deltas = [tc for c in chunks for tc in (c.choices[0].delta.tool_calls or [])]
    content = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert deltas and [d.index for d in deltas] == list(range(len(deltas)))
    assert [(d.function.name, d.function.arguments) for d in deltas] == \
        [(c.function.name, c.function.arguments) for c in plain.message.tool_calls or []]
    assert (content or None) == plain.message.content
    assert chunks[-1].choices[0].finish_reason == plain.finish_reason
    if plain.finish_reason == "tool_calls":
        _check_calls(deltas)


def test_the_sdk_stream_helper_assembles_the_calls(server: LiveServer):
    client = server.client()
    with client.chat.completions.stream(model="tiny", messages=MSG, tools=TOOLS, max_tokens=200, temperature=0,
                                        tool_choice="required", parallel_tool_calls=False) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    (choice,) = final.choices
    assert choice.finish_reason == "tool_calls"
    _check_calls(choice.message.tool_calls)


def test_a_call_and_its_result_are_accepted_on_the_next_turn(server: LiveServer):
    first = _create(server, tool_choice="required", parallel_tool_calls=False, temperature=0).choices[0]
    call = first.message.tool_calls[0]
    history = MSG + [first.message.model_dump(exclude_unset=True),
                     {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature": 18})}]
    r = _create(server, messages=history, tool_choice="none", temperature=0, max_tokens=8)
    assert r.choices[0].message.tool_calls is None and r.choices[0].finish_reason in ("stop", "length")
    r = _create(server, messages=history, temperature=0, max_tokens=8)  # "auto": calls or text
    assert r.choices[0].finish_reason in ("stop", "length", "tool_calls")


def test_auto_lets_text_through_and_holds_a_call_once_it_starts(server: LiveServer):
    engine = server.state.engine
    functions = [(t["function"]["name"], t["function"]["parameters"]) for t in TOOLS]
    tokenizer = engine.loaded.tokenizer.tokenizer

    def accepts(text: str, parallel: bool = True) -> bool:
        matcher = engine.core.guides.matcher(Guide("grammar", auto_grammar(functions, parallel)))
        return matcher.consume_tokens(tokenizer.encode(text, add_special_tokens=False).ids) and matcher.is_accepting()

    call = CALL_TEXT
    assert accepts("It is sunny, no tool needed.")
    assert accepts("Let me look.\n" + call)
    assert accepts(call + "\n" + call)
    assert not accepts(call + "\n" + call, parallel=False)
    assert not accepts('<tool_call>\n{"name": "get_time", "arguments": {"hour24": 3}}\n</tool_call>')
    assert not accepts('<tool_call>\n{"name": "rm_rf", "arguments": {}}\n</tool_call>')
    assert not accepts(call + " and some text after the call")
    r = _create(server, temperature=1.0, seed=2, max_tokens=10)
    assert r.choices[0].finish_reason in ("stop", "length", "tool_calls")


def test_auto_with_response_format_answers_calls_or_the_schema(server: LiveServer):
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"], "additionalProperties": False}
    fmt = {"type": "json_schema", "json_schema": {"name": "r", "schema": schema}}
    for seed in range(4):
        choice = _create(server, response_format=fmt, temperature=1.0, seed=seed, parallel_tool_calls=False).choices[0]
        if choice.finish_reason == "tool_calls":
            _check_calls(choice.message.tool_calls)
        else:  # which of the two a random model picks is its business; both must be whole
            assert choice.finish_reason == "stop" and choice.message.tool_calls is None
            jsonschema.validate(json.loads(choice.message.content), schema)
    engine, tokenizer = server.state.engine, server.state.engine.loaded.tokenizer.tokenizer
    guide = output_plan(ChatCompletionRequest.model_validate(
        {"messages": MSG, "tools": TOOLS, "response_format": fmt})).guide
    for text, ok in (('{"ok": true}', True), (CALL_TEXT, True), ("Hello", False), ('{"ok": 1}', False),
                     ('{"ok": true}' + CALL_TEXT, False)):
        matcher = engine.core.guides.matcher(guide)
        accepted = matcher.consume_tokens(tokenizer.encode(text, add_special_tokens=False).ids) and matcher.is_accepting()
        assert accepted is ok, text


@pytest.mark.parametrize(("kw", "param", "fragment"), [
    ({"tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice", "no function 'nope'"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {"a": {"$ref": "#/missing"}}}}}]},
     "tools", "function 'f': invalid parameters schema"),
    ({"tools": [{"type": "function", "function": {"name": "bad name"}}]}, "tools.function.name", "pattern"),
    ({"tool_choice": "required", "response_format": {"type": "json_object"}}, "tools", "only one output constraint"),
    ({"tools": [], "tool_choice": "required"}, "tool_choice", "needs tools"),
])
def test_bad_tools_are_400s_naming_the_field(server: LiveServer, kw, param, fragment):
    body = {"tools": TOOLS, **kw}
    with pytest.raises(openai.BadRequestError) as e:
        server.client().chat.completions.create(model="tiny", messages=MSG, max_tokens=5, **body)
    err = _error(e.value)
    assert fragment in err["message"] and err["param"] == param and "\n" not in err["message"], err
    with pytest.raises(openai.BadRequestError):
        server.client().chat.completions.create(model="tiny", messages=[
            *MSG, {"role": "assistant", "tool_calls": [{"id": "1", "type": "function",
                                                       "function": {"name": "get_time", "arguments": "not json"}}]}],
            max_tokens=5)
    server.wait_idle()
