"""`mistralrs chat`: the REPL in a terminal, a one-shot reply when stdin is piped or --messages is given."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mistralrs_cli.engine import Engine, RequestStream, SamplingParams
from mistralrs_cli.errors import RequestError
from mistralrs_cli.frontends.engine_setup import open_engine
from mistralrs_cli.runner import ModeOptions
from mistralrs_cli.spec import ModelSpec

# CLI chat is greedy unless told otherwise: reproducible answers by default.
CLI_DEFAULTS: dict[str, Any] = {"temperature": 0.0}


def read_messages(path: Path) -> list[dict[str, Any]]:
    """A JSON list of {role, content} messages from a file ('-' = stdin)."""
    text = sys.stdin.read() if str(path) == "-" else _read(path)
    try:
        msgs = json.loads(text)
    except json.JSONDecodeError as e:
        raise RequestError(f"--messages {path}: invalid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(msgs, list) or not all(isinstance(m, dict) and "role" in m and "content" in m for m in msgs):
        raise RequestError(f"--messages {path}: expected a JSON list of {{'role', 'content'}} objects")
    return msgs


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as e:
        raise RequestError(f"--messages {path}: cannot read ({e.strerror})") from None


def sampling_values(options: dict[str, Any]) -> dict[str, Any]:
    """CLI sampling flags over the chat defaults (unset flags are skipped)."""
    return {**CLI_DEFAULTS, **{k: v for k, v in options.items() if v is not None}}


class EngineReply:
    """A streaming reply backed by one engine request."""

    def __init__(self, stream: RequestStream) -> None:
        self.stream = stream
        self.completion_tokens = 0

    def __iter__(self) -> Iterator[str]:
        for delta in self.stream:
            self.completion_tokens += len(delta.token_ids)
            if delta.text:
                yield delta.text

    def abort(self) -> None:
        """Stop generating (the engine frees the request's cache)."""
        self.stream.abort()


class EngineChatBackend:
    """Connects the REPL to the engine."""

    def __init__(self, engine: Engine, defaults: dict[str, Any]) -> None:
        self.engine = engine
        self.defaults = defaults
        self.last_request: str | None = None

    def stream_chat(self, messages: list[dict[str, Any]], params: dict[str, Any]) -> EngineReply:
        """Submit a chat; session params override the command-line defaults."""
        sp = SamplingParams.from_dict({**self.defaults, **params})
        stream = self.engine.submit(messages=messages, params=sp, extensions={"xlora_scalings": True})
        self.last_request = stream.request_id
        return EngineReply(stream)

    def describe(self) -> dict[str, Any]:
        """Model facts for the banner and /stats."""
        loaded = self.engine.loaded
        stats = self.engine.stats()
        return {"name": loaded.name, "device": str(loaded.device), "dtype": str(loaded.dtype).removeprefix("torch."),
                "kv cache": f"{stats.kv_bytes_used / 2**20:.1f}/{stats.kv_bytes_total / 2**20:.0f} MiB",
                **{k: v for k, v in loaded.info.items() if isinstance(v, (str, int, float))}}

    def scalings_view(self) -> Any:
        """The X-LoRA view of the last reply, or None for other models."""
        from mistralrs_cli.frontends.scalings_view import render_last_scalings

        return render_last_scalings(self.engine, self.last_request)


def run_chat(spec: ModelSpec, opts: ModeOptions) -> None:
    """Chat mode entry."""
    mo = opts.mode_options
    defaults = sampling_values(mo.get("sampling", {}))
    SamplingParams.from_dict(defaults)  # bad flags fail before the model loads
    one_shot = mo.get("messages") is not None or not sys.stdin.isatty()
    messages: list[dict[str, Any]] = []
    if one_shot:
        messages = read_messages(mo["messages"]) if mo.get("messages") is not None else [
            {"role": "user", "content": sys.stdin.read()}]
    system = mo.get("system")
    engine = open_engine(spec, opts)
    try:
        backend = EngineChatBackend(engine, defaults)
        if one_shot:
            head = [{"role": "system", "content": system}] if system else []
            for piece in backend.stream_chat(head + messages, {}):
                sys.stdout.write(piece)
                sys.stdout.flush()
            sys.stdout.write("\n")
            sys.stdout.flush()
            return
        from mistralrs_cli.frontends.chat_repl import ChatRepl, ChatState

        code = ChatRepl(backend, ChatState(system=system), markdown=mo.get("markdown", True)).run()
        if code:
            import typer

            raise typer.Exit(code)
    finally:
        engine.shutdown()
