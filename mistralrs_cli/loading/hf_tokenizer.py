"""Building a TextTokenizer from an HF repo: tokenizer.json, tokenizer_config.json, chat template files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from mistralrs_cli.errors import TokenizerError
from mistralrs_cli.loading.chat_template import ChatTemplate, pick_template, read_template_override
from mistralrs_cli.loading.source import ModelSource
from mistralrs_cli.loading.tokenizer import TextTokenizer


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from `path`, with a one-line error naming the file when it is broken."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise TokenizerError(f"{path}: cannot read ({e})") from None
    except json.JSONDecodeError as e:
        raise TokenizerError(f"{path}: invalid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(data, dict):
        raise TokenizerError(f"{path}: expected a JSON object")
    return data


def _token_text(value: Any) -> str | None:
    # tokenizer_config.json stores special tokens as strings or AddedToken dicts.
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def load_hf_tokenizer(
    source: ModelSource,
    tokenizer_json: str | None = None,
    chat_template: str | None = None,
) -> TextTokenizer:
    """Tokenizer + chat template from a source folder/repo, with `-t` and `-c` overrides."""
    tok_path = Path(tokenizer_json).expanduser() if tokenizer_json else source.get("tokenizer.json")
    if not tok_path.is_file():
        raise TokenizerError(f"tokenizer {tok_path}: no such file")
    try:
        tokenizer = Tokenizer.from_file(str(tok_path))
    except Exception as e:
        raise TokenizerError(f"{tok_path}: not a valid tokenizer.json ({str(e).splitlines()[0]})") from None
    cfg = read_json(source.get("tokenizer_config.json")) if source.has("tokenizer_config.json") else {}
    specials = {
        name: _token_text(cfg.get(name))
        for name in ("bos_token", "eos_token", "unk_token", "pad_token")
    }
    template_text, origin = _find_template(source, cfg, chat_template)
    template = ChatTemplate(template_text, specials, origin) if template_text else None
    return TextTokenizer(
        tokenizer,
        bos_token=specials["bos_token"],
        eos_tokens=tuple(t for t in (specials["eos_token"],) if t),
        unk_token=specials["unk_token"],
        pad_token=specials["pad_token"],
        chat_template=template,
    )


def _find_template(source: ModelSource, cfg: dict[str, Any], override: str | None) -> tuple[str | None, str]:
    if override:
        return read_template_override(override), f"chat template {override}"
    if source.has("chat_template.jinja"):
        path = source.get("chat_template.jinja")
        return path.read_text(encoding="utf-8"), str(path)
    if source.has("chat_template.json"):
        path = source.get("chat_template.json")
        return pick_template(read_json(path).get("chat_template")), str(path)
    return pick_template(cfg.get("chat_template")), "tokenizer_config.json chat template"
