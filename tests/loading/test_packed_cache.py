"""The packed-weights cache (loading/packed_cache.py): a warm load reads the int4 weights torch's
kernel takes instead of re-packing them, bit for bit the same; anything wrong with the cache
only costs time."""

from __future__ import annotations

import logging
import os

import gguf
import pytest
import torch

from mistralrs_cli.loading import packed_cache
from mistralrs_cli.loading.gguf import load_gguf_file
from mistralrs_cli.loading.spec import LoadOptions
from mistralrs_cli.models.quant_linear import Int4Linear
from tests.oracles.gguf_files import write_gguf_from_hf
from tests.oracles.tiny_models import save_tiny_folder, tiny_hf_model


@pytest.fixture
def tiny_q4(tmp_path, monkeypatch):
    """A tiny Q4_1 GGUF, cached like a big one, with the cache in its own folder."""
    monkeypatch.setenv("MISTRALRS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(packed_cache.ENV_OFF, raising=False)
    monkeypatch.setattr(packed_cache, "MIN_BYTES", 0)
    hf = tiny_hf_model("llama", seed=5, hidden_size=128, intermediate_size=256)
    return write_gguf_from_hf(hf, save_tiny_folder(hf, tmp_path / "hf"), tmp_path / "m.gguf", gguf.GGMLQuantizationType.Q4_1)


def _int4(loaded) -> dict[str, list[torch.Tensor]]:
    return {name: [t for pair in m.terms() for t in pair] for name, m in loaded.model.named_modules()
            if isinstance(m, Int4Linear)}


def _logits(loaded) -> torch.Tensor:
    ids = torch.tensor([[3, 17, 42, 99, 5]])
    with torch.inference_mode():
        return loaded.model(ids, torch.arange(5)[None])


def _same(a, b) -> None:
    wa, wb = _int4(a), _int4(b)
    assert wa.keys() == wb.keys() and wa
    for name in wa:
        assert all(torch.equal(x, y) for x, y in zip(wa[name], wb[name], strict=True)), name
    assert torch.equal(_logits(a), _logits(b))


def test_a_second_load_reads_the_cache_and_gets_the_same_weights(tiny_q4, monkeypatch):
    path = packed_cache.cache_file(tiny_q4)
    assert path is not None and not path.exists()
    first = load_gguf_file(tiny_q4, LoadOptions(dtype="auto"))
    assert path.is_file()
    repacked = []
    monkeypatch.setattr("mistralrs_cli.loading.gguf_weights.int4_linear", lambda *a, **k: repacked.append(1))
    second = load_gguf_file(tiny_q4, LoadOptions(dtype="auto"))
    assert repacked == []  # nothing re-packed: every int4 weight came from the cache
    _same(first, second)


def test_the_key_follows_the_file_torch_and_layout(tiny_q4, monkeypatch):
    path = packed_cache.cache_file(tiny_q4)
    stat = tiny_q4.stat()
    os.utime(tiny_q4, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert packed_cache.cache_file(tiny_q4) != path  # a rewritten file is another entry
    rewritten = packed_cache.cache_file(tiny_q4)
    real = packed_cache.block_n()
    monkeypatch.setattr(packed_cache, "block_n", lambda: 96 - real)  # the other CPU layout (64 <-> 32 rows)
    other_cpu = packed_cache.cache_file(tiny_q4)
    monkeypatch.setattr(torch, "__version__", "0.0.0")
    other_torch = packed_cache.cache_file(tiny_q4)
    assert len({path, rewritten, other_cpu, other_torch}) == 4


def test_small_files_and_the_switch_stay_out_of_it(tiny_q4, monkeypatch):
    monkeypatch.setattr(packed_cache, "MIN_BYTES", tiny_q4.stat().st_size + 1)
    assert packed_cache.cache_file(tiny_q4) is None
    monkeypatch.setattr(packed_cache, "MIN_BYTES", 0)
    monkeypatch.setenv(packed_cache.ENV_OFF, "1")
    assert packed_cache.cache_file(tiny_q4) is None
    load_gguf_file(tiny_q4, LoadOptions(dtype="auto"))
    assert not (tiny_q4.parent / "cache" / "packed").exists()


def test_a_broken_cache_file_is_re_packed_and_replaced(tiny_q4, caplog):
    path = packed_cache.cache_file(tiny_q4)
    want = load_gguf_file(tiny_q4, LoadOptions(dtype="auto"))
    path.write_bytes(path.read_bytes()[:100])  # truncated
    with caplog.at_level(logging.WARNING):
        got = load_gguf_file(tiny_q4, LoadOptions(dtype="auto"))
    assert any("ignoring the packed-weights cache" in r.getMessage() for r in caplog.records)
    _same(want, got)
    assert packed_cache.read(path) is not None  # written again, whole


def test_an_unwritable_cache_only_costs_time(tiny_q4, tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    monkeypatch.setenv("MISTRALRS_CACHE", str(blocker))  # cache_dir()/packed cannot be created
    want = load_gguf_file(tiny_q4, LoadOptions(dtype="auto"))
    assert not packed_cache.cache_file(tiny_q4).exists()
    monkeypatch.setenv(packed_cache.ENV_OFF, "1")
    _same(want, load_gguf_file(tiny_q4, LoadOptions(dtype="auto")))
