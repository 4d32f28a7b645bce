"""`mistralrs chat`: the REPL in a terminal, a one-shot reply when stdin is piped or --messages is given."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from mistralrs_cli.engine import Engine, EngineError, Guide, RequestStream, SamplingParams
from mistralrs_cli.engine.admission import fit_prompt
from mistralrs_cli.errors import MistralrsError, RequestError
from mistralrs_cli.frontends.chat_constraint import Constraint
from mistralrs_cli.frontends.options import ChatOptions, explicit_values
from mistralrs_cli.frontends.request_log import RequestLog, now_iso


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


class EngineReply:
    """A streaming reply backed by one engine request; written to `--log` when it ends."""

    def __init__(self, stream: RequestStream, log: RequestLog | None = None, request: dict[str, Any] | None = None) -> None:
        self.stream = stream
        self.completion_tokens = 0
        self.finish_reason: str | None = None  # set when the stream ends: stop, length, abort...
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
            self.finish_reason = finish
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

    def __init__(self, engine: Engine, defaults: SamplingParams, log: RequestLog | None = None) -> None:
        self.engine = engine
        self.defaults = defaults  # the command line's, validated once
        self.log = log
        self.last_request: str | None = None

    def params(self, session: dict[str, Any]) -> SamplingParams:
        """The defaults with the session's /params over them (validated again: RequestError if invalid)."""
        return replace(self.defaults, **session) if session else self.defaults

    def stream_chat(self, messages: list[dict[str, Any]], params: dict[str, Any], guide: Guide | None = None) -> EngineReply:
        """Submit a chat; session params override the command-line defaults; `guide` constrains the answer."""
        sampling = replace(self.params(params), guide=guide)
        stream = self.engine.submit(messages=messages, params=sampling, extensions={"xlora_scalings": True})
        self.last_request = stream.request_id
        logged: dict[str, Any] = {"messages": messages, "params": {**explicit_values(self.defaults), **params}}
        if guide is not None:
            logged["guide"] = {"kind": guide.kind, "value": guide.value}
        return EngineReply(stream, self.log, logged)

    def check_guide(self, guide: Guide) -> None:
        """Compile `guide` against the model's tokenizer as a request would; RequestError (llguidance's one-line reason)."""
        self.engine.check_guide(guide)

    def check_params(self, params: dict[str, Any]) -> None:
        """Raise RequestError for session params no turn could use (a bad value, max_tokens past the context)."""
        fit_prompt([0], self.params(params), self.engine.core.limits)

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


def run_chat(options: ChatOptions, open_engine: Callable[[], Engine]) -> int:
    """Chat mode entry: one reply when stdin is piped or --messages is given, else the REPL; the exit code."""
    one_shot = options.messages_file is not None or not sys.stdin.isatty()
    messages: list[dict[str, Any]] = []
    if one_shot:  # read before the model loads: an empty stdin or a bad file fails at once
        messages = read_messages(options.messages_file) if options.messages_file is not None else [
            {"role": "user", "content": read_piped_prompt()}]
    system = options.system
    log = RequestLog(options.log_file) if options.log_file is not None else None
    try:
        engine = open_engine()
    except BaseException:
        if log is not None:
            log.close()
        raise
    try:
        backend = EngineChatBackend(engine, options.sampling, log)
        constraint = options.constraint
        if constraint is not None:  # compiled once now: a bad schema or regex fails before any answer
            try:
                backend.check_guide(constraint.guide)
            except RequestError as e:
                raise RequestError(constraint.flag_error(e.message)) from None
        if one_shot:
            head = [{"role": "system", "content": system}] if system else []
            return answer_once(backend, head + messages, constraint)
        from mistralrs_cli.frontends.chat_repl import ChatRepl, ChatState

        return ChatRepl(backend, ChatState(system=system, constraint=constraint), markdown=options.markdown).run()
    finally:
        engine.shutdown()
        if log is not None:
            log.close()


def answer_once(backend: EngineChatBackend, messages: list[dict[str, Any]], constraint: Constraint | None) -> int:
    """Stream one answer to stdout; a constrained answer cut by the length limit gets a warning on stderr."""
    reply = backend.stream_chat(messages, {}, constraint.guide if constraint is not None else None)
    for piece in reply:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    sys.stdout.flush()
    if constraint is not None and reply.finish_reason == "length":
        # NOTE: still exit 0, as for any answer cut at max_tokens; stdout holds what was produced.
        sys.stderr.write(f"warning: {constraint.incomplete()}; raise --max-tokens\n")
    return 0
