"""Tool calls in a model's text: the Hermes/Qwen block format, parsed whole or as the text streams in.

A call is `<tool_call>\\n{"name": NAME, "arguments": {...}}\\n</tool_call>`, one block per call.
Any model can follow it when told how (tool_prompt.py), and with `tool_choice` "required" or a
named function the grammar (tool_grammar.py) makes it the only thing the model can write.

Everything outside the blocks is content, except whitespace between or after calls. A block
that does not hold a valid call of a known function (possible only without a constraint, or
cut by max_tokens) stays in the content as the model wrote it, so nothing is lost.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

TRIGGER = "<tool_call>"
CLOSE = "</tool_call>"


@dataclass(frozen=True)
class ToolCall:
    """One parsed call; `arguments` is the JSON text of an object, as OpenAI sends it."""

    id: str
    name: str
    arguments: str

    def as_message(self) -> dict[str, Any]:
        """The entry of `message.tool_calls`."""
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}

    def as_delta(self, index: int) -> dict[str, Any]:
        """The entry of a stream chunk's `delta.tool_calls` (the whole call in one chunk)."""
        return {"index": index, **self.as_message()}


def new_call_id() -> str:
    """OpenAI's shape: call_ and 24 hex digits."""
    return f"call_{uuid.uuid4().hex[:24]}"


def format_call(name: str, arguments: dict[str, Any] | str) -> str:
    """A call as the block the model writes (how earlier turns' calls are shown to a template without tools)."""
    args = json.loads(arguments) if isinstance(arguments, str) else arguments
    return f"{TRIGGER}\n{json.dumps({'name': name, 'arguments': args}, ensure_ascii=False)}\n{CLOSE}"


def parse_call(body: str, names: Collection[str]) -> ToolCall | None:
    """The call in a block's body, or None when it is not a JSON call of a known function."""
    try:
        data = json.loads(body)
    except json.JSONDecodeError:
        return None
    if not isinstance(data, dict) or set(data) != {"name", "arguments"}:
        return None
    name, args = data["name"], data["arguments"]
    if isinstance(args, str):  # some models encode the arguments a second time, as OpenAI sends them
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            return None
    if not isinstance(name, str) or name not in names or not isinstance(args, dict):
        return None
    return ToolCall(new_call_id(), name, json.dumps(args, ensure_ascii=False))


def _held_prefix(text: str) -> int:
    """Length of the longest end of `text` that could be the start of TRIGGER."""
    for n in range(min(len(text), len(TRIGGER) - 1), 0, -1):
        if TRIGGER.startswith(text[-n:]):
            return n
    return 0


class ToolCallParser:
    """Splits one choice's streamed text into content and completed calls.

    `feed` returns the content that is safe to show now (text that might begin TRIGGER is held
    back) and the calls completed by this piece; `finish` returns what was held back.
    """

    def __init__(self, names: Collection[str]) -> None:
        self.names = names
        self.calls: list[ToolCall] = []
        self._pending = ""  # text not yet decided: a possible TRIGGER start, or a call's body
        self._in_call = False
        self.cut_call = False  # a call had begun but not closed when the text ended

    def feed(self, text: str) -> tuple[str, list[ToolCall]]:
        """Content to emit now and the calls this text completed."""
        self._pending += text
        content, done = "", []
        while True:
            if self._in_call:
                end = self._pending.find(CLOSE)
                if end < 0:
                    return content, done
                body, self._pending = self._pending[:end], self._pending[end + len(CLOSE):]
                self._in_call = False
                call = parse_call(body.strip(), self.names)
                if call is None:
                    content += TRIGGER + body + CLOSE  # not a call: shown as the model wrote it
                else:
                    self.calls.append(call)
                    done.append(call)
                continue
            start = self._pending.find(TRIGGER)
            if start >= 0:
                content += self._visible(self._pending[:start])
                self._pending = self._pending[start + len(TRIGGER):]
                self._in_call = True
                continue
            keep = _held_prefix(self._pending)
            ready = self._pending[: len(self._pending) - keep]
            if self.calls and not ready.strip():
                return content, done  # whitespace after a call: held until real text follows
            self._pending = self._pending[len(ready):]
            return content + ready, done

    def finish(self) -> str:
        """Content still held back when the text ends (a call cut off midway stays as written)."""
        pending, self._pending = self._pending, ""
        if self._in_call:
            self.cut_call = True
            return TRIGGER + pending
        return self._visible(pending)

    def _visible(self, text: str) -> str:
        # Whitespace between calls is layout, not content.
        return "" if self.calls and not text.strip() else text


def split_text(text: str, names: Collection[str]) -> tuple[str | None, list[ToolCall], bool]:
    """(content or None when empty, calls, whether a call was cut off) of a whole answer."""
    parser = ToolCallParser(names)
    content, _ = parser.feed(text)
    content += parser.finish()
    return (content or None), parser.calls, parser.cut_call


def finish_reason(engine_reason: str | None, calls: list[ToolCall]) -> str | None:
    """"tool_calls" when the answer ended normally with calls; "length" (a call may be cut) stays."""
    return "tool_calls" if calls and engine_reason == "stop" else engine_reason
