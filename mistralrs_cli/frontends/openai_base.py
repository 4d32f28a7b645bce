"""The base of every OpenAI request shape: strict types, unknown fields refused, text checked for surrogates."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator


class OpenAIModel(BaseModel):
    """A request object: wrong types and unknown fields are 400s, never silently ignored."""

    # NaN/Infinity parse from JSON in Python but mean nothing as sampling values.
    # extra="forbid": a field we do not know would otherwise change nothing while the client
    # believes it changed the answer (describe_errors words it as "unknown field 'x'").
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

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
