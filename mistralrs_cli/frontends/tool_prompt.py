"""Tools in the prompt: a chat's messages as the chat template takes them, with or without a `tools` argument.

A template that renders `tools` itself (transformers' convention) gets the tools and the earlier
calls and results in transformers' shapes. Any other template gets a system message that lists
the functions and the call format (tool_calls.py), earlier calls as that same text, and each
tool result as a user turn in `<tool_response>` tags: that renders with every template (Mistral's
refuses roles it does not know).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from mistralrs_cli.frontends.openai_structured import Tool
from mistralrs_cli.frontends.openai_types import ChatMessage
from mistralrs_cli.frontends.tool_calls import CLOSE, TRIGGER, format_call

RESPONSE_OPEN, RESPONSE_CLOSE = "<tool_response>", "</tool_response>"


@dataclass(frozen=True)
class ToolUse:
    """What a request asks of tools: the functions, and how the answer may use them."""

    tools: tuple[Tool, ...]
    choice: str  # "auto", "required", or "function" (the one named by `forced`)
    forced: str | None = None
    parallel: bool = True

    @property
    def names(self) -> frozenset[str]:
        """The functions a call may name."""
        return frozenset(t.function.name for t in self.tools)

    def offered(self) -> tuple[Tool, ...]:
        """The tools the answer may call (a named choice: only that one)."""
        return tuple(t for t in self.tools if self.forced is None or t.function.name == self.forced)


def system_text(use: ToolUse) -> str:
    """The system message that describes the functions and the exact call format."""
    lines = [
        "You can call functions to help you answer. Each function is described by a JSON object:",
        *(json.dumps(_describe(t), ensure_ascii=False) for t in use.offered()),
        "",
        "To call a function, write this block, with the arguments as a JSON object that matches its parameters:",
        f'{TRIGGER}\n{{"name": "FUNCTION_NAME", "arguments": {{...}}}}\n{CLOSE}',
    ]
    if use.choice == "auto":
        lines.append("Call a function only when it helps; otherwise answer directly.")
    elif use.forced is not None:
        lines.append(f"You must call the function {use.forced}.")
    else:
        lines.append("You must call at least one function.")
    lines.append("Write one block per call; you may call several functions at once." if use.parallel
                 else "Call at most one function.")
    return "\n".join(lines)


def _describe(tool: Tool) -> dict[str, Any]:
    f = tool.function
    return {"name": f.name, **({"description": f.description} if f.description else {}),
            "parameters": f.parameters if f.parameters is not None else {"type": "object", "properties": {}}}


def template_messages(messages: list[ChatMessage], use: ToolUse | None, template_takes_tools: bool) -> list[dict[str, Any]]:
    """The messages for the chat template (developer -> system; calls and results per the template's kind).

    `use` is None when the prompt must not mention tools (none given, or tool_choice "none").
    """
    if template_takes_tools:
        return [_transformers_shape(m) for m in messages]
    out: list[dict[str, Any]] = []
    for m in messages:
        turn = _text_shape(m)
        if m.role == "tool" and out and out[-1].get("tool_results"):
            out[-1]["content"] += "\n" + turn["content"]  # consecutive results: one user turn
            continue
        out.append(turn)
    for turn in out:
        turn.pop("tool_results", None)
    if use is not None:
        _add_system(out, system_text(use))
    return out


def _role(m: ChatMessage) -> str:
    return "system" if m.role == "developer" else m.role


def _transformers_shape(m: ChatMessage) -> dict[str, Any]:
    turn: dict[str, Any] = {"role": _role(m), "content": m.text()}
    if m.tool_calls:
        turn["tool_calls"] = [{"type": "function", "id": c.id,
                               "function": {"name": c.function.name, "arguments": c.function.argument_dict()}}
                              for c in m.tool_calls]
    if m.role == "tool" and m.tool_call_id is not None:
        turn["tool_call_id"] = m.tool_call_id
    return turn


def _text_shape(m: ChatMessage) -> dict[str, Any]:
    if m.role == "tool":
        return {"role": "user", "content": f"{RESPONSE_OPEN}\n{m.text()}\n{RESPONSE_CLOSE}", "tool_results": True}
    text = m.text()
    if m.tool_calls:
        calls = "\n".join(format_call(c.function.name, c.function.argument_dict()) for c in m.tool_calls)
        text = f"{text}\n{calls}" if text else calls
    return {"role": _role(m), "content": text}


def _add_system(messages: list[dict[str, Any]], text: str) -> None:
    # Merged into a leading system message, so templates that allow only one still render.
    if messages and messages[0]["role"] == "system":
        first = messages[0]["content"]
        messages[0] = {**messages[0], "content": f"{first}\n\n{text}" if first else text}
    else:
        messages.insert(0, {"role": "system", "content": text})
