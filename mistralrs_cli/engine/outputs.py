"""What the engine hands back to frontends: streamed deltas, final outputs, usage and counters."""

from __future__ import annotations

from dataclasses import dataclass, field

from mistralrs_cli.errors import MistralrsError

# Why a choice ended: a stop token or string, max_tokens / the context, an abort, or an
# error of that choice alone (the model produced non-finite logits for it).
FINISH_STOP, FINISH_LENGTH, FINISH_ABORT, FINISH_ERROR = "stop", "length", "abort", "error"


class EngineError(MistralrsError):
    """The engine failed while running a request (the model raised), or it is shut down."""


@dataclass(frozen=True)
class TokenLogprob:
    """Log-probability (log_softmax of the raw logits) of one token and, if asked, its top rivals."""

    token_id: int
    token: str
    logprob: float
    top: tuple[tuple[int, str, float], ...] = ()  # (id, text, logprob), best first


@dataclass(frozen=True)
class Usage:
    """Token counts for a whole request (all n choices together), as OpenAI reports them."""

    prompt_tokens: int
    completion_tokens: int
    cached_prompt_tokens: int = 0  # prompt tokens served from the prefix cache

    @property
    def total_tokens(self) -> int:
        """Prompt plus completion tokens."""
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class Delta:
    """New output of one choice after one engine step.

    `text` holds back only what could still be the start of a stop string; `token_ids` and
    `logprobs` are the tokens sampled in this step (stop tokens are never included).
    `finish_reason` is set on the choice's last delta; `usage` on the request's last delta;
    `error` says why when the finish reason is "error".
    """

    index: int
    text: str = ""
    token_ids: tuple[int, ...] = ()
    logprobs: tuple[TokenLogprob, ...] | None = None
    finish_reason: str | None = None
    stop_reason: str | int | None = None  # the stop string or stop token id that matched
    usage: Usage | None = None
    error: str | None = None


@dataclass
class Choice:
    """One finished (or aborted) completion of a request, assembled from its deltas."""

    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None
    finish_reason: str | None = None
    stop_reason: str | int | None = None
    error: str | None = None  # why, when finish_reason is "error"

    def add(self, delta: Delta) -> None:
        """Append one delta of this choice."""
        self.text += delta.text
        self.token_ids.extend(delta.token_ids)
        if delta.logprobs is not None:
            self.logprobs = (self.logprobs or []) + list(delta.logprobs)
        if delta.finish_reason is not None:
            self.finish_reason, self.stop_reason = delta.finish_reason, delta.stop_reason
            self.error = delta.error


@dataclass
class RequestOutput:
    """All choices of a request and its usage, once the request has finished."""

    request_id: str
    choices: list[Choice]
    usage: Usage | None = None

    @property
    def text(self) -> str:
        """The first choice's text (the common n=1 case)."""
        return self.choices[0].text


@dataclass(frozen=True)
class EngineStats:
    """Counters a frontend can show (/stats, the server's metrics, bench)."""

    running: int = 0
    waiting: int = 0
    kv_blocks_total: int = 0
    kv_blocks_used: int = 0
    kv_block_bytes: int = 0
    steps: int = 0
    preemptions: int = 0
    prompt_tokens_computed: int = 0  # prompt tokens run through the model, recomputation included
    prefix_cache_hit_tokens: int = 0
    generated_tokens: int = 0

    @property
    def kv_bytes_used(self) -> int:
        """Bytes of KV cache held by live sequences."""
        return self.kv_blocks_used * self.kv_block_bytes

    @property
    def kv_bytes_total(self) -> int:
        """Bytes of the whole KV pool."""
        return self.kv_blocks_total * self.kv_block_bytes
