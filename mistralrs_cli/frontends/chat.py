"""`mistralrs chat`: one-shot replies when stdin is not a terminal (the REPL comes with the engine)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from mistralrs_cli.errors import RequestError
from mistralrs_cli.generate import SimpleSampling, generate
from mistralrs_cli.runner import ModeOptions, load_with_status
from mistralrs_cli.spec import ModelSpec


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


def sampling_from(options: dict[str, Any]) -> SimpleSampling:
    """Sampling settings from the mode's CLI options (unset ones keep their defaults)."""
    given = {k: v for k, v in options.items() if v is not None}
    return SimpleSampling(**given)


def run_chat(spec: ModelSpec, opts: ModeOptions) -> None:
    """Chat mode entry: one-shot when stdin is piped or --messages is given."""
    mo = opts.mode_options
    sampling = sampling_from(mo.get("sampling", {}))
    sampling.validate()
    if mo.get("messages") is not None:
        messages = read_messages(mo["messages"])
    elif not sys.stdin.isatty():
        messages = [{"role": "user", "content": sys.stdin.read()}]
    else:
        raise RequestError("the interactive chat is not yet available; pipe a message on stdin")
    if mo.get("system"):
        messages = [{"role": "system", "content": mo["system"]}, *messages]
    loaded = load_with_status(spec)
    prompt = loaded.tokenizer.encode_chat(messages)
    detok = loaded.tokenizer.detokenizer(prompt)
    for token in generate(loaded, prompt, sampling):
        if token in loaded.tokenizer.eos_token_ids:
            break
        sys.stdout.write(detok.push(token))
        sys.stdout.flush()
    sys.stdout.write(detok.flush() + "\n")
    sys.stdout.flush()
