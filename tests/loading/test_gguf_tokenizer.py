"""SentencePiece-style (`tokenizer.ggml.model = llama`) GGUF vocabularies against transformers' GGUF tokenizer."""

from __future__ import annotations

import gguf
import numpy as np
import pytest

from mistralrs_cli.loading.gguf_file import GGUFFile
from mistralrs_cli.loading.gguf_tokenizer import gguf_tokenizer
from tests.oracles.gguf_files import write_gguf

V = gguf.GGUFValueType
WORDS = ["▁the", "▁a", "▁cat", "▁sat", "▁on", "▁mat", "he", "at", "▁t", "▁c", "▁s", "▁m", "▁o", "on", "th", "▁ü", "ber", "▁日本"]
TEXTS = ["the cat sat on the mat", "über 日本 the  cat", "Hello World!\n\ttabs", "  leading", "</s> and <s> inline", ""]


def _spm_file(folder, add_space_prefix: bool = True, with_merges: bool = False):
    """A small scored vocabulary: <unk> <s> </s>, 256 byte tokens, letters, then whole words."""
    chars = sorted(set("".join(WORDS)) | set("abcdefghijklmnopqrstuvwxyz▁"))
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)] + chars
    tokens += [w for w in WORDS if w not in chars]
    types = [2, 3, 3] + [6] * 256 + [1] * (len(tokens) - 259)
    # Multi-character pieces score higher the earlier they come, so they merge first.
    scores = [10.0 - 0.1 * i if len(t) > 1 and not t.startswith("<") else 0.0 for i, t in enumerate(tokens)]
    meta = {
        "tokenizer.ggml.model": (V.STRING, "llama"),
        "tokenizer.ggml.tokens": (V.ARRAY, tokens),
        "tokenizer.ggml.scores": (V.ARRAY, scores),
        "tokenizer.ggml.token_type": (V.ARRAY, types),
        "tokenizer.ggml.bos_token_id": (V.UINT32, 1),
        "tokenizer.ggml.eos_token_id": (V.UINT32, 2),
        "tokenizer.ggml.unknown_token_id": (V.UINT32, 0),
        "tokenizer.ggml.add_bos_token": (V.BOOL, True),
        "tokenizer.ggml.add_space_prefix": (V.BOOL, add_space_prefix),
    }
    if with_merges:
        meta["tokenizer.ggml.merges"] = (V.ARRAY, ["▁ t", "h e", "▁t he"])
    name = f"spm-{int(add_space_prefix)}-{int(with_merges)}.gguf"
    return write_gguf(folder / name, "llama", meta, {"x.weight": (np.zeros((1, 32), np.float32), 0)})


def test_sentencepiece_vocabulary_matches_transformers(tmp_path):
    from transformers import AutoTokenizer

    path = _spm_file(tmp_path)
    ours = gguf_tokenizer(GGUFFile(path))
    ref = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=path.name)
    for text in TEXTS:
        ids = ours.encode(text)
        assert ids == ref(text).input_ids, text
        assert ours.decode(ids) == ref.decode(ids, skip_special_tokens=True), text
    assert ours.encode("the")[0] == 1  # add_bos_token
    assert ours.bos_token == "<s>" and ours.eos_token_ids == {2}


def test_add_space_prefix_false_and_stored_merges(tmp_path):
    vocab = {t: i for i, t in enumerate(GGUFFile(_spm_file(tmp_path)).metadata["tokenizer.ggml.tokens"])}
    no_prefix = gguf_tokenizer(GGUFFile(_spm_file(tmp_path, add_space_prefix=False)))
    # Without the prefix, "the" at the start is not the word piece "▁the".
    assert vocab["▁the"] not in no_prefix.encode("the cat", add_special_tokens=False)
    assert vocab["▁cat"] in no_prefix.encode("the cat", add_special_tokens=False)
    # Stored merges replace the ones implied by the scores: only "▁the" can be built from them.
    stored = gguf_tokenizer(GGUFFile(_spm_file(tmp_path, with_merges=True)))
    assert stored.encode("the cat", add_special_tokens=False)[0] == vocab["▁the"]
    assert vocab["▁cat"] not in stored.encode("the cat", add_special_tokens=False)


def test_missing_tokenizer_points_to_tok_model_id(tmp_path):
    from mistralrs_cli.errors import TokenizerError

    path = write_gguf(tmp_path / "bare.gguf", "llama", {}, {"x.weight": (np.zeros((1, 32), np.float32), 0)})
    with pytest.raises(TokenizerError, match="-t/--tok-model-id"):
        gguf_tokenizer(GGUFFile(path))
