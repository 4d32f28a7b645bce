"""Building a `tokenizers.Tokenizer` and chat template from GGUF tokenizer metadata.

Two vocabularies occur in Mistral/Llama GGUFs (`tokenizer.ggml.model`):
  - `gpt2`: byte-level BPE with merges; `tokenizer.ggml.pre` names the split regex;
  - `llama`: SentencePiece-style BPE with byte fallback and a `▁` space marker; merges are
    stored or, in older files, recovered from the token scores.
The result matches what transformers builds from the same file (`gguf_file=`), which the
tests check on the real default model and on small files written in the tests.
"""

from __future__ import annotations

from typing import Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

from mistralrs_cli.errors import TokenizerError
from mistralrs_cli.loading.byte_level import byte_alphabet
from mistralrs_cli.loading.chat_template import ChatTemplate, read_template_override
from mistralrs_cli.loading.gguf_file import GGUFFile
from mistralrs_cli.loading.tokenizer import TextTokenizer

CONTROL, USER_DEFINED = 3, 4  # llama.cpp token types

_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_TEKKEN_SPLIT = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# `tokenizer.ggml.pre` -> the regex llama.cpp splits with before byte-level BPE.
_SPLITS = {
    **dict.fromkeys(("llama3", "llama-v3", "llama-bpe", "smaug-bpe", "dbrx", "pixtral"), _LLAMA3_SPLIT),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen"), _QWEN2_SPLIT),
    "tekken": _TEKKEN_SPLIT,
}


def _byte_level(tokens: list[str], merges: list[str], pre: str | None, prefix: bool) -> Tokenizer:
    alphabet = byte_alphabet()
    letters = set(alphabet.values())
    # Some converters store added tokens in plain text; spell them in the byte alphabet like the rest.
    vocab = {
        (t if set(t) <= letters else "".join(alphabet[b] for b in t.encode("utf-8"))): i
        for i, t in enumerate(tokens)
    }
    tok = Tokenizer(models.BPE(vocab, _split_merges(merges), fuse_unk=False, byte_fallback=False))
    split = _SPLITS.get(pre or "")
    if split is not None:
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(split), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=prefix, use_regex=False),
            ]
        )
    elif pre == "smollm":
        # llama.cpp splits SmolLM's digits one by one before the GPT-2 regex, as its tokenizer.json does.
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=prefix, use_regex=True),
            ]
        )
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=prefix, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    return tok


def _sentencepiece(tokens: list[str], merges: list[str] | None, scores: Any, unk: str | None, prefix: bool) -> Tokenizer:
    vocab = {t: i for i, t in enumerate(tokens)}
    pairs = _split_merges(merges) if merges else _merges_from_scores(tokens, scores)
    tok = Tokenizer(models.BPE(vocab, pairs, unk_token=unk, fuse_unk=True, byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement="▁", prepend_scheme="first" if prefix else "never", split=False
    )
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if prefix:
        steps.append(decoders.Strip(" ", 1, 0))
    tok.decoder = decoders.Sequence(steps)
    return tok


def _split_merges(merges: list[str]) -> list[tuple[str, str]]:
    out = []
    for m in merges:
        left, sep, right = m.partition(" ")
        if not sep:
            raise TokenizerError(f"invalid merge {m!r} in tokenizer.ggml.merges")
        out.append((left, right))
    return out


def _merges_from_scores(tokens: list[str], scores: Any) -> list[tuple[str, str]]:
    """Merges implied by a scored vocabulary: every split of a token into two tokens, best score first."""
    if scores is None or len(scores) != len(tokens):
        raise TokenizerError("SentencePiece vocabulary without merges needs tokenizer.ggml.scores")
    vocab = {t: i for i, t in enumerate(tokens)}
    found = []
    for token, score in zip(tokens, scores, strict=True):
        local = [(token[:i], token[i:]) for i in range(1, len(token)) if token[:i] in vocab and token[i:] in vocab]
        local.sort(key=lambda p: (vocab[p[0]], vocab[p[1]]))
        found += [(a, b, float(score)) for a, b in local]
    found.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)
    return [(a, b) for a, b, _ in found]


def _token(g: GGUFFile, tokens: list[str], key: str) -> str | None:
    idx = g.get(f"tokenizer.ggml.{key}")
    if idx is None:
        return None
    if not isinstance(idx, int) or not 0 <= idx < len(tokens):
        raise TokenizerError(f"{g.path}: tokenizer.ggml.{key} = {idx!r} is not a token id")
    return tokens[idx]


def gguf_tokenizer(g: GGUFFile, chat_template_override: str | None = None) -> TextTokenizer:
    """The TextTokenizer (with chat template) described by a GGUF's tokenizer.* metadata."""
    kind = g.get("tokenizer.ggml.model")
    tokens = g.get("tokenizer.ggml.tokens")
    if kind is None or not isinstance(tokens, list) or not tokens:
        raise TokenizerError(f"{g.path}: no tokenizer in this GGUF; pass one with -t/--tok-model-id")
    merges = g.get("tokenizer.ggml.merges")
    specials = {name: _token(g, tokens, key) for name, key in (
        ("bos_token", "bos_token_id"), ("eos_token", "eos_token_id"),
        ("unk_token", "unknown_token_id"), ("pad_token", "padding_token_id"),
    )}
    try:
        if kind == "gpt2":
            prefix = bool(g.get("tokenizer.ggml.add_space_prefix", False))
            tok = _byte_level(tokens, merges or [], g.get("tokenizer.ggml.pre"), prefix)
            add_bos_default = False
        elif kind == "llama":
            prefix = bool(g.get("tokenizer.ggml.add_space_prefix", True))
            tok = _sentencepiece(tokens, merges, g.get("tokenizer.ggml.scores"), specials["unk_token"], prefix)
            add_bos_default = True  # llama.cpp adds BOS to SentencePiece vocabularies unless told not to
        else:
            raise TokenizerError(f"{g.path}: unsupported tokenizer model {kind!r} (gpt2, llama)")
    except TokenizerError:
        raise
    except Exception as e:
        raise TokenizerError(f"{g.path}: cannot build the tokenizer ({str(e).splitlines()[0]})") from None
    _add_special_tokens(tok, g, tokens, specials, byte_level=kind == "gpt2")
    _set_post_processor(tok, g, specials, add_bos_default)
    template = _chat_template(g, specials, chat_template_override)
    eos = specials["eos_token"]
    text_tok = TextTokenizer(
        tok,
        bos_token=specials["bos_token"],
        eos_tokens=(eos,) if eos else (),
        unk_token=specials["unk_token"],
        pad_token=specials["pad_token"],
        chat_template=template,
    )
    eot = _token(g, tokens, "eot_token_id")
    if eot is not None:
        text_tok.add_eos_ids((tokens.index(eot),))
    return text_tok


def _add_special_tokens(tok: Tokenizer, g: GGUFFile, tokens: list[str], specials: dict, byte_level: bool) -> None:
    types = g.get("tokenizer.ggml.token_type")
    types = list(types) if types is not None and len(types) == len(tokens) else [0] * len(tokens)
    letters = set(byte_alphabet().values()) if byte_level else None
    # Control tokens (<|im_start|>...) are matched whole and skipped when decoding; in a byte-level
    # vocabulary one spelled outside the byte alphabet is a converter mislabel and is left alone.
    control = [t for t, ty in zip(tokens, types, strict=True) if ty == CONTROL and (letters is None or set(t) <= letters)]
    named = [t for t in specials.values() if t is not None and (letters is None or set(t) <= letters)]
    special = list(dict.fromkeys(control + named))
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in special])
    user = [t for t, ty in zip(tokens, types, strict=True) if ty == USER_DEFINED and t not in special]
    if user:
        tok.add_tokens([AddedToken(t, normalized=False, special=False) for t in user])


def _set_post_processor(tok: Tokenizer, g: GGUFFile, specials: dict, add_bos_default: bool) -> None:
    add_bos = bool(g.get("tokenizer.ggml.add_bos_token", add_bos_default))
    add_eos = bool(g.get("tokenizer.ggml.add_eos_token", False))
    bos, eos = specials["bos_token"], specials["eos_token"]
    single = ([f"{bos}:0"] if add_bos and bos else []) + ["$A:0"] + ([f"{eos}:0"] if add_eos and eos else [])
    used = [t for t, on in ((bos, add_bos), (eos, add_eos)) if on and t]
    if used:
        tok.post_processor = processors.TemplateProcessing(
            single=single, special_tokens=[(t, tok.token_to_id(t)) for t in dict.fromkeys(used)]
        )


def _chat_template(g: GGUFFile, specials: dict, override: str | None) -> ChatTemplate | None:
    if override:
        return ChatTemplate(read_template_override(override), specials, f"chat template {override}")
    source = g.get("tokenizer.chat_template")
    if isinstance(source, str) and source:
        return ChatTemplate(source, specials, f"{g.path.name} tokenizer.chat_template")
    return None
