"""OpenAI requests -> engine submissions, and engine outputs -> OpenAI response objects (serve and batch)."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, replace
from typing import Any

from mistralrs_cli.engine import (
    Delta,
    Engine,
    RequestOutput,
    RequestStream,
    SamplingParams,
    TokenLogprob,
    Usage,
)
from mistralrs_cli.errors import RequestError
from mistralrs_cli.frontends.guided_fields import OutputPlan, output_plan
from mistralrs_cli.frontends.openai_types import ChatCompletionRequest, CompletionRequest
from mistralrs_cli.frontends.tool_calls import ToolCall, finish_reason, split_text
from mistralrs_cli.frontends.tool_prompt import ToolUse, template_messages

_OPENAI_FIELDS = ("temperature", "top_p", "top_k", "min_p", "seed", "presence_penalty",
                  "frequency_penalty", "repetition_penalty", "logit_bias", "n")


def sampling_params(req: ChatCompletionRequest | CompletionRequest,
                    defaults: SamplingParams | None = None, plan: OutputPlan | None = None) -> SamplingParams:
    """SamplingParams for a request; fields it leaves unset keep `defaults` (the CLI's; none: the engine's)."""
    values: dict[str, Any] = {k: getattr(req, k) for k in _OPENAI_FIELDS if getattr(req, k) is not None}
    plan = plan or output_plan(req)
    if plan.guide is not None:
        values["guide"] = plan.guide
    limit = req.token_limit()
    if limit is not None:
        values["max_tokens"] = limit
    values["stop"] = req.stop
    if isinstance(req, ChatCompletionRequest):
        if req.top_logprobs and not req.logprobs:
            raise RequestError("top_logprobs requires logprobs: true")
        values["logprobs"] = bool(req.logprobs)
        values["top_logprobs"] = req.top_logprobs or 0
    elif req.logprobs is not None:
        values["logprobs"] = True
        values["top_logprobs"] = req.logprobs
    return replace(defaults or SamplingParams(), **values)  # re-validated: RequestError if invalid


def extensions(req: ChatCompletionRequest | CompletionRequest) -> dict[str, Any]:
    """Extension fields passed through to the engine (e.g. xlora_scalings)."""
    return {"xlora_scalings": True} if req.xlora_scalings else {}


@dataclass
class ChatJob:
    """A submitted chat request: its stream, and the tools whose calls its answer may hold."""

    stream: RequestStream
    tools: ToolUse | None


def submit_chat(engine: Engine, req: ChatCompletionRequest, defaults: SamplingParams | None = None) -> ChatJob:
    """Queue a chat request; raises RequestError for invalid values (FieldError naming the field, for constraints)."""
    plan = output_plan(req)
    params = sampling_params(req, defaults, plan)
    # The template renders the tools itself when it can; otherwise a system message describes them.
    native = engine.template_takes_tools
    messages = template_messages(req.messages, plan.tools, native)
    tools = [t.model_dump(exclude_none=True) for t in plan.tools.offered()] if plan.tools and native else None
    try:
        stream = engine.submit(messages=messages, params=params, request_id=new_id("chatcmpl"),
                               extensions=extensions(req), tools=tools)
    except RequestError as e:
        raise plan.field_error(e) from None
    return ChatJob(stream, plan.tools)


def submit_completions(engine: Engine, req: CompletionRequest,
                       defaults: SamplingParams | None = None) -> list[RequestStream]:
    """Queue one engine request per prompt of a completions request (all or none: a bad prompt aborts the rest)."""
    plan = output_plan(req)
    params = sampling_params(req, defaults, plan)
    streams: list[RequestStream] = []
    try:
        for p in req.prompts():
            streams.append(engine.submit(p, params=params, request_id=new_id("cmpl"), extensions=extensions(req)))
    except RequestError as e:
        for stream in streams:
            stream.abort()
        raise plan.field_error(e) from None
    except BaseException:
        for stream in streams:
            stream.abort()
        raise
    return streams


def new_id(prefix: str) -> str:
    """An OpenAI-style object id."""
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage_dict(usage: Usage | None) -> dict[str, int] | None:
    """OpenAI's usage object."""
    if usage is None:
        return None
    return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens}


def sum_usage(usages: list[Usage | None]) -> dict[str, int]:
    """Usage of several engine requests added up (a completions request with many prompts)."""
    p = sum(u.prompt_tokens for u in usages if u)
    c = sum(u.completion_tokens for u in usages if u)
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def chat_logprobs(items: list[TokenLogprob] | tuple[TokenLogprob, ...] | None) -> dict[str, Any] | None:
    """Chat-completions logprobs: {"content": [{token, logprob, bytes, top_logprobs}]}."""
    if items is None:
        return None

    def entry(token: str, logprob: float) -> dict[str, Any]:
        return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}

    return {"content": [
        {**entry(t.token, t.logprob), "top_logprobs": [entry(s, lp) for _, s, lp in t.top]} for t in items
    ]}


def completion_logprobs(items: list[TokenLogprob] | tuple[TokenLogprob, ...] | None, offset: int = 0) -> dict[str, Any] | None:
    """Legacy completions logprobs: tokens, token_logprobs, top_logprobs, text_offset."""
    if items is None:
        return None
    offsets, pos = [], offset
    for t in items:
        offsets.append(pos)
        pos += len(t.token)
    return {
        "tokens": [t.token for t in items],
        "token_logprobs": [t.logprob for t in items],
        "top_logprobs": [{s: lp for _, s, lp in t.top} for t in items],
        "text_offset": offsets,
    }


def chat_response(out: RequestOutput, model: str, extra: dict[str, Any] | None = None,
                  tools: ToolUse | None = None) -> dict[str, Any]:
    """A `chat.completion` object; with `tools`, each choice's calls are parsed out of its text."""
    return {
        "id": out.request_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [_chat_choice(c.index, c.text, c.finish_reason, c.logprobs, tools) for c in out.choices],
        "usage": usage_dict(out.usage),
        **(extra or {}),
    }


def _chat_choice(index: int, text: str, reason: str | None, logprobs: Any, tools: ToolUse | None) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if tools is not None:
        content, calls, _ = split_text(text, tools.names)
        message["content"] = content
        if calls:
            message["tool_calls"] = [c.as_message() for c in calls]
        reason = finish_reason(reason, calls)
    return {"index": index, "message": message, "logprobs": chat_logprobs(logprobs), "finish_reason": _finish(reason)}


def completion_response(outs: list[RequestOutput], model: str, echo_prompts: list[str] | None = None) -> dict[str, Any]:
    """A `text_completion` object; choices of prompt i come at indices i*n .. i*n+n-1."""
    choices = []
    for i, out in enumerate(outs):
        prefix = echo_prompts[i] if echo_prompts else ""
        for c in out.choices:
            choices.append({"index": i * len(out.choices) + c.index, "text": prefix + c.text,
                            "logprobs": completion_logprobs(c.logprobs, len(prefix)),
                            "finish_reason": _finish(c.finish_reason)})
    return {"id": outs[0].request_id if outs else new_id("cmpl"), "object": "text_completion",
            "created": int(time.time()), "model": model, "choices": choices,
            "usage": sum_usage([o.usage for o in outs])}


def chat_chunk(rid: str, model: str, created: int, delta: Delta, first: bool,
               calls: list[tuple[int, ToolCall]] | None = None) -> dict[str, Any]:
    """One `chat.completion.chunk` for a streamed delta (and the tool calls, (index, call), it completed)."""
    body: dict[str, Any] = {"content": delta.text} if delta.text or not (delta.finish_reason or calls) else {}
    if first:
        body = {"role": "assistant", **body, "content": delta.text}
    if calls:
        body["tool_calls"] = [call.as_delta(i) for i, call in calls]
    return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": delta.index, "delta": body, "logprobs": chat_logprobs(delta.logprobs),
                         "finish_reason": _finish(delta.finish_reason)}]}


def completion_chunk(rid: str, model: str, created: int, delta: Delta, index: int) -> dict[str, Any]:
    """One streamed `text_completion` chunk."""
    return {"id": rid, "object": "text_completion", "created": created, "model": model,
            "choices": [{"index": index, "text": delta.text, "logprobs": completion_logprobs(delta.logprobs),
                         "finish_reason": _finish(delta.finish_reason)}]}


def usage_chunk(rid: str, model: str, created: int, obj: str, usage: dict[str, int] | None,
                **fields: Any) -> dict[str, Any]:
    """A chunk with no choices: the final one carrying usage when stream_options.include_usage is
    set, or (usage None) one carrying extension `fields` once every choice has ended."""
    return {"id": rid, "object": obj, "created": created, "model": model, "choices": [], "usage": usage, **fields}


def _finish(reason: str | None) -> str | None:
    # OpenAI knows stop/length; an aborted choice is reported as stopped.
    return "stop" if reason == "abort" else reason


def xlora_field(engine: Engine, outs: list[RequestOutput]) -> dict[str, Any]:
    """The `xlora_scalings` extension: per choice, the per-token layer-mean scalings of every adapter."""
    return xlora_scalings_of(engine, [out.request_id for out in outs], len(outs[0].choices) if outs else 1)


def xlora_scalings_of(engine: Engine, request_ids: list[str], n: int) -> dict[str, Any]:
    """`xlora_field` by request ids (`n` choices each): choice k of request i has index i*n + k."""
    choices = []
    for i, request_id in enumerate(request_ids):
        for index, record in sorted(engine.scalings(request_id).items()):
            choices.append({"index": i * n + index, **record.as_json()})
    return {"xlora_scalings": choices}
