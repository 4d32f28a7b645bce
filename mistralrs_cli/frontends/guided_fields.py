"""A request's output constraint and tool use, read from its fields (serve and batch).

`response_format`, vLLM's `guided_json` / `guided_regex` / `guided_grammar` / `guided_choice`,
and tools with a `tool_choice` other than "none" each constrain the answer; a request may use
one of them, except that tools with "auto" combine with a response constraint other than a
grammar (the answer is then calls, or matches the constraint: what OpenAI does with tools and
`response_format` together). The constraint becomes the engine's `Guide`, which the engine
compiles against the model's tokenizer when the request is submitted (an invalid one fails
there, with its reason).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from mistralrs_cli.engine import Guide
from mistralrs_cli.errors import RequestError
from mistralrs_cli.frontends.openai_types import ChatCompletionRequest, CompletionRequest
from mistralrs_cli.frontends.tool_grammar import (
    answer_or_calls_grammar,
    answer_rule,
    auto_grammar,
    lark_error,
    parameters_error,
    required_grammar,
)
from mistralrs_cli.frontends.tool_prompt import ToolUse


class FieldError(RequestError):
    """An invalid request field; `param` names it in the 400."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class OutputPlan:
    """What the answer is held to, which field asked for it, and the tools it may call."""

    guide: Guide | None = None
    field: str | None = None  # the request field of `guide` (the param of its errors)
    tools: ToolUse | None = None  # set: the answer's tool calls are parsed out of its text

    def field_error(self, err: RequestError) -> RequestError:
        """The engine's error for an invalid constraint, naming the field it came from; other errors as they are."""
        if self.guide is None or self.field is None:
            return err
        if not err.message.startswith(f"invalid {self.guide.kind.replace('_', ' ')}"):
            return err
        return FieldError(err.message, self.field)


def output_plan(req: ChatCompletionRequest | CompletionRequest) -> OutputPlan:
    """The request's constraint and tool use; FieldError for contradictions and bad tools."""
    asked = _response_constraints(req)
    use = tool_use(req) if isinstance(req, ChatCompletionRequest) else None
    if use is not None and use.choice == "auto" and len(asked) == 1:
        combined = _answer_or_calls(use, *asked[0])
        if combined is not None:
            return OutputPlan(combined, asked[0][0], use)
    if use is not None:
        asked.append(("tools", _tool_guide(use)))
    if len(asked) > 1:
        (first, _), (second, _) = asked[:2]
        hint = ' (tool_choice "none" answers without tools)' if second == "tools" else ""
        raise FieldError(f"only one output constraint per request: '{first}' and '{second}' both set one{hint}",
                         second)
    field, guide = asked[0] if asked else (None, None)
    return OutputPlan(guide, field, use)


def _response_constraints(req: ChatCompletionRequest | CompletionRequest) -> list[tuple[str, Guide]]:
    found: list[tuple[str, Guide]] = []
    fmt = req.response_format
    if fmt is not None and fmt.type == "json_object":
        found.append(("response_format", Guide("json_object")))
    elif fmt is not None and fmt.type == "json_schema" and fmt.json_schema is not None:
        schema = fmt.json_schema.schema_
        found.append(("response_format", Guide("json_object") if schema is None else Guide("json_schema", schema)))
    if req.guided_json is not None:
        found.append(("guided_json", Guide("json_schema", _schema_object(req.guided_json))))
    if req.guided_regex is not None:
        found.append(("guided_regex", Guide("regex", req.guided_regex)))
    if req.guided_grammar is not None:
        found.append(("guided_grammar", Guide("grammar", req.guided_grammar)))
    if req.guided_choice is not None:
        found.append(("guided_choice", Guide("choice", list(req.guided_choice))))
    return found


def _schema_object(value: dict | str) -> dict:
    # vLLM takes the schema as an object or as its JSON text.
    if isinstance(value, dict):
        return value
    try:
        schema = json.loads(value)
    except json.JSONDecodeError as e:
        raise FieldError(f"guided_json: not valid JSON ({e.msg})", "guided_json") from None
    if not isinstance(schema, dict):
        raise FieldError("guided_json: a JSON Schema must be a JSON object", "guided_json")
    return schema


def tool_use(req: ChatCompletionRequest) -> ToolUse | None:
    """The tools the answer may call, or None (no tools, or tool_choice "none")."""
    choice = req.tool_choice
    if not req.tools:
        if choice is not None and choice != "none":
            raise FieldError("tool_choice needs tools: send the functions in 'tools'", "tool_choice")
        return None
    if choice == "none":
        return None
    names = [t.function.name for t in req.tools]
    duplicate = next((n for i, n in enumerate(names) if n in names[:i]), None)
    if duplicate is not None:
        raise FieldError(f"tools: function '{duplicate}' is defined twice", "tools")
    forced = None if choice is None or isinstance(choice, str) else choice.function.name
    if forced is not None and forced not in names:
        raise FieldError(f"tool_choice: no function '{forced}' in tools (have: {', '.join(names)})", "tool_choice")
    for tool in req.tools:
        if tool.function.parameters is not None:
            reason = parameters_error(tool.function.parameters)
            if reason is not None:
                raise FieldError(f"tools: function '{tool.function.name}': invalid parameters schema: "
                                 f"{reason}", "tools")
    mode = "function" if forced is not None else (choice or "auto")
    return ToolUse(tuple(req.tools), mode, forced, req.parallel_tool_calls is not False)


def _functions(use: ToolUse) -> list[tuple[str, dict | None]]:
    return [(t.function.name, t.function.parameters) for t in use.offered()]


def _tool_guide(use: ToolUse) -> Guide:
    make = auto_grammar if use.choice == "auto" else required_grammar
    return Guide("grammar", make(_functions(use), use.parallel))


def _answer_or_calls(use: ToolUse, field: str, guide: Guide) -> Guide | None:
    """One grammar for "auto" tools and a response constraint; None when the constraint cannot nest (a grammar)."""
    rule = answer_rule(guide.kind, guide.value)
    if rule is None:
        return None
    # Checked alone first, so a bad schema or regex is reported as that (not as a grammar) and names its field.
    reason = lark_error(f"start: {rule}")
    if reason is not None:
        raise FieldError(f"invalid {guide.kind.replace('_', ' ')}: {reason}", field)
    return Guide("grammar", answer_or_calls_grammar(_functions(use), use.parallel, rule))
