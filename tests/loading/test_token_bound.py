"""The cheap lower bound on token counts (loading/token_bound.py): never above the real count,
and absent for pipelines that can drop text or fuse a run into one token."""

from __future__ import annotations

import random

import pytest
from tokenizers import AddedToken, Tokenizer, models, normalizers, pre_tokenizers

from mistralrs_cli.loading.gguf_file import GGUFFile
from mistralrs_cli.loading.gguf_tokenizer import gguf_tokenizer
from mistralrs_cli.loading.hf_tokenizer import load_hf_tokenizer
from mistralrs_cli.loading.token_bound import token_bound
from tests.loading.test_gguf_tokenizer import _spm_file
from tests.oracles.tiny_models import write_tiny_tokenizer

# Runs a token of the longest kind would swallow whole, control bytes byte-level vocabularies lack,
# combining marks NFC composes, CJK, emoji, unpaired-free random Unicode.
ADVERSARIAL = ["#" * 5000, " " * 5000, "\n" + " " * 4999, "=" * 3000, "\x04\x06\x13" * 2000, "e\u0301" * 2000,
               "日本語" * 1000, "🙂" * 1000, "hello world " * 500, "</s><s>" * 500, ""]


def _random_texts(n: int = 30) -> list[str]:
    rng = random.Random(12)
    pool = "ab #\n\t=é\u0301日🙂\x04.,0123456789▁"
    return ["".join(rng.choice(pool) for _ in range(rng.randrange(1, 3000))) for _ in range(n)]


def _check(tok) -> None:
    bound = tok.bound
    assert bound is not None
    for text in ADVERSARIAL + _random_texts():
        assert bound.min_tokens(text) <= len(tok.encode(text, add_special_tokens=False)), repr(text[:20])
    assert bound.min_tokens("a" * (bound.chars_per_token * 10)) == 10


def test_bound_holds_for_a_byte_level_bpe(tmp_path):
    write_tiny_tokenizer(tmp_path)
    _check(load_hf_tokenizer_from(tmp_path))


def test_bound_holds_for_a_sentencepiece_gguf(tmp_path):
    _check(gguf_tokenizer(GGUFFile(_spm_file(tmp_path))))


@pytest.mark.slow
def test_bound_holds_for_the_default_model(default_gguf):
    tok = gguf_tokenizer(GGUFFile(default_gguf))
    _check(tok)
    # Its vocabulary lacks six control bytes: text made of them alone yields no token at all.
    assert tok.bound.dropped == "\x04\x06\x13\x14\x16\x1d"
    assert tok.encode("\x04" * 100, add_special_tokens=False) == [] and tok.bound.min_tokens("\x04" * 100) == 0


def load_hf_tokenizer_from(folder):
    from mistralrs_cli.loading.source import ModelSource

    return load_hf_tokenizer(ModelSource(str(folder)))


def _bpe(**kwargs) -> Tokenizer:
    vocab = {c: i for i, c in enumerate("abcdefgh ")} | {"<unk>": 9}
    return Tokenizer(models.BPE(vocab, [], **kwargs))


@pytest.mark.parametrize("make", [
    lambda: Tokenizer(models.WordPiece({"[UNK]": 0, "a": 1}, unk_token="[UNK]")),  # a long word is one [UNK]
    lambda: Tokenizer(models.WordLevel({"<unk>": 0, "a": 1}, unk_token="<unk>")),
    lambda: _bpe(unk_token="<unk>", fuse_unk=True),  # a run of unknown characters is one <unk>
    lambda: _bpe(),  # unknown characters vanish
])
def test_no_bound_for_models_that_fuse_or_drop(make):
    assert token_bound(make()) is None


def _with(**parts) -> Tokenizer:
    tok = _bpe(byte_fallback=True)
    for name, value in parts.items():
        setattr(tok, name, value)
    return tok


@pytest.mark.parametrize("tok", [
    _with(normalizer=normalizers.Strip()),
    _with(normalizer=normalizers.Sequence([normalizers.NFC(), normalizers.Replace(" ", "")])),
    _with(normalizer=normalizers.BertNormalizer()),
    _with(pre_tokenizer=pre_tokenizers.Whitespace()),  # drops the spaces
    _with(pre_tokenizer=pre_tokenizers.Split(" ", behavior="removed")),
])
def test_no_bound_for_stages_that_drop_text(tok):
    assert token_bound(tok) is None


def test_no_bound_for_truncation_or_space_eating_added_tokens():
    tok = _bpe(byte_fallback=True)
    tok.enable_truncation(8)
    assert token_bound(tok) is None
    tok = _bpe(byte_fallback=True)
    tok.add_special_tokens([AddedToken("<mask>", lstrip=True)])
    assert token_bound(tok) is None


def test_normalizers_that_compose_or_shorten_scale_the_bound():
    plain = token_bound(_bpe(byte_fallback=True))
    assert plain is not None and plain.chars_per_token == len("<unk>")
    assert token_bound(_with(normalizer=normalizers.NFC())).chars_per_token == 4 * plain.chars_per_token
    assert token_bound(_with(normalizer=normalizers.Replace("   ", "_"))).chars_per_token == 3 * plain.chars_per_token
    kept = _with(normalizer=normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")]),
                 pre_tokenizer=pre_tokenizers.Metaspace())
    assert token_bound(kept).chars_per_token == plain.chars_per_token
