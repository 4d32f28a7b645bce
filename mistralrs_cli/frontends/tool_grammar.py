"""Grammars (llguidance's Lark) that hold tool calls to the functions' JSON Schemas.

"required" or a named function: the answer is nothing but calls, `<tool_call>\\n{json}\\n</tool_call>`
(1..n of them, "\\n"-separated, when parallel calls are allowed). "auto": free text, but once the
model writes `<tool_call>` (a lazy lexeme ends the text there) the call is held the same way,
and only more calls may follow it. Either way a call's JSON is
`{"name": NAME, "arguments": ARGS}` with ARGS matching that function's `parameters`, so the
arguments always parse and validate.
"""

from __future__ import annotations

import json
from typing import Any

from mistralrs_cli.frontends.tool_calls import CLOSE, TRIGGER

# No parameters given: the function takes none (OpenAI's meaning), so the arguments are {}.
NO_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}, "additionalProperties": False}
# Compact JSON with the spacing of Python's json.dumps, the way Hermes-style examples write calls;
# flexible whitespace would let a small model pad a call with newlines until max_tokens.
LAYOUT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
# Definitions live at a schema's root: moved to the call's root, where "#/$defs/X" still resolves.
ROOT_KEYS = ("$defs", "definitions")


def call_schema(name: str, parameters: dict[str, Any] | None) -> dict[str, Any]:
    """JSON Schema of one call of `name`: {"name": const, "arguments": parameters}."""
    params = dict(parameters if parameters is not None else NO_PARAMETERS)
    root = {k: params.pop(k) for k in ROOT_KEYS if k in params}
    params.pop("$schema", None)  # a dialect tag, only allowed at the root
    return {
        "x-guidance": LAYOUT,
        **root,
        "type": "object",
        "properties": {"name": {"const": name}, "arguments": params},
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }


def _rules(functions: list[tuple[str, dict[str, Any] | None]]) -> str:
    # One %json per function: each is its own schema root, and llguidance merges the
    # alternatives into one lexer (as an anyOf), so the model picks the name freely.
    alts = " | ".join(f"fn_{i}" for i in range(len(functions)))
    rules = [f'call_body: {alts}']
    rules += [f"fn_{i}: %json {json.dumps(call_schema(n, p))}" for i, (n, p) in enumerate(functions)]
    return "\n".join(rules)


def required_grammar(functions: list[tuple[str, dict[str, Any] | None]], parallel: bool) -> str:
    """Only calls: one, or 1..n separated by newlines."""
    more = ' ("\\n" call)*' if parallel else ""
    return "\n".join([
        "%llguidance {}",
        f"start: call{more}",
        f"call: {json.dumps(TRIGGER + chr(10))} call_body {json.dumps(chr(10) + CLOSE)}",
        _rules(functions),
    ])


def auto_grammar(functions: list[tuple[str, dict[str, Any] | None]], parallel: bool) -> str:
    """Free text, or text up to `<tool_call>` followed by held calls (and nothing after them)."""
    more = ' ("\\n" call)*' if parallel else ""
    return "\n".join([
        "%llguidance {}",
        f"start: TEXT | lead_in first{more}",
        "TEXT: /(.|\\n)*/",
        # lazy: the lexeme ends as soon as the trigger is written, so the call rules take over.
        f"lead_in[lazy]: TEXT {json.dumps(TRIGGER)}",
        f"first: \"\\n\" call_body {json.dumps(chr(10) + CLOSE)}",
        f"call: {json.dumps(TRIGGER + chr(10))} call_body {json.dumps(chr(10) + CLOSE)}",
        _rules(functions),
    ])


def parameters_error(parameters: dict[str, Any]) -> str | None:
    """Why a function's `parameters` cannot constrain its arguments (llguidance's reason), or None."""
    import llguidance  # NOTE: only the grammar check, no tokenizer; the engine compiles the real matcher

    grammar = llguidance.LLMatcher.grammar_from_json_schema(call_schema("f", parameters))
    return llguidance.LLMatcher.validate_grammar(grammar) or None
