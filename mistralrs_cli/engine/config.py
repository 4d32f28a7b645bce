"""EngineConfig: the engine's knobs (--max-seqs, --kv-cache-mem, --prefix-cache...) and their defaults."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

import torch

from mistralrs_cli.errors import ConfigError

MIB = 1 << 20
CPU_CAP = 1024 * MIB  # most a default KV pool takes on CPU


@dataclass(frozen=True)
class EngineConfig:
    """How many sequences run at once, how big the KV cache is, and how prompts are handled.

    None means "pick for the device": `resolved()` fills every field in.
    """

    max_seqs: int | None = None  # running sequences per step: 32 on CPU, 128 on GPU
    max_batched_tokens: int | None = None  # tokens per step (decodes + prompt chunks): 256 CPU, 2048 GPU
    block_size: int = 16  # token slots per KV block
    # KV pool size; default: what max_seqs x max_model_len can use, at most 1 GiB (or a quarter
    # of the available RAM) on CPU and half the free memory on a GPU
    kv_cache_mem_mb: int | None = None
    kv_blocks: int | None = None  # exact pool size in blocks (overrides kv_cache_mem_mb)
    prefix_caching: bool = True  # share full prompt blocks between requests (where the model allows it)
    truncate_sequence: bool = False  # drop the prompt's start instead of rejecting a long prompt
    no_kv_cache: bool = False  # recompute the whole sequence every step (slow; for debugging)
    max_model_len: int | None = None  # context cap; default: the model's max_position_embeddings
    repeat_last_n: int = 64  # default repetition-penalty window for requests that give none
    threads: int | None = None  # torch CPU threads of the engine thread (see engine/threads.py)
    # Decode steps through one torch.compile'd graph per batch bucket (engine/compiled_step.py);
    # CPU only, needs a C++ compiler; each bucket compiles in the background on first use (eager
    # meanwhile). True: warn where it cannot run; None: where it can, silently (the CLI's default).
    compile: bool | None = False

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
        """Pool size in blocks (see `kv_budget`)."""
        return self.kv_budget(device, block_bytes).blocks

    def kv_budget(self, device: torch.device, block_bytes: int) -> KvBudget:
        """The KV pool: kv_blocks, else kv_cache_mem_mb, else what max_seqs x max_model_len can use, capped.

        The cap (`default_cap`) keeps a small model with a long context from reserving
        gigabytes it will never touch: max_seqs full-length sequences of the default model
        would take 11 GiB of f32 KV on CPU.
        """
        if self.kv_blocks is not None:
            blocks, source = self.kv_blocks, "set in blocks"
        elif self.kv_cache_mem_mb is not None:
            blocks, source = self.kv_cache_mem_mb * MIB // block_bytes, "--kv-cache-mem"
        else:
            assert self.max_seqs is not None and self.max_model_len is not None, "call resolved() first"
            most = self.max_seqs * -(-self.max_model_len // self.block_size)
            cap, why = default_cap(device)
            fits = f"{self.max_seqs} sequences x {self.max_model_len} tokens"
            if most * block_bytes <= cap:
                blocks, source = most, f"{fits}; --kv-cache-mem to change"
            else:
                blocks = cap // block_bytes
                source = (f"capped at {why}; {fits} would take {most * block_bytes / MIB:.0f} MiB; "
                          "--kv-cache-mem to change")
        if blocks < 1:
            raise ConfigError(
                f"KV cache too small: one block of {self.block_size} tokens takes {block_bytes / MIB:.2f} MiB"
            )
        return KvBudget(int(blocks), self.block_size, block_bytes, source)


@dataclass(frozen=True)
class KvBudget:
    """The KV pool's size and why it is that size (printed when a frontend starts)."""

    blocks: int
    block_size: int
    block_bytes: int
    source: str

    @property
    def bytes(self) -> int:
        """Bytes of the whole pool."""
        return self.blocks * self.block_bytes

    @property
    def tokens(self) -> int:
        """Token slots in the pool (all sequences together)."""
        return self.blocks * self.block_size

    def describe(self) -> str:
        """One line, e.g. "KV cache 1024 MiB (23296 tokens; capped at 1 GiB; ...)"."""
        return f"KV cache {self.bytes / MIB:.0f} MiB ({self.tokens} tokens; {self.source})"


def default_cap(device: torch.device) -> tuple[int, str]:
    """Most bytes the default KV pool may take, and how to say why: half the free GPU memory;
    on CPU 1 GiB or a quarter of the available RAM, whichever is smaller."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free // 2, "half the free GPU memory"
    quarter = available_ram() // 4
    if quarter < CPU_CAP:
        return quarter, "a quarter of the available RAM"
    return CPU_CAP, "1 GiB on CPU"


def available_ram() -> int:
    """MemAvailable from /proc/meminfo (Linux), else free physical pages; bytes."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 4 * CPU_CAP  # unknown: let the 1 GiB cap decide
