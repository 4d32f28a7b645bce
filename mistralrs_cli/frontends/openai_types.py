"""OpenAI request shapes (chat and completions), shared by `serve` and `batch`.

Known fields with the wrong type are rejected, and so are unknown fields ("unknown field 'x'"):
a client must never get a silently different answer than it asked for. Known OpenAI fields this
server cannot honour (`audio`, `suffix`...) are refused by name (UNSUPPORTED, "'x' is not
supported yet"); the harmless ones in IGNORED are accepted and ignored. The vendor extensions
we do honour are fields like any other: top_k, min_p, repetition_penalty, xlora_scalings, and
vLLM's guided_json / guided_regex / guided_grammar / guided_choice.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import (
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
)
from pydantic.json_schema import SkipJsonSchema
from pydantic_core import PydanticCustomError

from mistralrs_cli.engine.params import MAX_TOP_LOGPROBS
from mistralrs_cli.frontends.openai_base import OpenAIModel
from mistralrs_cli.frontends.openai_structured import (
    Echoed,
    ResponseFormat,
    Tool,
    ToolCallItem,
    ToolChoice,
)

TEXT_PARTS = ("text", "input_text")


def _integral(value: Any) -> Any:
    # JSON has one number type: 16.0 is an integer to JSON Schema and to JavaScript clients.
    # Strings and booleans still fail the strict int check.
    return int(value) if isinstance(value, float) and value.is_integer() else value


# Bounds on the fields below mirror SamplingParams' checks so the OpenAPI document states
# them; the engine still validates everything (chat reaches it without these models).
# NOTE: the bounds go before the validator, or pydantic leaves them out of the JSON schema.
Int = Annotated[int, BeforeValidator(_integral)]
PositiveInt = Annotated[int, Field(ge=1), BeforeValidator(_integral)]
NonNegInt = Annotated[int, Field(ge=0), BeforeValidator(_integral)]
TopLogprobs = Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS), BeforeValidator(_integral)]
TokenId = NonNegInt
Penalty = Annotated[float | None, Field(ge=-2.0, le=2.0)]
# {"token id": bias}: OpenAI sends ids as JSON object keys. The schema is spelled out because
# pydantic's own (patternProperties) would still allow keys that are not ids.
LogitBias = Annotated[
    dict[Annotated[str, Field(pattern=r"^[0-9]+$")], Annotated[float, Field(ge=-100.0, le=100.0)]],
    WithJsonSchema({"type": "object", "propertyNames": {"pattern": "^[0-9]+$"},
                    "additionalProperties": {"type": "number", "minimum": -100, "maximum": 100}}),
]


# Known OpenAI fields that change what the answer means; each gets a 400 naming it until it
# is supported. A value that asks for nothing (null, [], function_call "none", best_of equal
# to n) is accepted.
UNSUPPORTED_CHAT = ("functions", "function_call", "audio", "modalities", "prediction", "web_search_options")
UNSUPPORTED_COMPLETION = ("suffix", "best_of")
# Known fields accepted and ignored on purpose: they do not change the answer.
IGNORED = ("user", "metadata", "store", "service_tier", "prompt_cache_key", "safety_identifier")
# Unsupported fields: any value accepted, checked by _refuse, left out of the OpenAPI document.
Refused = SkipJsonSchema[Any]


def _asks_nothing(name: str, value: Any, n: int) -> bool:
    if value is None or value == [] or value == {}:
        return True
    if name == "function_call":
        return value == "none"
    return name == "best_of" and value == n


def _refuse(value: Any, info: ValidationInfo) -> Any:
    name = info.field_name or "field"
    if _asks_nothing(name, value, info.data.get("n") or 1):
        return None
    raise PydanticCustomError("unsupported", "'{name}' is not supported yet", {"name": name})


class ContentPart(OpenAIModel):
    """One part of a message's content array; only text parts are understood."""

    # Only text: dropping an image silently would answer a different question than the one asked.
    type: Literal["text", "input_text"]
    text: str | None = None


class ChatMessage(OpenAIModel):
    """A chat message; content may be a string or an array of parts.

    An assistant turn may carry the `tool_calls` it made (content null); a `tool` turn answers
    one of them by `tool_call_id`.
    """

    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallItem] | None = None
    tool_call_id: str | None = None
    refusal: Echoed = None
    annotations: Echoed = None
    parsed: Echoed = None  # the SDK's parse() result, echoed back with the message

    def text(self) -> str:
        """The message's text, parts joined."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text or "" for p in self.content if p.type in TEXT_PARTS)


class StreamOptions(OpenAIModel):
    """`stream_options`."""

    include_usage: bool | None = False
    include_obfuscation: bool | None = None  # OpenAI's padding of stream chunks: accepted, none is added


class _Sampling(OpenAIModel):
    model: str | None = None
    max_tokens: PositiveInt | None = None
    temperature: float | None = Field(default=None, ge=0.0, description="0 = greedy.")
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: NonNegInt | None = Field(default=None, description="0 = off.")
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    n: Annotated[int, Field(ge=1, le=MAX_N), BeforeValidator(_integral)] | None = None
    stop: Annotated[str, Field(min_length=1)] | list[Annotated[str, Field(min_length=1)]] | None = None
    seed: Int | None = None
    presence_penalty: Penalty = None
    frequency_penalty: Penalty = None
    repetition_penalty: float | None = Field(default=None, gt=0.0)
    logit_bias: LogitBias | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    # Extension: per-token mean X-LoRA scalings in the response.
    xlora_scalings: bool | None = False
    # Output constraints (at most one per request; guided_fields.py turns them into a Guide).
    response_format: ResponseFormat | None = None
    guided_json: dict[str, Any] | str | None = Field(default=None, description="vLLM: a JSON Schema (or its text)")
    guided_regex: Annotated[str, Field(min_length=1)] | None = Field(default=None, description="vLLM: a regex")
    guided_grammar: Annotated[str, Field(min_length=1)] | None = Field(
        default=None, description="vLLM: a grammar, Lark (llguidance's dialect) or GBNF")
    guided_choice: Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)] | None = Field(
        default=None, description="vLLM: the answer is exactly one of these strings")
    # Accepted and ignored (IGNORED): they do not change the answer.
    user: str | None = None
    metadata: dict[str, Any] | None = None
    store: bool | None = None
    service_tier: str | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None


# As OpenAI: top_logprobs (above 0) needs logprobs: true. Stated in the schema so a client
# generated from it knows; openai_convert refuses the rest with a 400.
TOP_LOGPROBS_NEEDS_LOGPROBS = {
    "if": {"properties": {"top_logprobs": {"type": "integer", "minimum": 1}}, "required": ["top_logprobs"]},
    "then": {"properties": {"logprobs": {"const": True}}, "required": ["logprobs"]},
}
MAX_N = 128  # SamplingParams' own bound; a server publishes its --max-seqs (with_server_bounds)


class ChatCompletionRequest(_Sampling):
    """POST /v1/chat/completions."""

    model_config = ConfigDict(json_schema_extra=TOP_LOGPROBS_NEEDS_LOGPROBS)

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: PositiveInt | None = None
    logprobs: bool | None = False
    top_logprobs: TopLogprobs | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = Field(default=None, description='default "auto" when tools are given')
    parallel_tool_calls: bool | None = Field(default=None, description="default true: one or more calls per answer")
    functions: Refused = None
    function_call: Refused = None
    audio: Refused = None
    modalities: Refused = None
    prediction: Refused = None
    web_search_options: Refused = None

    _refuse_chat = field_validator(*UNSUPPORTED_CHAT, mode="before")(_refuse)

    def token_limit(self) -> int | None:
        """`max_completion_tokens` wins over the older `max_tokens`."""
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class CompletionRequest(_Sampling):
    """POST /v1/completions."""

    prompt: (
        str
        | Annotated[list[str], Field(min_length=1)]
        | Annotated[list[TokenId], Field(min_length=1)]
        | Annotated[list[Annotated[list[TokenId], Field(min_length=1)]], Field(min_length=1)]
    )
    logprobs: TopLogprobs | None = None
    echo: bool | None = False
    suffix: Refused = None
    best_of: Refused = None

    _refuse_completion = field_validator(*UNSUPPORTED_COMPLETION, mode="before")(_refuse)

    def prompts(self) -> list[str | list[int]]:
        """Every prompt in the request (a string, token ids, or lists of either)."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if p and all(isinstance(x, int) for x in p):
            return [p]  # type: ignore[list-item]
        return list(p)  # type: ignore[arg-type]

    def token_limit(self) -> int | None:
        """Completions default to 16 tokens in OpenAI's API."""
        return self.max_tokens if self.max_tokens is not None else 16


def with_server_bounds(doc: dict[str, Any], max_seqs: int) -> dict[str, Any]:
    """The OpenAPI document with this server's real bound on `n` (--max-seqs, at most 128), in place."""
    schemas = doc.get("components", {}).get("schemas", {})
    for name in ("ChatCompletionRequest", "CompletionRequest"):
        field = schemas.get(name, {}).get("properties", {}).get("n", {})
        for branch in field.get("anyOf", [field]):
            if branch.get("type") == "integer":
                branch["maximum"] = min(max_seqs, MAX_N)
    return doc


def validation_message(err: ValidationError) -> tuple[str, str | None]:
    """A one-line message and the offending parameter of a pydantic error."""
    return describe_errors(err.errors())


def describe_errors(errors: Sequence[Any], skip: tuple[str, ...] = ()) -> tuple[str, str | None]:
    """(message, param) for the most specific of pydantic's errors.

    For a union (`content: str | list[ContentPart]`) pydantic reports every branch; the one
    whose location goes deepest is the branch the client meant. `skip` drops location parts
    such as FastAPI's "body".
    """
    if not errors:
        return "invalid request", None
    # Deepest first; at equal depth a failed constraint says more than a type mismatch.
    best = max(errors, key=lambda e: (len(e.get("loc", ())), not str(e.get("type", "")).endswith("_type")))
    # Drop list positions and union-branch tags ("str", "list[ContentPart]") from the path.
    names = [str(p) for p in best.get("loc", ()) if isinstance(p, str) and p not in skip and not _branch_tag(p)]
    param = ".".join(names) or None
    if best.get("type") == "unsupported":
        return best["msg"], param  # already names the field
    if best.get("type") == "extra_forbidden":
        return f"unknown field '{param}'", param
    message = "is required" if best.get("type") == "missing" else best.get("msg", "invalid value")
    message = message.removeprefix("Value error, ")  # our own validators' reasons, as they wrote them
    return f"{param or 'request'}: {message}", param


def _branch_tag(part: str) -> bool:
    # Field names are snake_case; pydantic's tags look like "list[int]", "constrained-str" or a
    # model's class name ("NamedToolChoice").
    return ("[" in part or "-" in part or part[:1].isupper()
            or part in ("str", "int", "float", "bool", "list", "dict", "none", "literal"))
