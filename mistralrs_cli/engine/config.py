"""EngineConfig: the engine's knobs (--max-seqs, --kv-cache-mem, --prefix-cache...) and their defaults."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from mistralrs_cli.errors import ConfigError

MIB = 1 << 20


@dataclass(frozen=True)
class EngineConfig:
    """How many sequences run at once, how big the KV cache is, and how prompts are handled.

    None means "pick for the device": `resolved()` fills every field in.
    """

    max_seqs: int | None = None  # running sequences per step: 32 on CPU, 128 on GPU
    max_batched_tokens: int | None = None  # tokens per step (decodes + prompt chunks): 256 CPU, 2048 GPU
    block_size: int = 16  # token slots per KV block
    kv_cache_mem_mb: int | None = None  # KV pool size; default: 1 GiB on CPU, half the free GPU memory
    kv_blocks: int | None = None  # exact pool size in blocks (overrides kv_cache_mem_mb)
    prefix_caching: bool = False  # share full prompt blocks between requests
    truncate_sequence: bool = False  # drop the prompt's start instead of rejecting a long prompt
    no_kv_cache: bool = False  # recompute the whole sequence every step (slow; for debugging)
    max_model_len: int | None = None  # context cap; default: the model's max_position_embeddings
    repeat_last_n: int = 64  # default repetition-penalty window for requests that give none
    threads: int | None = None  # torch CPU threads of the engine thread (see engine/threads.py)

    def resolved(self, device: torch.device, max_position_embeddings: int) -> EngineConfig:
        """A copy with every None replaced by the device default, after checking the values."""
        gpu = device.type == "cuda"
        cfg = replace(
            self,
            max_seqs=self.max_seqs or (128 if gpu else 32),
            max_batched_tokens=self.max_batched_tokens or (2048 if gpu else 256),
            max_model_len=self.max_model_len or max_position_embeddings,
        )
        if cfg.max_seqs < 1:
            raise ConfigError(f"--max-seqs must be at least 1, got {cfg.max_seqs}")
        if cfg.block_size < 1:
            raise ConfigError(f"block size must be at least 1, got {cfg.block_size}")
        # Every running sequence must be able to decode in the same step.
        return replace(cfg, max_batched_tokens=max(cfg.max_batched_tokens, cfg.max_seqs))

    def num_blocks(self, device: torch.device, block_bytes: int) -> int:
        """Pool size in blocks: kv_blocks, else kv_cache_mem_mb, else the device default.

        The default is also capped at what max_seqs full-length sequences could ever use.
        """
        if self.kv_blocks is not None:
            blocks = self.kv_blocks
        elif self.kv_cache_mem_mb is not None:
            blocks = self.kv_cache_mem_mb * MIB // block_bytes
        else:
            assert self.max_seqs is not None and self.max_model_len is not None, "call resolved() first"
            most = self.max_seqs * -(-self.max_model_len // self.block_size)
            blocks = min(_default_mem(device) // block_bytes, most)
        if blocks < 1:
            raise ConfigError(
                f"KV cache too small: one block of {self.block_size} tokens takes {block_bytes / MIB:.2f} MiB"
            )
        return int(blocks)


def _default_mem(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free // 2
    return 1024 * MIB
