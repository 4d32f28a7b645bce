"""The incremental detokenizer streams exactly the text `decode` gives for all ids."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, decoders, models, normalizers

from mistralrs_cli.loading.tokenizer import TextTokenizer

UNICODE_TEXT = (
    "Héllo wörld! Ça va? 日本語のテキスト、中文字符 and emoji 🙂🚀👩‍👩‍👧 — ﬁne “quotes” ∑∫√ "
    "Ελληνικά русский עברית العربية हिन्दी 한국어 ☃ \t tabs\nnew lines  double  spaces"
)


def _byte_fallback_tokenizer() -> Tokenizer:
    # SentencePiece-style: ▁ for spaces, ASCII letters as pieces, everything else as <0xNN> bytes.
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for ch in "▁abcdefghijklmnopqrstuvwxyzHECΕ!?.,":
        vocab.setdefault(ch, len(vocab))
    vocab["▁H"] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[("▁", "H")], unk_token="<unk>", byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    return tok


def _byte_level_tokenizer(tiny_dir) -> Tokenizer:
    return Tokenizer.from_file(str(tiny_dir / "tokenizer.json"))


def _stream(tok: TextTokenizer, ids: list[int]) -> str:
    detok = tok.detokenizer()
    return "".join(detok.push(i) for i in ids) + detok.flush()


@pytest.mark.parametrize("kind", ["byte-fallback", "byte-level"])
def test_stream_equals_decode(kind, tiny_mistral_dir):
    raw = _byte_fallback_tokenizer() if kind == "byte-fallback" else _byte_level_tokenizer(tiny_mistral_dir)
    tok = TextTokenizer(raw, bos_token="<s>", eos_tokens=("</s>",))
    ids = tok.encode(UNICODE_TEXT, add_special_tokens=False)
    assert len(ids) > 50
    assert _stream(tok, ids) == tok.decode(ids)


def test_no_partial_characters_are_emitted(tiny_mistral_dir):
    tok = TextTokenizer(_byte_fallback_tokenizer())
    detok = tok.detokenizer()
    pieces = [detok.push(i) for i in tok.encode("日本🙂", add_special_tokens=False)]
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) + detok.flush() == "日本🙂"


def test_lone_surrogate_is_a_request_error(tiny_mistral_dir):
    from mistralrs_cli.errors import RequestError

    tok = TextTokenizer(_byte_level_tokenizer(tiny_mistral_dir))
    with pytest.raises(RequestError, match="surrogate"):
        tok.encode("a\ud800b")
