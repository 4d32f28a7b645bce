"""Constrained decoding: a choice's output held to a JSON Schema, a regex, a grammar or a list of choices.

llguidance (chosen by measurement: docs/structured-output.md) compiles the constraint against
the model's own tokenizer. Each constrained choice owns a matcher; before every sampling step
the matchers write one bitmask row each (allowed token ids), and the sampler sets the other
logits to -inf. Rows without a constraint get no mask work at all.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Sequence as Seq
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from mistralrs_cli.errors import RequestError

if TYPE_CHECKING:
    import llguidance

    from mistralrs_cli.loading.tokenizer import TextTokenizer

# json_schema: a schema (dict); json_object: any JSON object; regex: a pattern (Rust regex
# syntax); grammar: Lark or GBNF text; choice: a list of strings, one of which is the output.
GUIDE_KINDS = ("json_schema", "json_object", "regex", "grammar", "choice")
# JSON on one line with json.dumps' separators. llguidance's default allows any whitespace
# between tokens, and a small model then pads with newlines until max_tokens (measured on the
# default model: 6 of 40 answers). A schema's own "x-guidance" options still win.
JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


@dataclass(frozen=True)
class Guide:
    """What a request's output must match; the kind and value are checked when built."""

    kind: str
    value: Any = None

    def __post_init__(self) -> None:
        kind, value = self.kind, self.value
        if kind not in GUIDE_KINDS:
            raise RequestError(f"unknown constraint kind {kind!r} (one of {', '.join(GUIDE_KINDS)})")
        if kind == "json_schema" and not isinstance(value, dict):
            raise RequestError("a JSON Schema must be a JSON object")
        if kind in ("regex", "grammar") and (not isinstance(value, str) or not value):
            raise RequestError(f"the {kind} must be a non-empty string")
        if kind == "choice" and (
            not isinstance(value, (list, tuple)) or not value or not all(isinstance(c, str) and c for c in value)
        ):
            raise RequestError("choice must be a non-empty list of non-empty strings")

    def grammar(self) -> str:
        """The constraint as an llguidance grammar (not yet checked against a tokenizer)."""
        from llguidance import LLMatcher, grammar_from

        try:
            if self.kind == "json_schema":
                return LLMatcher.grammar_from_json_schema(closed_objects(self.value), defaults=JSON_STYLE)
            if self.kind == "json_object":
                return LLMatcher.grammar_from_json_schema({"type": "object"}, defaults=JSON_STYLE)
            if self.kind == "regex":
                return LLMatcher.grammar_from_regex(self.value)
            if self.kind == "choice":
                return grammar_from("choice", json.dumps(list(self.value)))
            return grammar_from("grammar", self.value)  # Lark, or GBNF (converted to Lark)
        except ValueError as e:
            raise RequestError(f"invalid {self.kind.replace('_', ' ')}: {one_line(str(e))}") from None


def grammar_error(grammar: str) -> str | None:
    """Why an llguidance grammar (as `Guide.grammar()` returns) is invalid, in one line, or None.

    Needs no tokenizer: frontends check the pieces they build (a tool's parameters) before
    any model work, so the 400 can name the piece.
    """
    from llguidance import LLMatcher

    reason = LLMatcher.validate_grammar(grammar)
    return one_line(reason) if reason else None


def regex_as_lark(pattern: str) -> str:
    """A regex (Rust syntax, as `Guide("regex", ...)` takes it) as a Lark terminal, for grammars built from parts."""
    from llguidance import regex_to_lark

    return f"/{regex_to_lark(pattern, '')}/"


_SUBSCHEMA = ("items", "additionalProperties", "not", "if", "then", "else", "contains", "propertyNames")
_SUBSCHEMA_LISTS = ("anyOf", "oneOf", "prefixItems")
_SUBSCHEMA_MAPS = ("properties", "$defs", "definitions", "patternProperties", "dependentSchemas")


def closed_objects(schema: Any) -> Any:
    """A copy of `schema` where an object listing its properties takes no others unless it says so.

    This is OpenAI's strict mode and xgrammar's default (so vLLM's): without it a small model
    invents ever longer key names until max_tokens (measured on the default model). Outputs
    still validate against the original schema. allOf branches stay open: closing one would
    reject the keys the other branches add.
    """
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    for key in _SUBSCHEMA:
        if isinstance(out.get(key), dict):
            out[key] = closed_objects(out[key])
    for key in _SUBSCHEMA_LISTS:
        if isinstance(out.get(key), list):
            out[key] = [closed_objects(s) for s in out[key]]
    for key in _SUBSCHEMA_MAPS:
        if isinstance(out.get(key), dict):
            out[key] = {name: closed_objects(s) for name, s in out[key].items()}
    if isinstance(out.get("properties"), dict) and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


def one_line(message: str) -> str:
    """llguidance's multi-line reasons (with a source excerpt and carets) as one line."""
    kept = [line.strip() for line in message.splitlines()
            if line.strip() and not re.match(r"^\s*(\d+\s*\||\^)", line)]
    if not kept:
        return message.strip()
    causes = [line.removeprefix("error:").strip() for line in kept[1:] if line.startswith("error:")]
    if causes:  # a parser's "...: regex parse error:" + an echo of the pattern + "error: <cause>"
        return kept[0].rstrip(":") + ": " + "; ".join(causes)
    return "; ".join(kept)


class GuideCompiler:
    """Turns Guides into matchers for one model's tokenizer (safe in any thread)."""

    def __init__(self, tokenizer: TextTokenizer, vocab_size: int, eos_ids: Seq[int]) -> None:
        self._tokenizer = tokenizer
        self._vocab_size = vocab_size
        self._eos = sorted(eos_ids)
        self._lock = threading.Lock()
        self._lltok: llguidance.LLTokenizer | None = None

    def tokenizer(self) -> llguidance.LLTokenizer:
        """llguidance's view of the vocabulary (built once, ~0.3 s for 49k ids)."""
        with self._lock:
            if self._lltok is None:
                import llguidance

                self._lltok = llguidance.LLTokenizer(
                    self._tokenizer.tokenizer.to_str(), n_vocab=self._vocab_size, eos_token=self._eos or None
                )
            return self._lltok

    def matcher(self, guide: Guide) -> llguidance.LLMatcher:
        """A fresh matcher at the start of the output; RequestError (one line) for an invalid constraint.

        llguidance bounds the work of building a grammar and of each mask (its parser limits),
        so a pathological schema fails here with a reason rather than hanging a request.
        """
        import llguidance

        lltok = self.tokenizer()
        grammar = guide.grammar()
        matcher = llguidance.LLMatcher(lltok, grammar, log_level=0)  # drops the GIL while compiling
        if matcher.is_error():
            raise RequestError(f"invalid {guide.kind.replace('_', ' ')}: {one_line(matcher.get_error())}")
        return matcher


class MaskBuilder:
    """Fills the allowed-token bitmask of a batch's constrained rows in one call."""

    def __init__(self) -> None:
        self._executor: llguidance.LLExecutor | None = None

    def bitmask(self, matchers: list[llguidance.LLMatcher | None], vocab: int) -> torch.Tensor | None:
        """(rows, ceil(vocab/32)) int32 bitmask; all ones for rows without a matcher; None if no row has one."""
        at = [(m, i) for i, m in enumerate(matchers) if m is not None]
        if not at:
            return None
        import llguidance

        # NOTE: llguidance.torch is not imported: it torch.compile's a helper at import (2 s of dynamo).
        mask = torch.full((len(matchers), (vocab + 31) // 32), -1, dtype=torch.int32)
        row_bytes = mask.shape[1] * 4
        if len(at) == 1:
            matcher, row = at[0]
            matcher.unsafe_compute_mask_ptr(mask.data_ptr() + row * row_bytes, row_bytes)
        else:
            if self._executor is None:
                self._executor = llguidance.LLExecutor()
            self._executor.unsafe_compute_mask_ptr(at, mask.data_ptr(), row_bytes, len(matchers))
        return mask


def apply_bitmask(logits: torch.Tensor, bitmask: torch.Tensor) -> torch.Tensor:
    """Logits with every token whose bit is 0 set to -inf (bit i of word w is token 32*w + i)."""
    # NOTE: numpy's unpackbits over the little-endian bytes is ~10x faster than shifting in torch,
    # and torch.where on the 0/1 bytes viewed as bool ~3x faster than masked_fill of a negation.
    bits = np.unpackbits(bitmask.numpy().view(np.uint8), axis=-1, bitorder="little")[:, : logits.shape[1]]
    allowed = torch.from_numpy(bits.view(np.bool_)).to(logits.device)
    return torch.where(allowed, logits, float("-inf"))
