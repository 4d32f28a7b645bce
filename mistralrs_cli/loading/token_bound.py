"""A lower bound on a text's token count that costs no tokenizing, read from a tokenizer's pipeline.

One token covers at most `chars_per_token` characters of input, so `len(text) / chars_per_token`
tokens at least: a prompt too long for the context is refused before it is tokenized. The bound holds only
when no stage can drop text or fuse an unbounded run into one token, so anything not on the
allow-lists below (Strip, BertNormalizer, Whitespace pre-tokenizers, fused unknowns, WordPiece,
added tokens that swallow spaces, truncation) gives None: no cheap bound, tokenize and count.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from tokenizers import Tokenizer, pre_tokenizers

from mistralrs_cli.loading.byte_level import byte_alphabet

# Normalizers that never make the text shorter, and by how much the others can.
_KEEP_NORMALIZERS = {"Prepend", "Lowercase", "NFD", "NFKD"}
# NFC/NFKC compose: one output character stands for at most 4 code points (the longest
# canonical decomposition, e.g. U+1F82), so the text shrinks at most 4 times.
_COMPOSING = {"NFC": 4, "NFKC": 4}
# Pre-tokenizers that split or re-map text without removing any of it.
_KEEP_PRE_TOKENIZERS = {"ByteLevel", "Metaspace", "Digits", "Punctuation", "Split", "UnicodeScripts"}


@dataclass(frozen=True)
class TokenBound:
    """Most input characters one token stands for, and the characters the tokenizer drops."""

    chars_per_token: int
    dropped: str = ""  # ASCII characters a byte-level vocabulary lacks: they yield no token

    def min_tokens(self, text: str) -> int:
        """Fewest tokens `text` can encode to (special tokens aside)."""
        kept = len(text) - sum(text.count(c) for c in self.dropped)
        return -(-kept // self.chars_per_token)


def token_bound(tok: Tokenizer) -> TokenBound | None:
    """The tokenizer's TokenBound, or None when no such bound holds."""
    shrink = _normalizer_shrink(_state(tok.normalizer))
    pre = _state(tok.pre_tokenizer)
    vocab = tok.get_vocab(with_added_tokens=True)
    dropped = _dropped(tok, _byte_level(pre), vocab)
    if shrink is None or dropped is None or not _keeps_text(pre):
        return None
    if tok.truncation is not None:  # a truncating tokenizer never reports more than its cap
        return None
    added = tok.get_added_tokens_decoder().values()
    if any(t.lstrip or t.rstrip for t in added):  # such a token also eats the spaces beside it
        return None
    # Vocabulary strings are in the normalized, pre-tokenized alphabet: one character each per
    # input character (Metaspace's ▁, a ByteLevel byte) or more (a UTF-8 character's bytes,
    # WordPiece's ##, byte-fallback <0xAB>), so their length bounds the text they cover.
    longest = max(map(len, vocab), default=0)
    return TokenBound(longest * shrink, dropped) if longest else None


def _state(part: Any) -> dict[str, Any] | None:
    return None if part is None else json.loads(part.__getstate__())


def _normalizer_shrink(spec: dict[str, Any] | None) -> int | None:
    """Factor by which a normalizer can shorten text (1: never), None when unbounded."""
    if spec is None:
        return 1
    kind = spec.get("type")
    if kind == "Sequence":
        factor = 1
        for part in spec.get("normalizers", []):
            inner = _normalizer_shrink(part)
            if inner is None:
                return None
            factor *= inner
        return factor
    if kind in _KEEP_NORMALIZERS:
        return 1
    if kind in _COMPOSING:
        return _COMPOSING[kind]
    if kind == "Replace":
        pattern, content = spec.get("pattern", {}).get("String"), spec.get("content", "")
        if not pattern or not content:  # a regex, or a deletion: unbounded
            return None
        return -(-len(pattern) // len(content))
    return None


def _keeps_text(spec: dict[str, Any] | None) -> bool:
    """Whether a pre-tokenizer keeps every character (no Whitespace split, no `removed` behaviour)."""
    if spec is None:
        return True
    kind = spec.get("type")
    if kind == "Sequence":
        return all(_keeps_text(p) for p in spec.get("pretokenizers", []))
    return kind in _KEEP_PRE_TOKENIZERS and spec.get("behavior") != "Removed"


def _byte_level(spec: dict[str, Any] | None) -> bool:
    if spec is None:
        return False
    if spec.get("type") == "Sequence":
        return any(_byte_level(p) for p in spec.get("pretokenizers", []))
    return spec.get("type") == "ByteLevel"


def _dropped(tok: Tokenizer, byte_level: bool, vocab: dict[str, int]) -> str | None:
    """Input characters a BPE drops without a token ("" for none), None for any other model
    or when a run of unknown characters can fuse into one <unk>."""
    model = tok.model
    if type(model).__name__ != "BPE":
        return None
    if model.byte_fallback or (model.unk_token and not model.fuse_unk):
        return ""  # an unknown character becomes byte tokens, or one <unk> of its own
    if not byte_level:
        return None  # a character missing from the vocabulary vanishes, or fuses into one <unk>
    # Byte-level: a byte missing from the vocabulary vanishes. Real vocabularies lack a few
    # control bytes and bytes UTF-8 never uses (C0, F5..FF); a character with a missing lead
    # byte still keeps its continuation bytes, so only missing ASCII characters vanish whole.
    to_byte = {c: b for b, c in byte_alphabet().items()}
    missing = [to_byte[c] for c in pre_tokenizers.ByteLevel.alphabet() if c not in vocab]
    if any(0x80 <= b < 0xC0 for b in missing):
        return None
    return "".join(chr(b) for b in sorted(missing) if b < 0x80)


