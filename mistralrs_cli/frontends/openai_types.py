"""OpenAI request shapes (chat and completions), shared by `serve` and `batch`.

Known fields with the wrong type are rejected. OpenAI fields this server cannot honour and
that would change the answer's meaning (`tools`, `response_format`...) are rejected by name
(UNSUPPORTED), so a client never gets a silently different answer; the harmless ones in
IGNORED are accepted and ignored. Other unknown fields are ignored, as vLLM does, so
clients that send vendor extensions keep working.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
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


# Known OpenAI (and vLLM) fields that change what the answer means; each gets a 400 naming
# it until it is supported. A value that asks for nothing (null, [], tool_choice "none",
# response_format {"type": "text"}, best_of equal to n) is accepted.
UNSUPPORTED_CHAT = ("tools", "tool_choice", "functions", "function_call", "audio", "modalities", "prediction",
                    "web_search_options")
UNSUPPORTED_COMPLETION = ("suffix", "best_of")
UNSUPPORTED_ANY = ("response_format", "guided_json", "guided_regex", "guided_choice", "guided_grammar")
# Known fields accepted and ignored on purpose: they do not change the answer.
IGNORED = ("user", "metadata", "store", "service_tier", "parallel_tool_calls", "prompt_cache_key",
           "safety_identifier")
# Unsupported fields: any value accepted, checked by _refuse, left out of the OpenAPI document.
Refused = SkipJsonSchema[Any]


def _asks_nothing(name: str, value: Any, n: int) -> bool:
    if value is None or value == [] or value == {}:
        return True
    if name in ("tool_choice", "function_call"):
        return value == "none"
    if name == "response_format":
        return isinstance(value, dict) and value.get("type") == "text" and len(value) == 1
    return name == "best_of" and value == n


def _refuse(value: Any, info: ValidationInfo) -> Any:
    name = info.field_name or "field"
    if _asks_nothing(name, value, info.data.get("n") or 1):
        return None
    raise PydanticCustomError("unsupported", "'{name}' is not supported yet", {"name": name})


class _Lenient(BaseModel):
    # NaN/Infinity parse from JSON in Python but mean nothing as sampling values.
    model_config = ConfigDict(extra="ignore", strict=True, allow_inf_nan=False)

    @field_validator("*", mode="after")
    @classmethod
    def _valid_unicode(cls, value: Any) -> Any:
        # JSON may carry unpaired surrogates ("\ud800"); tokenizers cannot encode them.
        for s in value if isinstance(value, list) else (value,):
            if isinstance(s, str) and not s.isascii():
                try:
                    s.encode("utf-8")
                except UnicodeEncodeError:
                    raise ValueError("text contains an unpaired UTF-16 surrogate") from None
        return value


class ContentPart(_Lenient):
    """One part of a message's content array; only text parts are understood."""

    # Only text: dropping an image silently would answer a different question than the one asked.
    type: Literal["text", "input_text"]
    text: str | None = None


class ChatMessage(_Lenient):
    """A chat message; content may be a string or an array of parts."""

    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None

    def text(self) -> str:
        """The message's text, parts joined."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text or "" for p in self.content if p.type in TEXT_PARTS)


class StreamOptions(_Lenient):
    """`stream_options`."""

    include_usage: bool | None = False


class _Sampling(_Lenient):
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
    user: str | None = None
    # Extension: per-token mean X-LoRA scalings in the response.
    xlora_scalings: bool | None = False
    response_format: Refused = None
    guided_json: Refused = None
    guided_regex: Refused = None
    guided_choice: Refused = None
    guided_grammar: Refused = None

    _refuse_any = field_validator(*UNSUPPORTED_ANY, mode="before")(_refuse)


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
    tools: Refused = None
    tool_choice: Refused = None
    functions: Refused = None
    function_call: Refused = None
    audio: Refused = None
    modalities: Refused = None
    prediction: Refused = None
    web_search_options: Refused = None

    _refuse_chat = field_validator(*UNSUPPORTED_CHAT, mode="before")(_refuse)

    def plain_messages(self) -> list[dict[str, Any]]:
        """Messages as {role, content} dicts for the chat template (developer -> system)."""
        return [
            {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
            for m in self.messages
        ]

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
    message = "is required" if best.get("type") == "missing" else best.get("msg", "invalid value")
    return f"{param or 'request'}: {message}", param


def _branch_tag(part: str) -> bool:
    # Field names are snake_case; pydantic's tags look like "list[int]" or "constrained-str".
    return "[" in part or "-" in part or part in ("str", "int", "float", "bool", "list", "dict", "none", "literal")
