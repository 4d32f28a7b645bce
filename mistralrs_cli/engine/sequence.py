"""Request (what a client asked for) and Sequence (one choice being generated, with its KV blocks).

A request with n choices is prefilled as one sequence; when its prompt is done it forks
into n sequences that share the prompt's KV blocks (copy-on-write in the block manager).
"""

from __future__ import annotations

import enum
import itertools
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from mistralrs_cli.engine.params import SamplingParams
from mistralrs_cli.engine.stop import StopStringMatcher
from mistralrs_cli.engine.stream import RequestStream
from mistralrs_cli.loading.tokenizer import IncrementalDetokenizer, TextTokenizer


@dataclass
class Request:
    """A validated request: prompt ids, resolved limits, its output stream and pass-through extensions."""

    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    max_tokens: int  # resolved: never past the context
    repeat_last_n: int  # resolved from the params or the engine default
    stop_token_ids: frozenset[int]  # eos ids (unless ignore_eos) plus the request's own
    stream: RequestStream
    extensions: dict[str, Any] = field(default_factory=dict)
    matcher: Any = None  # llguidance matcher at the output's start, when params.guide is set
    arrival: float = field(default_factory=time.monotonic)
    # Engine-thread bookkeeping for usage and the final delta.
    choices_left: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0


class Status(enum.Enum):
    """Where a sequence is: queued (or preempted), in the running batch, or done."""

    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


_seq_ids = itertools.count()


class Sequence:
    """One choice of a request: its tokens, how many have KV in the cache, and its block table."""

    def __init__(self, request: Request, index: int, token_ids: list[int], tokenizer: TextTokenizer) -> None:
        self.seq_id = next(_seq_ids)
        self.request = request
        self.index = index
        self.token_ids = token_ids
        self.num_prompt = len(request.prompt_ids)
        self.num_computed = 0  # tokens whose K/V are in the cache
        self.block_table: list[int] = []  # -1 marks a block released by the sliding window
        self.kv_start = 0  # first position whose K/V is still held (moved by the sliding window)
        self.block_hashes: list[int] = []  # prefix-cache hashes of the full, computed blocks
        self.status = Status.WAITING
        self.pending_forks = request.params.n - 1 if index == 0 else 0
        self.generator = _generator(request.params, index)
        self.detok: IncrementalDetokenizer = tokenizer.detokenizer(request.prompt_ids)
        self.stops = StopStringMatcher(request.params.stop)
        # Each choice walks its own copy of the constraint (a fork copies its parent's state).
        self.matcher = request.matcher.deep_copy() if request.matcher is not None else None

    @property
    def params(self) -> SamplingParams:
        """The request's sampling parameters."""
        return self.request.params

    @property
    def num_tokens(self) -> int:
        """Prompt plus generated tokens."""
        return len(self.token_ids)

    @property
    def num_output(self) -> int:
        """Generated tokens so far."""
        return len(self.token_ids) - self.num_prompt

    def fork(self, index: int, tokenizer: TextTokenizer) -> Sequence:
        """A sibling choice sharing this prompt; the caller shares the blocks in the block manager."""
        child = Sequence(self.request, index, list(self.token_ids), tokenizer)
        child.num_computed = self.num_computed
        child.matcher = self.matcher.deep_copy() if self.matcher is not None else None
        child.status = self.status
        return child

    def uniform(self) -> float:
        """The next draw in (0, 1] from this choice's own generator (0.0 when greedy)."""
        if self.generator is None:
            return 0.0
        return 1.0 - float(torch.rand((), generator=self.generator))


def _generator(params: SamplingParams, index: int) -> torch.Generator | None:
    # NOTE: one CPU generator per choice and one draw per token, so a seeded choice gives
    # the same tokens alone or in any batch; choice i of a request uses seed + i.
    if params.greedy:
        return None
    gen = torch.Generator()
    if params.seed is None:
        gen.seed()
    else:
        gen.manual_seed((params.seed + index) % (1 << 63))
    return gen
