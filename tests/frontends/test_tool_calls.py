"""Tool calls without a model: the streaming parser, the prompt for both kinds of template, earlier turns'
calls and results, the call grammars, and how request fields become a constraint (or a 400)."""

from __future__ import annotations

import json

import llguidance
import pytest
from pydantic import ValidationError

from mistralrs_cli.engine import Guide
from mistralrs_cli.frontends.guided_fields import FieldError, output_plan
from mistralrs_cli.frontends.openai_types import (
    ChatCompletionRequest,
    CompletionRequest,
    validation_message,
)
from mistralrs_cli.frontends.tool_calls import (
    ToolCallParser,
    finish_reason,
    format_call,
    split_text,
)
from mistralrs_cli.frontends.tool_grammar import auto_grammar, call_schema, required_grammar
from mistralrs_cli.frontends.tool_prompt import template_messages

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
TIME = {"type": "function", "function": {"name": "get_time"}}
NAMES = {"get_weather", "get_time"}
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
USER = {"role": "user", "content": "Weather in Paris?"}


def _stream(pieces: list[str]) -> tuple[str, list, ToolCallParser]:
    parser = ToolCallParser(NAMES)
    content, calls = "", []
    for piece in pieces:
        text, done = parser.feed(piece)
        content += text
        calls += done
    return content + parser.finish(), calls, parser


def _chunks(text: str, size: int) -> list[str]:
    return [text[i:i + size] for i in range(0, len(text), size)]


# --- parsing ----------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 11, 1000])
def test_stream_parser_any_split_gives_the_whole_text_answer(size):
    text = "Let me check.\n" + CALL + "\n" + CALL.replace("get_weather", "get_time").replace('{"city": "Paris"}', "{}")
    content, calls, _ = _stream(_chunks(text, size))
    assert content == "Let me check.\n"
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("get_weather", {"city": "Paris"}), ("get_time", {})]
    whole_content, whole_calls, cut = split_text(text, NAMES)
    assert whole_content == content and [c.arguments for c in whole_calls] == [c.arguments for c in calls]
    assert not cut and len({c.id for c in calls}) == 2
    assert all(c.id.startswith("call_") and len(c.id) == 29 for c in calls)


def test_text_that_may_start_a_call_is_held_back_until_it_cannot():
    parser = ToolCallParser(NAMES)
    assert parser.feed("Hi <tool") == ("Hi ", [])
    assert parser.feed("box>") == ("<toolbox>", [])  # not the trigger after all: released
    assert parser.feed("<") == ("", [])
    text, calls = parser.feed("tool_call>\n" + CALL.split("\n", 1)[1])
    assert text == "" and [c.name for c in calls] == ["get_weather"]
    assert parser.feed("\n\n") == ("", [])  # whitespace after a call is layout
    assert parser.finish() == ""


def test_a_call_cut_off_stays_content_and_finish_reason_keeps_length():
    text = "Sure. " + CALL + "\n" + CALL[:30]
    content, calls, cut = split_text(text, NAMES)
    assert [c.name for c in calls] == ["get_weather"] and cut
    assert content == "Sure. " + CALL[:30]  # the newline between calls is layout
    assert finish_reason("length", calls) == "length"
    assert finish_reason("stop", calls) == "tool_calls"
    assert finish_reason("stop", []) == "stop"
    streamed, streamed_calls, parser = _stream(_chunks(text, 4))
    assert streamed == content and len(streamed_calls) == 1 and parser.cut_call


@pytest.mark.parametrize("body", [
    "not json", '{"name": "unknown_fn", "arguments": {}}', '{"name": "get_time"}', '["get_time", {}]',
    '{"name": "get_time", "arguments": [1]}', '{"name": "get_time", "arguments": {}, "extra": 1}',
])
def test_a_block_that_is_not_a_known_call_stays_content(body):
    block = f"<tool_call>\n{body}\n</tool_call>"
    content, calls, _ = split_text("x " + block, NAMES)
    assert calls == [] and content == "x " + block


def test_arguments_encoded_as_a_string_are_accepted_and_no_tools_text_is_plain():
    content, calls, _ = split_text('<tool_call>{"name": "get_weather", "arguments": "{\\"city\\": \\"Oslo\\"}"}</tool_call>', NAMES)
    assert content is None and json.loads(calls[0].arguments) == {"city": "Oslo"}
    assert split_text("plain answer", NAMES) == ("plain answer", [], False)


# --- prompt and earlier turns ------------------------------------------------------------------
def _request(**fields) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"messages": [USER], **fields})


def test_a_template_without_tools_gets_a_system_message_merged_into_the_first():
    req = _request(tools=[WEATHER, TIME], tool_choice="required", parallel_tool_calls=False)
    plan = output_plan(req)
    (system, user) = template_messages(req.messages, plan.tools, template_takes_tools=False)
    assert system["role"] == "system" and user == USER
    text = system["content"]
    assert '"name": "get_weather"' in text and '"description": "Weather in a city"' in text and '"name": "get_time"' in text
    assert "<tool_call>" in text and "</tool_call>" in text and "must call at least one" in text and "at most one" in text
    req2 = ChatCompletionRequest.model_validate({"messages": [{"role": "developer", "content": "Be brief."}, USER],
                                                 "tools": [WEATHER, TIME], "tool_choice": {"type": "function", "function": {"name": "get_time"}}})
    (system2, _) = template_messages(req2.messages, output_plan(req2).tools, False)
    assert system2["content"].startswith("Be brief.\n\n") and "must call the function get_time" in system2["content"]
    assert '"name": "get_weather"' not in system2["content"]  # only the named function is offered
    none = _request(tools=[WEATHER], tool_choice="none")
    assert output_plan(none).tools is None and output_plan(none).guide is None
    assert template_messages(none.messages, None, False) == [USER]


def _history() -> list[dict]:
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    return [USER, {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_1", "content": "18 C"},
            {"role": "tool", "tool_call_id": "call_2", "content": "sunny"}]


def test_earlier_calls_and_results_in_transformers_shape_for_a_template_with_tools():
    req = ChatCompletionRequest.model_validate({"messages": _history(), "tools": [WEATHER]})
    msgs = template_messages(req.messages, output_plan(req).tools, template_takes_tools=True)
    assert msgs[0] == USER  # the template renders the tools itself: no system message added
    assert msgs[1] == {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "id": "call_1", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]}
    assert msgs[2] == {"role": "tool", "content": "18 C", "tool_call_id": "call_1"}
    assert msgs[3]["tool_call_id"] == "call_2"


def test_earlier_calls_and_results_as_text_for_any_other_template():
    req = ChatCompletionRequest.model_validate({"messages": _history()})
    msgs = template_messages(req.messages, None, template_takes_tools=False)
    assert msgs == [USER, {"role": "assistant", "content": format_call("get_weather", {"city": "Paris"})},
                    {"role": "user", "content": "<tool_response>\n18 C\n</tool_response>\n"
                                                "<tool_response>\nsunny\n</tool_response>"}]
    assert split_text(msgs[1]["content"], NAMES)[1][0].arguments == '{"city": "Paris"}'  # the format the parser reads


# --- grammars -----------------------------------------------------------------------------------
def _valid(grammar: str) -> str:
    return llguidance.LLMatcher.validate_grammar(llguidance.grammar_from("lark", grammar))


def test_call_grammars_compile_and_keep_definitions_resolvable():
    params = {"$defs": {"Unit": {"enum": ["c", "f"]}}, "type": "object",
              "properties": {"unit": {"$ref": "#/$defs/Unit"}}, "required": ["unit"]}
    fns = [("get_weather", WEATHER["function"]["parameters"]), ("convert", params), ("get_time", None)]
    for parallel in (True, False):
        assert _valid(required_grammar(fns, parallel)) == ""
        assert _valid(auto_grammar(fns, parallel)) == ""
    schema = call_schema("convert", params)
    assert schema["$defs"] == params["$defs"] and "$defs" not in schema["properties"]["arguments"]
    assert call_schema("get_time", None)["properties"]["arguments"]["additionalProperties"] is False
    nested = call_schema("f", {"type": "object", "properties": {"a": {"type": "object", "properties": {"b": {}}}}})
    args = nested["properties"]["arguments"]
    assert args["additionalProperties"] is False and args["properties"]["a"]["additionalProperties"] is False


# --- fields -> constraint, and the 400s -------------------------------------------------------
@pytest.mark.parametrize(("fields", "kind"), [
    ({"response_format": {"type": "text"}}, None),
    ({"response_format": {"type": "json_object"}}, "json_object"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}}, "json_schema"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "json_object"),
    ({"guided_json": {"type": "integer"}}, "json_schema"),
    ({"guided_json": '{"type": "integer"}'}, "json_schema"),
    ({"guided_regex": "[a-z]+"}, "regex"),
    ({"guided_grammar": 'start: "yes" | "no"'}, "grammar"),
    ({"guided_choice": ["yes", "no"]}, "choice"),
    ({"tools": [WEATHER]}, "grammar"),
    ({"tools": [WEATHER], "tool_choice": "none"}, None),
    ({"tools": []}, None),
])
def test_each_field_becomes_its_guide(fields, kind):
    plan = output_plan(_request(**fields))
    assert (plan.guide.kind if plan.guide else None) == kind
    if kind is not None:
        assert plan.field == next(iter(fields))
    if "guided_json" in fields:
        assert plan.guide == Guide("json_schema", {"type": "integer"})


@pytest.mark.parametrize("fields", [
    {"response_format": {"type": "json_object"}}, {"guided_regex": "[a-z]+/"}, {"guided_choice": ["a", "b"]},
    {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}},
])
def test_auto_tools_with_a_response_constraint_is_one_grammar_answer_or_calls(fields):
    plan = output_plan(_request(tools=[WEATHER], **fields))
    assert plan.guide.kind == "grammar" and plan.field == next(iter(fields)) and plan.tools.choice == "auto"
    assert plan.guide.value.splitlines()[1].startswith("start: answer | call")
    assert _valid(plan.guide.value) == ""


def test_completions_take_the_response_fields_too():
    plan = output_plan(CompletionRequest.model_validate({"prompt": "x", "guided_choice": ["a", "b"]}))
    assert plan.guide == Guide("choice", ["a", "b"]) and plan.tools is None


@pytest.mark.parametrize(("fields", "param", "fragment"), [
    ({"response_format": {"type": "json_object"}, "guided_regex": "a"}, "guided_regex", "'response_format' and 'guided_regex'"),
    ({"guided_choice": ["a"], "tools": [WEATHER], "tool_choice": "required"}, "tools", "'guided_choice' and 'tools'"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice", "no function 'nope'"),
    ({"tool_choice": "required"}, "tool_choice", "needs tools"),
    ({"tools": [WEATHER, WEATHER]}, "tools", "defined twice"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "foo"}}}]}, "tools",
     "function 'f': invalid parameters schema: Invalid type: foo"),
    ({"guided_grammar": 'start: "a"', "tools": [WEATHER]}, "tools", "'guided_grammar' and 'tools'"),
    ({"guided_regex": "(unclosed", "tools": [WEATHER]}, "guided_regex", "invalid regex"),
    ({"guided_json": {"type": "foo"}, "tools": [WEATHER], "tool_choice": "auto"}, "guided_json", "invalid json schema"),
    ({"guided_json": "[1"}, "guided_json", "not valid JSON"),
    ({"guided_json": "[1]"}, "guided_json", "must be a JSON object"),
])
def test_contradictions_and_bad_tools_are_field_errors(fields, param, fragment):
    with pytest.raises(FieldError) as e:
        output_plan(_request(**fields))
    assert e.value.param == param and fragment in e.value.message, e.value.message
    assert "\n" not in e.value.message


@pytest.mark.parametrize(("body", "message"), [
    ({"messages": [USER], "guided_decoding_backend": "xgrammar"}, "unknown field 'guided_decoding_backend'"),
    ({"messages": [{**USER, "cache_control": {}}]}, "unknown field 'messages.cache_control'"),
    ({"messages": [USER], "tools": [{"type": "function", "function": {"name": "f", "strict": True, "x": 1}}]},
     "unknown field 'tools.function.x'"),
    ({"messages": [USER], "response_format": {"type": "json_schema"}}, "needs a 'json_schema' object"),
    ({"messages": [USER], "tool_choice": "sometimes"}, "tool_choice"),
    ({"messages": [{"role": "assistant", "tool_calls": [
        {"id": "1", "type": "function", "function": {"name": "f", "arguments": "{1"}}]}]}, "JSON object"),
])
def test_unknown_fields_and_bad_shapes_are_named(body, message):
    with pytest.raises(ValidationError) as e:
        ChatCompletionRequest.model_validate(body)
    text, param = validation_message(e.value)
    assert message in text and param is not None and "\n" not in text


def test_harmless_fields_and_what_the_sdk_echoes_back_are_accepted():
    echoed = {"role": "assistant", "content": "x", "refusal": None, "annotations": [], "parsed": {"a": 1}}
    req = ChatCompletionRequest.model_validate({
        "messages": [USER, echoed], "user": "u", "metadata": {"k": "v"}, "store": False, "service_tier": "auto",
        "prompt_cache_key": "k", "safety_identifier": "s", "stream_options": {"include_usage": True,
                                                                               "include_obfuscation": False}})
    assert req.messages[1].text() == "x"
