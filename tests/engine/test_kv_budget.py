"""The default KV pool: what --max-seqs x the context can use, capped (1 GiB or a quarter of the
available RAM on CPU); --kv-cache-mem overrides; the budget line says which and why."""

from __future__ import annotations

import pytest
import torch

from mistralrs_cli.engine import Engine, EngineConfig, SamplingParams
from mistralrs_cli.engine.config import CPU_CAP, MIB, available_ram, default_cap
from mistralrs_cli.errors import ConfigError

CPU = torch.device("cpu")
# The default model: 30 layers x 3 KV heads x 64 dims x (k, v) x f32 = 46080 bytes a token.
DEFAULT_BLOCK = 30 * 3 * 64 * 2 * 4 * 16



def test_small_use_takes_only_max_seqs_times_context():
    budget = EngineConfig(max_seqs=4).resolved(CPU, 1000).kv_budget(CPU, DEFAULT_BLOCK)
    assert budget.blocks == 4 * 63  # ceil(1000 / 16) blocks per full-length sequence
    assert budget.bytes == 4 * 63 * DEFAULT_BLOCK  # 11 MiB, not the 1 GiB cap
    assert "4 sequences x 1000 tokens" in budget.describe() and "capped" not in budget.describe()


def test_large_use_is_capped_and_says_so():
    cap, _ = default_cap(CPU)
    budget = EngineConfig(max_seqs=32).resolved(CPU, 8192).kv_budget(CPU, DEFAULT_BLOCK)
    assert cap == min(CPU_CAP, available_ram() // 4)
    assert budget.blocks == cap // DEFAULT_BLOCK and budget.bytes <= cap
    line = budget.describe()
    assert "capped at" in line and "32 sequences x 8192 tokens would take 11520 MiB" in line
    assert f"{budget.tokens} tokens" in line and "--kv-cache-mem" in line


def test_max_seqs_scales_the_default():
    one = EngineConfig(max_seqs=1).resolved(CPU, 2048).kv_budget(CPU, DEFAULT_BLOCK)
    two = EngineConfig(max_seqs=2).resolved(CPU, 2048).kv_budget(CPU, DEFAULT_BLOCK)
    assert two.blocks == 2 * one.blocks == 2 * 128


def test_kv_cache_mem_overrides_the_default():
    budget = EngineConfig(max_seqs=1, kv_cache_mem_mb=100).resolved(CPU, 256).kv_budget(CPU, DEFAULT_BLOCK)
    assert budget.blocks == 100 * MIB // DEFAULT_BLOCK and "--kv-cache-mem" in budget.source
    with pytest.raises(ConfigError, match="KV cache too small"):
        EngineConfig(kv_cache_mem_mb=0).resolved(CPU, 256).kv_budget(CPU, DEFAULT_BLOCK)


def test_engine_pool_matches_its_budget(tiny_mistral):
    with Engine(tiny_mistral, EngineConfig(max_seqs=3)) as engine:
        ctx = tiny_mistral.config.max_position_embeddings
        assert engine.kv_budget.blocks == 3 * -(-ctx // 16) == engine.stats().kv_blocks_total
        assert engine.stats().kv_bytes_total == engine.kv_budget.bytes


def test_chat_stats_show_the_budget(tiny_mistral):
    from mistralrs_cli.frontends.chat import EngineChatBackend

    with Engine(tiny_mistral, EngineConfig(max_seqs=2)) as engine:
        shown = EngineChatBackend(engine, SamplingParams()).describe()["kv cache"]
    assert shown.startswith("0.0 MiB used of KV cache ") and "2 sequences x" in shown
