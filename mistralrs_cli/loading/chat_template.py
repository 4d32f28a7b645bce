"""Chat templates rendered in a sandboxed jinja2 environment that matches transformers' apply_chat_template."""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

from mistralrs_cli.errors import TokenizerError


class _TemplateRaise(Exception):
    """`raise_exception(...)` called from inside a template."""


def _raise_exception(message: str) -> None:
    raise _TemplateRaise(message)


def _tojson(x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None, sort_keys: bool = False) -> str:
    # Jinja's own tojson escapes HTML characters; transformers' does not.
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class _GenerationTag(jinja2.ext.Extension):
    """Accept `{% generation %}...{% endgeneration %}` blocks (assistant masks) as plain output."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_passthrough"), [], [], body).set_lineno(lineno)

    def _passthrough(self, caller: Any) -> str:
        return caller()


@lru_cache(maxsize=16)
def _compile(source: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(source)


class ChatTemplate:
    """A compiled chat template plus the special tokens it may reference."""

    def __init__(self, source: str, special_tokens: dict[str, str | None], origin: str = "chat template") -> None:
        self.source = source
        self.special_tokens = special_tokens
        self.origin = origin
        try:
            _compile(source)
        except jinja2.TemplateSyntaxError as e:
            raise TokenizerError(f"{origin}: invalid chat template (line {e.lineno}: {e.message})") from None

    def render(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True, **extra: Any) -> str:
        """Render messages to the prompt text the model was trained on."""
        context = {k: v for k, v in self.special_tokens.items()}
        context.update(extra)
        try:
            return _compile(self.source).render(
                messages=messages, add_generation_prompt=add_generation_prompt, **context
            )
        except _TemplateRaise as e:
            raise TokenizerError(f"{self.origin}: {e}") from None
        except jinja2.TemplateError as e:
            raise TokenizerError(f"{self.origin}: rendering failed: {e}") from None


def read_template_override(value: str) -> str:
    """`-c/--chat-template`: a Jinja file, a JSON file holding `chat_template`, or literal template text."""
    path = Path(value).expanduser()
    if path.is_file():
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".json":
            return template_from_json(text, str(path))
        return text
    if "{%" in value or "{{" in value:
        return value
    raise TokenizerError(f"chat template {value!r}: no such file (and not a Jinja template)")


def template_from_json(text: str, origin: str) -> str:
    """The `chat_template` of a tokenizer_config.json-style document (string or named list)."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise TokenizerError(f"{origin}: invalid JSON ({e.msg} at line {e.lineno})") from None
    value = raw.get("chat_template") if isinstance(raw, dict) else None
    picked = pick_template(value)
    if picked is None:
        raise TokenizerError(f"{origin}: no 'chat_template' field")
    return picked


def pick_template(value: Any) -> str | None:
    """HF stores either one template string or a list of {name, template}; pick the default."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
        return named.get("default") or next(iter(named.values()), None)
    return None
