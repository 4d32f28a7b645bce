"""`mistralrs chat`: the REPL in a terminal, a one-shot reply when stdin is piped or --messages is given."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from mistralrs_cli.engine import Engine, EngineError, RequestStream, SamplingParams
from mistralrs_cli.engine.admission import fit_prompt
from mistralrs_cli.errors import MistralrsError, RequestError
from mistralrs_cli.frontends.engine_setup import open_engine
from mistralrs_cli.frontends.request_log import RequestLog, now_iso
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


def read_piped_prompt() -> str:
    """The one-shot prompt from piped stdin, without surrounding whitespace (as `llm` and `ollama run`).

    NOTE: `echo`'s trailing newline inside the user turn changes the answer (measured on the
    default model: a wrong capital of France), so it must not reach the template.
    """
    text = sys.stdin.read().strip()
    if not text:
        raise RequestError("stdin is empty: pipe a prompt in (echo \"Hello\" | mistralrs chat) or run chat in a terminal")
    return text


def sampling_values(options: dict[str, Any]) -> dict[str, Any]:
    """CLI sampling flags over the chat defaults (unset flags are skipped)."""
    return {**CLI_DEFAULTS, **{k: v for k, v in options.items() if v is not None}}


class EngineReply:
    """A streaming reply backed by one engine request; written to `--log` when it ends."""

    def __init__(self, stream: RequestStream, log: RequestLog | None = None, request: dict[str, Any] | None = None) -> None:
        self.stream = stream
        self.completion_tokens = 0
        self._log, self._request = log, request

    def __iter__(self) -> Iterator[str]:
        started, pieces, finish, usage = time.perf_counter(), [], None, None
        try:
            for delta in self.stream:
                self.completion_tokens += len(delta.token_ids)
                finish, usage = delta.finish_reason or finish, delta.usage or usage
                if delta.text:
                    pieces.append(delta.text)
                    yield delta.text
                if delta.finish_reason == "error":  # the model produced NaN: say so, not a silent end
                    raise EngineError(delta.error or "generation failed")
        except MistralrsError as e:
            finish = f"error: {e.message}"
            raise
        finally:
            if self._log is not None:
                self._log.write({
                    "time": now_iso(), "mode": "chat", "request_id": self.stream.request_id,
                    "duration_s": round(time.perf_counter() - started, 4), "request": self._request,
                    "response": {"text": "".join(pieces), "finish_reason": finish or "abort",
                                 "usage": asdict(usage) if usage else None},
                })

    def abort(self) -> None:
        """Stop generating (the engine frees the request's cache)."""
        self.stream.abort()


class EngineChatBackend:
    """Connects the REPL to the engine."""

    def __init__(self, engine: Engine, defaults: dict[str, Any], log: RequestLog | None = None) -> None:
        self.engine = engine
        self.defaults = defaults
        self.log = log
        self.last_request: str | None = None

    def stream_chat(self, messages: list[dict[str, Any]], params: dict[str, Any]) -> EngineReply:
        """Submit a chat; session params override the command-line defaults."""
        sp = SamplingParams.from_dict({**self.defaults, **params})
        stream = self.engine.submit(messages=messages, params=sp, extensions={"xlora_scalings": True})
        self.last_request = stream.request_id
        return EngineReply(stream, self.log, {"messages": messages, "params": {**self.defaults, **params}})

    def check_params(self, params: dict[str, Any]) -> None:
        """Raise RequestError for session params no turn could use (a bad value, max_tokens past the context)."""
        fit_prompt([0], SamplingParams.from_dict({**self.defaults, **params}), self.engine.core.limits)

    def describe(self) -> dict[str, Any]:
        """Model facts for the banner and /stats."""
        loaded = self.engine.loaded
        stats = self.engine.stats()
        return {"name": loaded.name, "device": str(loaded.device), "weights": loaded.weights,
                "compute dtype": loaded.compute_dtype,
                "kv cache": f"{stats.kv_bytes_used / 2**20:.1f} MiB used of {self.engine.kv_budget.describe()}",
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
            {"role": "user", "content": read_piped_prompt()}]
    system = mo.get("system")
    log = RequestLog(opts.log) if opts.log is not None else None
    engine = open_engine(spec, opts)
    try:
        backend = EngineChatBackend(engine, defaults, log)
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
        if log is not None:
            log.close()
