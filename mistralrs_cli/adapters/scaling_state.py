"""Per-sequence X-LoRA state: prompt length, frozen scalings (tgt_non_granular_index), scalings history.

Keyed by the engine's sequence ids (`AttentionBatch.seq_ids`). Memory stays bounded even if
the engine never calls `forget`: the least recently used entries are dropped past `capacity`,
and a history stops growing at `HISTORY_CAP` tokens.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field, replace

import torch

HISTORY_CAP = 16384  # generated tokens whose scalings one sequence remembers


@dataclass
class SeqScalings:
    """What the X-LoRA model remembers about one sequence."""

    prompt_len: int | None = None
    # Only used when the engine gives no prompt lengths: still inside the prompt's chunks?
    in_prompt: bool = True
    # (n_lora_layers, n_adapters): the scalings reused for every token past the freeze point.
    frozen: torch.Tensor | None = None
    frozen_pos: int = -1  # the position whose scalings `frozen` holds
    # (n_lora_layers, n_adapters): classifier scalings of the sequence's most recent token.
    last: torch.Tensor | None = None
    max_pos: int = -1  # the furthest position computed so far
    # One entry per generated token: (a step's (B, n_adapters) layer-mean scalings, row).
    history: list[tuple[torch.Tensor, int]] = field(default_factory=list)

    def observe(self, positions: torch.Tensor, prompt_len: int | None) -> int:
        """Update the prompt length from this call's valid positions (1-D, CPU); return it.

        With the engine's `prompt_len` this is exact. Without it: the first call is all
        prompt, and further multi-token chunks that continue it are too; a one-token call
        marks the start of decoding.
        """
        if prompt_len is not None:
            self.prompt_len = prompt_len
            return prompt_len
        first, last, count = int(positions.min()), int(positions.max()), positions.numel()
        if self.prompt_len is None:
            self.prompt_len = last + 1
        elif self.in_prompt and count > 1 and first == self.prompt_len:
            self.prompt_len = last + 1
        elif count == 1 and first >= self.prompt_len:
            self.in_prompt = False
        return self.prompt_len

    def record(self, last: torch.Tensor, means: torch.Tensor, row: int, end: int) -> None:
        """Note a call that computed up to position `end` with `last` scalings for that token.

        A call reaching past the furthest position so far (and at least the prompt's last
        token) produces the next generated token: its scalings join the history. Recomputed
        positions (after a preemption) and mid-prompt chunks do not.
        """
        self.last = last
        if end >= (self.prompt_len or 0) - 1 and end > self.max_pos and len(self.history) < HISTORY_CAP:
            self.history.append((means, row))
        self.max_pos = max(self.max_pos, end)


class ScalingState:
    """An LRU map seq_id -> SeqScalings with a fixed capacity."""

    def __init__(self, capacity: int = 1024) -> None:
        self.capacity = capacity
        self._seqs: OrderedDict[int, SeqScalings] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seqs)

    def __contains__(self, seq_id: int) -> bool:
        return seq_id in self._seqs

    def get(self, seq_id: int) -> SeqScalings:
        """The entry for `seq_id`, created when new; marks it most recently used."""
        entry = self._seqs.get(seq_id)
        if entry is None:
            entry = self._seqs[seq_id] = SeqScalings()
            while len(self._seqs) > self.capacity:
                self._seqs.popitem(last=False)
        else:
            self._seqs.move_to_end(seq_id)
        return entry

    def peek(self, seq_id: int) -> SeqScalings | None:
        """The entry for `seq_id` without creating or touching it."""
        return self._seqs.get(seq_id)

    def forget(self, seq_id: int) -> None:
        """Drop a finished sequence (no error when unknown)."""
        self._seqs.pop(seq_id, None)

    def fork(self, parent: int, child: int) -> None:
        """Give a forked sequence a copy of its parent's state (prompt, frozen scalings, history)."""
        entry = self._seqs.get(parent)
        if entry is not None:
            self.get(child)
            self._seqs[child] = replace(entry, history=list(entry.history))
