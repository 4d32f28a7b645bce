"""OpenAI request shapes (chat and completions), shared by `serve` and `batch`.

Unknown fields are ignored, as OpenAI does; known fields with the wrong type are rejected.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class ContentPart(_Lenient):
    """One part of a message's content array; only text parts are understood."""

    type: str
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
        return "".join(p.text or "" for p in self.content if p.type in ("text", "input_text"))


class StreamOptions(_Lenient):
    """`stream_options`."""

    include_usage: bool = False


class _Sampling(_Lenient):
    model: str | None = None
    max_tokens: int | None = Field(default=None)
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    n: int = 1
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    # Extension: per-token mean X-LoRA scalings in the response.
    xlora_scalings: bool = False


class ChatCompletionRequest(_Sampling):
    """POST /v1/chat/completions."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None

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

    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: int | None = None
    echo: bool = False

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


def validation_message(err: ValidationError) -> tuple[str, str | None]:
    """A one-line message and the offending parameter of a pydantic error."""
    first = err.errors()[0]
    param = ".".join(str(p) for p in first.get("loc", ()) if not isinstance(p, int)) or None
    return f"{param or 'request'}: {first.get('msg', 'invalid value')}", param
