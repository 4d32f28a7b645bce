"""Grammars (llguidance's Lark) that hold tool calls to the functions' JSON Schemas.

"required" or a named function: the answer is nothing but calls, `<tool_call>\\n{json}\\n</tool_call>`
(1..n of them, "\\n"-separated, when parallel calls are allowed). "auto": free text, but once the
model writes `<tool_call>` (a lazy lexeme ends the text there) the call is held the same way,
and only more calls may follow it; "auto" with a response constraint (a JSON Schema, JSON
object, regex or choice): either calls or an answer that matches it. Either way a call's JSON is
`{"name": NAME, "arguments": ARGS}` with ARGS matching that function's `parameters`, so the
arguments always parse and validate.
"""

from __future__ import annotations

import json
from typing import Any

from mistralrs_cli.engine.guided import (
    JSON_STYLE,
    Guide,
    closed_objects,
    grammar_error,
    regex_as_lark,
)
from mistralrs_cli.frontends.tool_calls import CLOSE, TRIGGER

# No parameters given: the function takes none (OpenAI's meaning), so the arguments are {}.
NO_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}, "additionalProperties": False}
# Definitions live at a schema's root: moved to the call's root, where "#/$defs/X" still resolves.
ROOT_KEYS = ("$defs", "definitions")


def call_schema(name: str, parameters: dict[str, Any] | None) -> dict[str, Any]:
    """JSON Schema of one call of `name`: {"name": const, "arguments": parameters}.

    As for a response's schema (engine/guided.py): one line with json.dumps' spacing, the way
    Hermes-style examples write calls, and objects closed to their listed properties; else a
    small model pads a call with newlines or invents keys until max_tokens.
    """
    params = dict(closed_objects(parameters) if parameters is not None else NO_PARAMETERS)
    root = {k: params.pop(k) for k in ROOT_KEYS if k in params}
    params.pop("$schema", None)  # a dialect tag, only allowed at the root
    return {
        "x-guidance": JSON_STYLE,
        **root,
        "type": "object",
        "properties": {"name": {"const": name}, "arguments": params},
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }


Functions = list[tuple[str, dict[str, Any] | None]]  # (name, parameters) of each callable function
CALL = f"call: {json.dumps(TRIGGER + chr(10))} call_body {json.dumps(chr(10) + CLOSE)}"


def _rules(functions: Functions) -> str:
    # One %json per function: each is its own schema root, and llguidance merges the
    # alternatives into one lexer (as an anyOf), so the model picks the name freely.
    alts = " | ".join(f"fn_{i}" for i in range(len(functions)))
    rules = [f"call_body: {alts}"]
    rules += [f"fn_{i}: %json {json.dumps(call_schema(n, p))}" for i, (n, p) in enumerate(functions)]
    return "\n".join(rules)


def _grammar(start: str, parallel: bool, *rules: str, functions: Functions) -> str:
    more = ' ("\\n" call)*' if parallel else ""
    return "\n".join(["%llguidance {}", f"start: {start}{more}", *rules, CALL, _rules(functions)])


def required_grammar(functions: Functions, parallel: bool) -> str:
    """Only calls: one, or 1..n separated by newlines."""
    return _grammar("call", parallel, functions=functions)


def auto_grammar(functions: Functions, parallel: bool) -> str:
    """Free text, or text up to `<tool_call>` followed by held calls (and nothing after them)."""
    return _grammar(
        "TEXT | lead_in first", parallel,
        "TEXT: /(.|\\n)*/",
        # lazy: the lexeme ends as soon as the trigger is written, so the call rules take over.
        f"lead_in[lazy]: TEXT {json.dumps(TRIGGER)}",
        f"first: {json.dumps(chr(10))} call_body {json.dumps(chr(10) + CLOSE)}",
        functions=functions)


def answer_or_calls_grammar(functions: Functions, parallel: bool, answer: str) -> str:
    """"auto" with a response constraint: an answer that matches it (`answer_rule`), or calls."""
    return _grammar("answer | call", parallel, f"answer: {answer}", functions=functions)


def answer_rule(kind: str, value: Any) -> str | None:
    """A Lark rule body for an answer held to a response constraint; None for a kind it cannot nest (grammar)."""
    if kind == "json_schema":  # the engine's JSON defaults, which a %json in a grammar does not get
        return f"%json {json.dumps({'x-guidance': JSON_STYLE, **closed_objects(value)})}"
    if kind == "json_object":
        return f"%json {json.dumps({'x-guidance': JSON_STYLE, 'type': 'object'})}"
    if kind == "regex":
        return regex_as_lark(value)  # Rust regex semantics, as a plain guided_regex
    if kind == "choice":
        return " | ".join(json.dumps(c) for c in value)
    return None


def lark_error(lark: str) -> str | None:
    """llguidance's reason a Lark grammar is invalid (in one line), or None; no tokenizer needed."""
    return grammar_error(Guide("grammar", lark).grammar())


def parameters_error(parameters: dict[str, Any]) -> str | None:
    """Why a function's `parameters` cannot constrain its arguments (llguidance's reason), or None."""
    # NOTE: only the grammar check, no tokenizer; the engine compiles the real matcher.
    return grammar_error(Guide("json_schema", call_schema("f", parameters)).grammar())
