"""Scheduler: continuous batching with chunked prefill, a KV block budget and preemption.

Every step, each running sequence that is decoding gets its one token; what is left of the
step's token budget goes to prompt chunks: first to sequences already mid-prompt, then to
newly admitted ones, in arrival order (FIFO, no overtaking). So a long prompt is prefilled
a chunk per step while the others keep streaming. When blocks run out, the newest running
sequence is preempted: its blocks are freed and it goes back to the head of the queue to be
recomputed later (its sampled tokens are kept, so its output does not change).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from mistralrs_cli.engine.block_manager import BlockManager
from mistralrs_cli.engine.sequence import Sequence, Status


@dataclass
class Chunk:
    """Tokens [start, start + length) of one sequence, computed this step."""

    seq: Sequence
    start: int
    length: int

    @property
    def needs_logits(self) -> bool:
        """True when the chunk ends at the sequence's last token, so the next one is sampled."""
        return self.start + self.length == self.seq.num_tokens


@dataclass
class StepPlan:
    """What one step computes: chunks in running order, and block copies to do before it."""

    chunks: list[Chunk] = field(default_factory=list)
    copies: list[tuple[int, int]] = field(default_factory=list)


class Scheduler:
    """Owns the waiting queue and the running batch; decides each step's chunks."""

    def __init__(self, blocks: BlockManager, max_seqs: int, max_batched_tokens: int) -> None:
        self.blocks = blocks
        self.max_seqs = max_seqs
        self.max_batched_tokens = max_batched_tokens
        # Admission leaves this many blocks free so running sequences can grow a little
        # before anyone has to be preempted.
        self.watermark = max(1, blocks.num_blocks // 100)
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.preemptions = 0
        self.prefix_hit_tokens = 0

    def add(self, seq: Sequence) -> None:
        """Queue a new sequence behind everything already waiting."""
        self.waiting.append(seq)

    def has_work(self) -> bool:
        """Whether any sequence is waiting or running."""
        return bool(self.waiting or self.running)

    def schedule(self) -> StepPlan:
        """Pick this step's chunks, reserving their blocks (and preempting when they run out)."""
        plan = StepPlan()
        decoding = sum(1 for s in self.running if s.num_tokens - s.num_computed == 1)
        budget = max(self.max_batched_tokens - decoding, 0)  # tokens left for prompt chunks
        preempted = False
        i = 0
        while i < len(self.running):
            seq = self.running[i]
            remaining = seq.num_tokens - seq.num_computed
            n = 1 if remaining == 1 else min(remaining, budget)
            if n == 0:  # no budget left this step for this prompt; it continues next step
                i += 1
                continue
            self.blocks.release_window(seq, seq.num_computed)
            while not self.blocks.can_reserve(seq, seq.num_computed + n):
                victim = self.running[-1]  # newest first; never one already scheduled
                self.preempt(victim)
                preempted = True
                if victim is seq:
                    break
            if seq.status is not Status.RUNNING:
                break  # seq itself was preempted, and every sequence after it
            self._take(plan, seq, n)
            budget -= n if remaining > 1 else 0
            i += 1
        # After a preemption, admitting would only take the blocks just freed for the
        # running ones; unless nothing is left running at all.
        if not preempted or not plan.chunks:
            self._admit(plan, budget)
        return plan

    def _admit(self, plan: StepPlan, budget: int) -> None:
        """Admit waiting sequences in FIFO order while seats, budget and blocks allow."""
        while self.waiting and budget > 0:
            seq = self.waiting[0]
            if len(self.running) + 1 + seq.pending_forks > self.max_seqs:
                break
            cached = self.blocks.match_prefix(seq)
            n = min(seq.num_tokens - seq.num_computed, budget)
            self.blocks.release_window(seq, seq.num_computed)
            keep = self.watermark if self.running else 0
            if not self.blocks.can_reserve(seq, seq.num_computed + n, keep):
                self.blocks.free_seq(seq)
                seq.num_computed = 0
                break
            self.waiting.popleft()
            seq.status = Status.RUNNING
            self.running.append(seq)
            self.prefix_hit_tokens += cached
            seq.request.cached_tokens = max(seq.request.cached_tokens, cached)
            self._take(plan, seq, n)
            budget -= n

    def _take(self, plan: StepPlan, seq: Sequence, n: int) -> None:
        plan.copies += self.blocks.reserve(seq, seq.num_computed + n)
        plan.chunks.append(Chunk(seq, seq.num_computed, n))

    def after_step(self, plan: StepPlan) -> None:
        """Record what the step computed and publish completed blocks to the prefix cache."""
        for chunk in plan.chunks:
            chunk.seq.num_computed = chunk.start + chunk.length
            self.blocks.register(chunk.seq)

    def preempt(self, seq: Sequence) -> None:
        """Free a running sequence's blocks and requeue it at the head for recomputation."""
        self.running.remove(seq)
        self.blocks.free_seq(seq)
        seq.num_computed = 0
        seq.status = Status.WAITING
        self.waiting.appendleft(seq)
        self.preemptions += 1

    def add_fork(self, parent: Sequence, child: Sequence) -> None:
        """Put a freshly forked choice right after its parent, sharing the parent's blocks."""
        self.blocks.fork(parent, child)
        child.status = Status.RUNNING
        self.running.insert(self.running.index(parent) + 1, child)

    def finish(self, seq: Sequence) -> None:
        """Remove a sequence for good and free its blocks at once."""
        if seq.status is Status.RUNNING:
            self.running.remove(seq)
        elif seq.status is Status.WAITING:
            self.waiting.remove(seq)
        self.blocks.free_seq(seq)
        seq.status = Status.FINISHED

    def sequences_of(self, request_id: str) -> list[Sequence]:
        """Live sequences of one request (for abort)."""
        return [s for s in (*self.running, *self.waiting) if s.request.request_id == request_id]
