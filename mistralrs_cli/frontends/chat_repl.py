"""The interactive chat REPL: prompt_toolkit input with history, slash commands, streaming replies."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from prompt_toolkit import PromptSession
from prompt_toolkit.history import FileHistory
from prompt_toolkit.key_binding import KeyBindings
from rich.console import Console
from rich.markup import escape

from mistralrs_cli.errors import ContextLengthError, MistralrsError, RequestError
from mistralrs_cli.frontends.chat_constraint import Constraint, regex_constraint, schema_constraint
from mistralrs_cli.frontends.chat_render import ReplyPrinter

if TYPE_CHECKING:
    from mistralrs_cli.engine import Guide

HELP = """\
/help               this help
/system <text>      set the system prompt (starts a new conversation)
/clear              new conversation
/params [k=v ...]   show or set temperature, top_p, top_k, min_p, max_tokens, seed...
/save <file>        save the conversation as JSON
/load <file>        load a conversation saved with /save (or a JSON list of messages)
/read <file>        send a file's content as your message
/schema <file>      hold the answers to the JSON Schema in <file> (off: clear; alone: show)
/regex <pattern>    hold the answers to a regex (off: clear; alone: show)
/regen              regenerate the last reply
/stats              model and session statistics
/scalings           X-LoRA models: which adapter dominated each token of the last reply
/exit               leave (also Ctrl-D)
Multi-line input: start with \"\"\" and end with \"\"\", or press Alt-Enter (Esc, Enter) for a new line.
Ctrl-C stops a reply; Ctrl-C twice at an empty prompt exits."""

PARAM_TYPES: dict[str, Callable[[str], Any]] = {
    "temperature": float, "top_p": float, "top_k": int, "min_p": float, "max_tokens": int,
    "seed": int, "repetition_penalty": float, "presence_penalty": float, "frequency_penalty": float,
}


class Reply(Protocol):
    """A streaming reply: iterate text pieces; `abort()` stops it; stats filled when done."""

    def __iter__(self) -> Iterator[str]: ...
    def abort(self) -> None: ...

    @property
    def completion_tokens(self) -> int: ...

    @property
    def finish_reason(self) -> str | None: ...


class ChatBackend(Protocol):
    """What the REPL needs from the engine."""

    def stream_chat(self, messages: list[dict[str, Any]], params: dict[str, Any], guide: Guide | None = None) -> Reply: ...
    def check_params(self, params: dict[str, Any]) -> None: ...
    def check_guide(self, guide: Guide) -> None: ...
    def describe(self) -> dict[str, Any]: ...
    def scalings_view(self) -> Any: ...


def history_path() -> Path:
    """History file under the user's data dir (XDG_DATA_HOME or ~/.local/share)."""
    base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    path = base / "mistralrs" / "chat_history"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _bindings() -> KeyBindings:
    kb = KeyBindings()

    @kb.add("escape", "enter")
    def _newline(event) -> None:
        event.current_buffer.insert_text("\n")

    @kb.add("enter")
    def _submit(event) -> None:
        buf = event.current_buffer
        text = buf.text
        # Inside a """ block Enter adds a line; the closing """ submits.
        if text.lstrip().startswith('"""') and not (len(text.strip()) > 3 and text.rstrip().endswith('"""')):
            buf.insert_text("\n")
        else:
            buf.validate_and_handle()

    return kb


@dataclass
class ChatState:
    """The conversation and session settings."""

    system: str | None = None
    messages: list[dict[str, Any]] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    constraint: Constraint | None = None  # --json-schema / --regex, then /schema and /regex
    replies: int = 0
    tokens: int = 0
    seconds: float = 0.0

    def conversation(self) -> list[dict[str, Any]]:
        """Messages to send, with the system prompt first."""
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.messages


class ChatRepl:
    """Reads prompts, runs slash commands, streams replies from the backend."""

    def __init__(self, backend: ChatBackend, state: ChatState, markdown: bool = True,
                 session: PromptSession | None = None) -> None:
        self.backend = backend
        self.state = state
        self.markdown = markdown
        self.err = Console(stderr=True, highlight=False)
        self.session = session or PromptSession(history=FileHistory(str(history_path())), key_bindings=_bindings(),
                                                multiline=True)

    def run(self) -> int:
        """Loop until /exit, Ctrl-D, or Ctrl-C twice at an empty prompt; returns the exit code."""
        facts = self.backend.describe()
        name = facts.get("name", "model")
        self.err.print(f"[bold]mistralrs[/] chat with [cyan]{escape(str(name))}[/] — /help for commands, Ctrl-D to leave")
        if facts.get("kv cache"):
            self.err.print(f"[dim]{escape(str(facts['kv cache']))}[/]")
        interrupts = 0
        while True:
            try:
                text = self.session.prompt("> ")
            except KeyboardInterrupt:
                interrupts += 1
                if interrupts >= 2:
                    return 130
                self.err.print("[dim](Ctrl-C again to exit)[/]")
                continue
            except EOFError:
                return 0
            interrupts = 0
            text = _strip_triple_quotes(text)
            if not text.strip():
                continue
            if text.startswith("/"):
                if self.command(text.strip()) == "exit":
                    return 0
                continue
            self.ask(text)

    def ask(self, text: str) -> None:
        """Send a user message and stream the reply; a failed turn leaves the conversation as it was."""
        self.state.messages.append({"role": "user", "content": text})
        if not self._reply():
            self.state.messages.pop()

    def _reply(self) -> bool:
        """Stream one reply to the conversation; on an error print one line and return False."""
        constraint = self.state.constraint
        # NOTE: a constrained answer is JSON or text of a set shape: printed as it is, never
        # re-rendered as Markdown (a "**" or "- " inside a JSON string would be reformatted).
        printer = ReplyPrinter(self.markdown and constraint is None)
        start = time.perf_counter()
        first: float | None = None
        reply: Reply | None = None
        stopped = False
        try:
            try:
                reply = self.backend.stream_chat(self.state.conversation(), dict(self.state.params),
                                                 constraint.guide if constraint is not None else None)
            except MistralrsError as e:
                self._turn_error(e)
                return False
            for piece in reply:
                if first is None:
                    first = time.perf_counter() - start
                printer.write(piece)
        except KeyboardInterrupt:  # Ctrl-C at any moment of the turn, even before the first token
            if reply is not None:
                reply.abort()
            stopped = True
        except MistralrsError as e:  # the engine ended the request with an error mid-stream
            printer.finish()
            self._turn_error(e)
            return False
        printer.finish()
        elapsed = time.perf_counter() - start
        # NOTE: a stopped reply is kept in the conversation, as ollama and llm do.
        self.state.messages.append({"role": "assistant", "content": printer.text})
        n = reply.completion_tokens if reply is not None else 0
        self.state.replies += 1
        self.state.tokens += n
        self.state.seconds += elapsed
        rate = n / max(elapsed - (first or 0), 1e-9) if n > 1 else 0.0
        cut = not stopped and reply is not None and reply.finish_reason == "length"
        note = " · stopped" if stopped else " · length limit" if cut else ""
        self.err.print(f"[dim]{n} tokens · {rate:.1f} tok/s · first token {first or 0:.2f} s{note}[/]")
        if cut and constraint is not None:
            self.err.print(f"[yellow]{escape(constraint.incomplete())}; /params max_tokens=N allows more[/]",
                           soft_wrap=True)
        return True

    def _turn_error(self, e: MistralrsError) -> None:
        if not isinstance(e, ContextLengthError):
            self.error(e.message)
        elif len(self.state.messages) > 1:
            self.error(f"the conversation ({e.prompt_tokens} tokens) has outgrown the context ({e.context} tokens "
                       "with room for a reply); /clear starts a new one")
        else:
            self.error(f"the message ({e.prompt_tokens} tokens) does not fit the context ({e.context} tokens "
                       "with room for a reply)")

    def error(self, message: str) -> None:
        """Print one red error line; the session goes on."""
        self.err.print(f"[red]error: {escape(message)}[/]", soft_wrap=True)  # one line, however long

    def command(self, line: str) -> str | None:
        """Run one slash command; returns 'exit' to leave."""
        cmd, _, arg = line.partition(" ")
        arg = arg.strip()
        handlers: dict[str, Callable[[str], str | None]] = {
            "/help": lambda _: self.err.print(HELP, markup=False),
            "/exit": lambda _: "exit", "/quit": lambda _: "exit",
            "/system": self._system, "/clear": self._clear, "/params": self._params,
            "/save": self._save, "/load": self._load, "/stats": self._stats,
            "/regen": self._regen, "/read": self._read, "/scalings": self._scalings,
            "/schema": self._schema, "/regex": self._regex,
        }
        handler = handlers.get(cmd)
        if handler is None:
            self.error(f"unknown command {cmd} — /help lists them")
            return None
        try:
            return handler(arg)
        except MistralrsError as e:
            self.error(f"{cmd}: {e.message}")
        except (OSError, ValueError) as e:
            self.error(f"{cmd}: {e}")
        return None

    def _system(self, arg: str) -> None:
        self.state.system = arg or None
        self.state.messages.clear()
        self.err.print("[dim]system prompt set; new conversation[/]" if arg else "[dim]system prompt cleared[/]")

    def _clear(self, _: str) -> None:
        self.state.messages.clear()
        self.err.print("[dim]new conversation[/]")

    def _params(self, arg: str) -> None:
        params = dict(self.state.params)
        for item in arg.split():
            key, eq, value = item.partition("=")
            if not eq or key not in PARAM_TYPES:
                raise ValueError(f"expected key=value with key in {', '.join(PARAM_TYPES)}")
            kind = PARAM_TYPES[key]
            try:
                params[key] = kind(value)
            except ValueError:
                what = "an integer" if kind is int else "a number"
                raise ValueError(f"{key} must be {what}, got {value!r}") from None
        # NOTE: checked as a request would be, so a value no turn could use is refused now, not kept.
        self.backend.check_params(params)
        self.state.params = params
        shown = ", ".join(f"{k}={v}" for k, v in self.state.params.items()) or "defaults"
        self.err.print(f"params: {shown}")

    def _schema(self, arg: str) -> None:
        self._constrain(arg, schema_constraint)

    def _regex(self, arg: str) -> None:
        self._constrain(arg, regex_constraint)

    def _constrain(self, arg: str, build: Callable[[str], Constraint]) -> None:
        """/schema, /regex: alone show the constraint; `off` clears it; else set one the engine compiles
        (a file, schema or regex it refuses raises, and the previous constraint stays)."""
        if arg == "off":
            self.state.constraint = None
        elif arg:
            constraint = build(arg)
            try:
                self.backend.check_guide(constraint.guide)
            except RequestError as e:
                raise RequestError(constraint.located(e.message)) from None
            self.state.constraint = constraint
        shown = self.state.constraint.describe() if self.state.constraint is not None else "none (free text)"
        self.err.print(f"constraint: {escape(shown)}", soft_wrap=True)

    def _save(self, arg: str) -> None:
        if not arg:
            raise ValueError("usage: /save <file>")
        Path(arg).expanduser().write_text(json.dumps(self.state.conversation(), ensure_ascii=False, indent=2))
        self.err.print(f"[dim]saved {len(self.state.conversation())} messages to {arg}[/]")

    def _load(self, arg: str) -> None:
        if not arg:
            raise ValueError("usage: /load <file>")
        msgs = json.loads(Path(arg).expanduser().read_text())
        if not isinstance(msgs, list) or not all(isinstance(m, dict) and "role" in m for m in msgs):
            raise ValueError("expected a JSON list of {role, content} messages")
        self.state.system = msgs[0]["content"] if msgs and msgs[0]["role"] == "system" else None
        self.state.messages = [m for m in msgs if m["role"] != "system"]
        self.err.print(f"[dim]loaded {len(msgs)} messages[/]")

    def _stats(self, _: str) -> None:
        s = self.state
        rate = s.tokens / s.seconds if s.seconds else 0.0
        info = ", ".join(f"{k}: {v}" for k, v in self.backend.describe().items())
        self.err.print(f"{info}\nreplies: {s.replies}, tokens: {s.tokens}, mean {rate:.1f} tok/s, "
                       f"messages in conversation: {len(s.messages)}")

    def _regen(self, _: str) -> None:
        if not self.state.messages or self.state.messages[-1]["role"] != "assistant":
            raise ValueError("no reply to regenerate")
        last = self.state.messages.pop()
        if not self._reply():
            self.state.messages.append(last)  # a failed regeneration keeps the old reply

    def _read(self, arg: str) -> None:
        if not arg:
            raise ValueError("usage: /read <file>")
        self.ask(Path(arg).expanduser().read_text())

    def _scalings(self, _: str) -> None:
        view = self.backend.scalings_view()
        if view is None:
            self.err.print("[dim]/scalings needs an X-LoRA model and a reply[/]")
        else:
            Console().print(view)


def _strip_triple_quotes(text: str) -> str:
    stripped = text.strip()
    if stripped.startswith('"""') and stripped.endswith('"""') and len(stripped) >= 6:
        return stripped[3:-3].strip("\n")
    return text
