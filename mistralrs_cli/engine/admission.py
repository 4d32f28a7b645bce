"""Turning what a frontend submits into a validated Request: tokenize, fit the context and the cache.

Runs in the caller's thread, so a bad request raises RequestError to the caller at once
and never reaches the engine loop. A text whose length alone shows it cannot fit the context
is refused before tokenizing (reject_oversized), so its cost is bounded by the context.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mistralrs_cli.engine.params import SamplingParams
from mistralrs_cli.errors import ContextLengthError, RequestError
from mistralrs_cli.loading.tokenizer import TextTokenizer


@dataclass(frozen=True)
class Limits:
    """What every request must fit: the context, the vocabulary and the KV pool."""

    max_model_len: int
    vocab_size: int
    truncate: bool
    num_blocks: int
    max_seqs: int
    blocks_for: Callable[[int], int]  # blocks one sequence of that many tokens holds at most


def prompt_ids(
    tokenizer: TextTokenizer,
    prompt: str | list[int] | None,
    messages: list[dict[str, Any]] | None,
    vocab_size: int,
    tools: list[Any] | None = None,
) -> list[int]:
    """Token ids of a text prompt, a list of ids, or chat messages (exactly one of them; `tools` go
    to the chat template)."""
    if (prompt is None) == (messages is None):
        raise RequestError("give exactly one of a prompt or chat messages")
    if messages is not None:
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise RequestError("messages must be a list of {role, content} objects")
        ids = tokenizer.encode_chat(messages, tools=tools)
    elif isinstance(prompt, str):
        ids = tokenizer.encode(prompt)
    else:
        ids = list(prompt)
        bad = next((t for t in ids if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < vocab_size), None)
        if bad is not None:
            raise RequestError(f"prompt token id {bad!r} is not in the vocabulary (0..{vocab_size - 1})")
    if not ids:
        raise RequestError("the prompt is empty")
    return ids


def reject_oversized(
    tokenizer: TextTokenizer,
    prompt: str | list[int] | None,
    messages: list[dict[str, Any]] | None,
    params: SamplingParams,
    limits: Limits,
    tools: list[Any] | None = None,
) -> None:
    """ContextLengthError, before any tokenizing, for a text too long for the context by its length alone."""
    bound = tokenizer.bound
    if limits.truncate or bound is None:
        return  # NOTE: --truncate-sequence keeps the end of any prompt: it must be tokenized whole
    if isinstance(prompt, str) and messages is None:
        text = prompt
    elif prompt is None and isinstance(messages, list) and all(isinstance(m, dict) for m in messages):
        text = tokenizer.render_chat(messages, tools=tools)  # cheap next to tokenizing (7 ms for 8 MB)
    else:
        return  # token ids are counted as they are; prompt_ids reports malformed requests
    room = _room(params, limits)
    least = bound.min_tokens(text)
    if least > room:
        raise ContextLengthError(_too_long(f"at least {least} tokens ({len(text)} characters)", params, limits),
                                 least, limits.max_model_len)


def _room(params: SamplingParams, limits: Limits) -> int:
    """Prompt tokens that fit while leaving room for max_tokens."""
    ctx, want = limits.max_model_len, params.max_tokens
    if want is not None and want >= ctx:
        raise RequestError(f"max_tokens {want} must be smaller than the context length {ctx}")
    return ctx - (want or 1)


def _too_long(count: str, params: SamplingParams, limits: Limits) -> str:
    return (f"the prompt has {count}; with max_tokens {params.max_tokens or 1} the context of "
            f"{limits.max_model_len} allows at most {_room(params, limits)} (shorten it or use --truncate-sequence)")


def fit_prompt(ids: list[int], params: SamplingParams, limits: Limits) -> tuple[list[int], int]:
    """(prompt ids, max_tokens) fitted to the context, truncating only when asked."""
    ctx = limits.max_model_len
    want = params.max_tokens
    room = _room(params, limits)
    if len(ids) > room:
        if not limits.truncate:
            raise ContextLengthError(_too_long(f"{len(ids)} tokens", params, limits), len(ids), ctx)
        ids = ids[len(ids) - room :]  # keep the end: the most recent turns matter most
    max_tokens = want if want is not None else ctx - len(ids)
    if params.logit_bias and max(params.logit_bias) >= limits.vocab_size:
        raise RequestError(f"logit_bias token {max(params.logit_bias)} is not in the vocabulary")
    if params.n > limits.max_seqs:
        raise RequestError(f"n={params.n} choices exceed --max-seqs {limits.max_seqs}")
    needed = limits.blocks_for(len(ids) + max_tokens) * params.n
    if needed > limits.num_blocks:
        raise RequestError(
            f"this request needs up to {needed} KV blocks but the cache has {limits.num_blocks}; "
            "lower max_tokens or n, or raise --kv-cache-mem"
        )
    return ids, max_tokens
