"""EngineCore: one synchronous step of the engine — schedule, run the model, sample, stream out.

Not thread-safe: `Engine` drives it from its one background thread. Tests drive it
directly to admit requests at chosen steps.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch

from mistralrs_cli.engine import guided
from mistralrs_cli.engine.admission import Limits, fit_prompt, prompt_ids
from mistralrs_cli.engine.block_manager import BlockManager
from mistralrs_cli.engine.config import EngineConfig
from mistralrs_cli.engine.guided import GuideCompiler, MaskBuilder
from mistralrs_cli.engine.model_runner import ModelRunner, block_bytes
from mistralrs_cli.engine.outputs import (
    FINISH_ABORT,
    FINISH_ERROR,
    FINISH_LENGTH,
    FINISH_STOP,
    Delta,
    EngineError,
    EngineStats,
    TokenLogprob,
    Usage,
)
from mistralrs_cli.engine.params import SamplingParams
from mistralrs_cli.engine.sampling import SampleOutput, sample
from mistralrs_cli.engine.scalings import ScalingsStore
from mistralrs_cli.engine.scheduler import Scheduler
from mistralrs_cli.engine.sequence import Request, Sequence, Status
from mistralrs_cli.engine.stream import RequestStream
from mistralrs_cli.loading.loaded import LoadedModel
from mistralrs_cli.models.contract import SequenceHooks

log = logging.getLogger(__name__)

NON_FINITE = "the model produced non-finite logits (NaN or infinity); this choice was ended"


class EngineCore:
    """Scheduler + block manager + model runner + sampler, stepped by the caller."""

    def __init__(self, loaded: LoadedModel, config: EngineConfig | None = None) -> None:
        cfg = loaded.config
        self.config = (config or EngineConfig()).resolved(loaded.device, cfg.max_position_embeddings)
        self.tokenizer = loaded.tokenizer
        bs = self.config.block_size
        model = loaded.model
        self.block_bytes = block_bytes(model, bs, loaded.dtype)
        self.kv_budget = self.config.kv_budget(loaded.device, self.block_bytes)
        num_blocks = self.kv_budget.blocks
        # A model whose cached K/V depend on more than the tokens before them (X-LoRA with
        # frozen scalings) must not share prefixes between requests.
        sharing = self.config.prefix_caching and model.prefix_cache_safe
        self.blocks = BlockManager(num_blocks, bs, cfg.sliding_window, sharing)
        self.scheduler = Scheduler(self.blocks, self.config.max_seqs, self.config.max_batched_tokens)
        self.runner = ModelRunner(model, num_blocks, bs, loaded.dtype, loaded.device, compile=self.config.compile)
        # Read once: a stateful model's per-sequence state follows our forks and finishes.
        self.hooks: SequenceHooks | None = model.sequence_hooks
        chunk = self.config.max_batched_tokens
        self.limits = Limits(
            self.config.max_model_len,
            cfg.vocab_size,
            self.config.truncate_sequence,
            num_blocks,
            self.config.max_seqs,
            lambda tokens: self.blocks.max_blocks(tokens, chunk),
        )
        self.requests: dict[str, Request] = {}
        self.guides = GuideCompiler(self.tokenizer, cfg.vocab_size, self.tokenizer.eos_token_ids)
        self.masks = MaskBuilder()
        self.scalings = ScalingsStore()  # X-LoRA per-token scalings of finished choices, when asked
        # Streams end only after the stats were published, so a consumer that sees its
        # request end also sees the cache it held as freed.
        self.publish_stats: Callable[[EngineStats], None] = lambda stats: None
        self._ending: list[RequestStream] = []
        self.steps = self.prompt_tokens_computed = self.generated_tokens = 0

    # --- requests in and out ---
    def new_request(
        self,
        request_id: str,
        prompt: str | list[int] | None,
        messages: list[dict[str, Any]] | None,
        params: SamplingParams | None,
        extensions: dict[str, Any] | None,
        abort: Callable[[str], None],
        tools: list[Any] | None = None,
    ) -> Request:
        """Tokenize and validate a request (RequestError if it can never run); safe in any thread.

        `tools` (OpenAI tool objects) are given to the chat template with the messages.
        """
        params = params or SamplingParams()
        ids = prompt_ids(self.tokenizer, prompt, messages, self.limits.vocab_size, tools)
        ids, max_tokens = fit_prompt(ids, params, self.limits)
        eos = frozenset() if params.ignore_eos else self.tokenizer.eos_token_ids
        repeat_last_n = params.repeat_last_n
        matcher = self.guides.matcher(params.guide) if params.guide is not None else None
        return Request(
            request_id,
            ids,
            params,
            max_tokens,
            self.config.repeat_last_n if repeat_last_n is None else repeat_last_n,
            eos | frozenset(params.stop_token_ids),
            RequestStream(request_id, ids, params.n, abort),
            dict(extensions or {}),
            matcher,
        )

    def add(self, request: Request) -> None:
        """Queue a validated request (its first choice; the others fork after the prompt)."""
        request.choices_left = request.params.n
        self.requests[request.request_id] = request
        self.scheduler.add(Sequence(request, 0, list(request.prompt_ids), self.tokenizer))

    def abort(self, request_id: str) -> None:
        """Stop a request now: free its blocks and end its stream with `abort` deltas."""
        request = self.requests.get(request_id)
        if request is None:
            return  # already finished; aborting is idempotent
        live = self.scheduler.sequences_of(request_id)
        unforked = [i for s in live for i in range(s.index + 1, s.index + 1 + s.pending_forks)]
        for seq in live:
            self._finish(seq)
        for index in sorted([s.index for s in live] + unforked):
            self._emit(request, Delta(index, finish_reason=FINISH_ABORT))
        self._end_streams()

    def fail_all(self, error: Exception) -> None:
        """End every request with an EngineError (the model raised); the engine stays usable."""
        message = f"generation failed: {type(error).__name__}: {error}"
        for request in list(self.requests.values()):
            for seq in self.scheduler.sequences_of(request.request_id):
                self._finish(seq)
            request.stream.put(EngineError(message))
            self._ending.append(request.stream)
        self.requests.clear()
        self._end_streams()

    def has_work(self) -> bool:
        """Whether any request is waiting or running."""
        return self.scheduler.has_work()

    def set_idle(self, idle: bool) -> None:
        """Tell background work (the compiled step's compiles) whether the engine is waiting for requests."""
        compiled = self.runner.compiled
        if compiled is not None:
            (compiled.idle.set if idle else compiled.idle.clear)()

    def stats(self) -> EngineStats:
        """A snapshot of the counters."""
        return EngineStats(
            running=len(self.scheduler.running),
            waiting=len(self.scheduler.waiting),
            kv_blocks_total=self.blocks.num_blocks,
            kv_blocks_used=self.blocks.num_used,
            kv_block_bytes=self.block_bytes,
            steps=self.steps,
            preemptions=self.scheduler.preemptions,
            prompt_tokens_computed=self.prompt_tokens_computed,
            prefix_cache_hit_tokens=self.scheduler.prefix_hit_tokens,
            generated_tokens=self.generated_tokens,
        )

    # --- the step ---
    def step(self) -> None:
        """Schedule, run the model once or twice, sample and stream every new token."""
        try:
            self._step()
        finally:
            self._end_streams()

    def _end_streams(self) -> None:
        if self._ending:
            self.publish_stats(self.stats())
            for stream in self._ending:
                stream.close()
            self._ending.clear()

    def _step(self) -> None:
        plan = self.scheduler.schedule()
        if not plan.chunks:
            self._fail_unschedulable()
            return
        self.runner.copy_blocks(plan.copies)
        logits = self.runner.run(plan.chunks)  # (rows needing a token, vocab)
        self.scheduler.after_step(plan)
        self.steps += 1
        # Everything but one-token steps past the prompt is prefill (recomputation included).
        decode = sum(1 for c in plan.chunks if c.length == 1 and c.start >= c.seq.num_prompt)
        self.prompt_tokens_computed += sum(c.length for c in plan.chunks) - decode
        seqs: list[Sequence] = []
        rows: list[int] = []
        # One check per step: a row with NaN/inf would sample garbage (or a fixed id) silently.
        finite = torch.isfinite(logits).all(-1).tolist() if len(logits) else []
        for row, chunk in enumerate(c for c in plan.chunks if c.needs_logits):
            if not finite[row]:
                self._fail_choice(chunk.seq, NON_FINITE)
                continue
            family = [chunk.seq] + self._fork(chunk.seq)  # n > 1: every choice samples this row
            seqs += family
            rows += [row] * len(family)
        if not seqs:
            return
        out = sample(logits[rows], seqs, self.masks.bitmask([s.matcher for s in seqs], logits.shape[1]))
        for i, seq in enumerate(seqs):
            if seq.matcher is not None and seq.matcher.is_error():  # e.g. the grammar's per-step budget ran out
                self._fail_choice(seq, f"the output constraint failed: {guided.one_line(seq.matcher.get_error())}")
                continue
            self._append(seq, i, out)
            if self.config.no_kv_cache and seq.status is Status.RUNNING:
                self.blocks.free_seq(seq)
                seq.num_computed = 0

    def _fail_choice(self, seq: Sequence, message: str) -> None:
        """End one choice (and the choices still to fork from it) with finish_reason "error"."""
        log.error("request %s choice %d: %s", seq.request.request_id, seq.index, message)
        indices = [seq.index, *range(seq.index + 1, seq.index + 1 + seq.pending_forks)]
        seq.pending_forks = 0
        self._finish(seq)
        for index in indices:
            self._emit(seq.request, Delta(index, finish_reason=FINISH_ERROR, error=message))

    def _fail_unschedulable(self) -> None:
        # NOTE: admission checks make this unreachable; if it ever happens, fail the head
        # request loudly rather than spin forever with work that can never run.
        if self.scheduler.waiting and not self.scheduler.running:
            request = self.scheduler.waiting[0].request
            for seq in self.scheduler.sequences_of(request.request_id):
                self._finish(seq)
            request.stream.put(EngineError("the request does not fit the KV cache"))
            self._ending.append(request.stream)
            del self.requests[request.request_id]

    def _finish(self, seq: Sequence) -> None:
        """Remove a sequence and free its blocks; a stateful model forgets it too."""
        self.scheduler.finish(seq)
        hooks = self.hooks
        if hooks is None:
            return
        if seq.request.extensions.get("xlora_scalings"):
            history = hooks.scalings_history(seq.seq_id)
            if history is not None:
                self.scalings.put(seq.request.request_id, seq.index, seq.token_ids[seq.num_prompt :], history,
                                  tuple(hooks.adapter_names))
        hooks.forget(seq.seq_id)

    def _fork(self, parent: Sequence) -> list[Sequence]:
        children = []
        for index in range(parent.index + 1, parent.index + 1 + parent.pending_forks):
            child = parent.fork(index, self.tokenizer)
            self.scheduler.add_fork(children[-1] if children else parent, child)
            if self.hooks is not None:
                self.hooks.fork(parent.seq_id, child.seq_id)
            children.append(child)
        parent.pending_forks = 0
        return children

    def _append(self, seq: Sequence, row: int, out: SampleOutput) -> None:
        """Add a sampled token to a choice, apply the stop rules and stream the delta."""
        request, token = seq.request, out.tokens[row]
        seq.token_ids.append(token)
        request.completion_tokens += 1
        self.generated_tokens += 1
        finish: str | None = None
        reason: str | int | None = None
        text, ids, logprobs = "", (), None
        if token in request.stop_token_ids:
            finish, reason = FINISH_STOP, token
        elif seq.matcher is not None and not seq.matcher.consume_token(token):
            self._fail_choice(seq, f"the output constraint failed: {guided.one_line(seq.matcher.get_error())}")
            return
        else:
            ids = (token,)
            logprobs = self._logprobs(seq, row, out)
            text, matched = seq.stops.feed(seq.detok.push(token))
            if matched is not None:
                finish, reason = FINISH_STOP, matched
        if finish is None and seq.matcher is not None and seq.matcher.is_stopped():
            # The constraint is complete (only end-of-sequence could follow): stop now, a step early.
            tail, matched = seq.stops.feed(seq.detok.flush())
            text += tail + (seq.stops.flush() if matched is None else "")
            finish, reason = FINISH_STOP, matched
        if finish is None and (seq.num_output >= request.max_tokens or seq.num_tokens >= self.limits.max_model_len):
            tail, matched = seq.stops.feed(seq.detok.flush())
            text += tail if matched is not None else tail + seq.stops.flush()
            finish, reason = (FINISH_STOP, matched) if matched is not None else (FINISH_LENGTH, None)
        if finish is not None:
            self._finish(seq)
        self._emit(request, Delta(seq.index, text, ids, logprobs, finish, reason))

    def _logprobs(self, seq: Sequence, row: int, out: SampleOutput) -> tuple[TokenLogprob, ...] | None:
        params = seq.params
        if not (params.logprobs or params.top_logprobs) or out.logprobs is None:
            return None
        token = out.tokens[row]
        top: tuple[tuple[int, str, float], ...] = ()
        if params.top_logprobs and out.top_ids is not None and out.top_logprobs is not None:
            pairs = zip(out.top_ids[row][: params.top_logprobs], out.top_logprobs[row], strict=False)
            top = tuple((t, self._piece(t), lp) for t, lp in pairs)
        return (TokenLogprob(token, self._piece(token), out.logprobs[row], top),)

    def _piece(self, token: int) -> str:
        return self.tokenizer.decode([token], skip_special_tokens=False)

    def _emit(self, request: Request, delta: Delta) -> None:
        """Send a delta; the request's last one carries usage and closes its stream."""
        if delta.finish_reason is not None:
            request.choices_left -= 1
        if request.choices_left == 0:
            usage = Usage(len(request.prompt_ids), request.completion_tokens, request.cached_tokens)
            request.stream.put(replace(delta, usage=usage))
            self._ending.append(request.stream)
            del self.requests[request.request_id]
        else:
            request.stream.put(delta)
