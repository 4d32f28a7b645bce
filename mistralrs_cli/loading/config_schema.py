"""Schemas (pydantic) for the config.json fields we read, and one-line messages for their errors.

Every field the loader reads is typed and bounded here, so a bad value (a string size, NaN,
Infinity, a negative epsilon, a config that is not an object) ends in one ConfigError naming the
file and the field, never in a traceback from deep inside the model build. Fields we do not read
are ignored. Bounds are far above any real model and only stop values that would hang or
overflow the build (a million layers, a 2^40-wide embedding).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

MAX_DIM = 2**24  # widths, vocabulary, heads: real models stay below 2^18
MAX_LAYERS = 1024  # real models stay below 200; a million layers would hang the build
MAX_POSITIONS = 2**31 - 1

Dim = Annotated[int, Field(ge=1, le=MAX_DIM)]
Positive = Annotated[float, Field(gt=0)]
TokenId = Annotated[int, Field(ge=0, le=2**31 - 1)]

# Pydantic marks which member of a union an error came from with the member's type name.
_UNION_TAGS = ("int", "float", "str", "bool", "none", "list", "dict")


class Strict(BaseModel):
    """Base: exact JSON types (no "64" for 64, no true for 1), finite floats, unknown keys ignored."""

    model_config = ConfigDict(strict=True, extra="ignore", allow_inf_nan=False, frozen=True)


class RopeScaling(Strict):
    """`rope_scaling` (or transformers 5's `rope_parameters`): only the keys we use are typed."""

    model_config = ConfigDict(extra="allow")
    rope_type: str | None = None
    type: str | None = None
    rope_theta: Positive | None = None
    factor: Positive | None = None
    low_freq_factor: Positive | None = None
    high_freq_factor: Positive | None = None
    original_max_position_embeddings: Annotated[int, Field(ge=1, le=MAX_POSITIONS)] | None = None


class HFConfig(Strict):
    """The fields of a transformers config.json (Mistral/Llama) that ModelConfig reads."""

    architectures: list[str] | None = None
    model_type: str | None = None
    vocab_size: Dim
    hidden_size: Dim
    intermediate_size: Dim
    num_hidden_layers: Annotated[int, Field(ge=1, le=MAX_LAYERS)]
    num_attention_heads: Dim
    num_key_value_heads: Dim | None = None
    head_dim: Dim | None = None
    max_position_embeddings: Annotated[int, Field(ge=1, le=MAX_POSITIONS)] = 4096
    rms_norm_eps: Positive = 1e-5
    rope_theta: Positive | None = None
    rope_scaling: RopeScaling | None = None
    rope_parameters: RopeScaling | None = None
    partial_rotary_factor: Annotated[float, Field(gt=0, le=1)] = 1.0
    sliding_window: Annotated[int, Field(ge=0, le=MAX_POSITIONS)] | None = None
    use_sliding_window: bool | None = None
    tie_word_embeddings: bool | None = None
    attention_bias: bool | None = None
    mlp_bias: bool | None = None
    hidden_act: str = "silu"
    bos_token_id: TokenId | None = None
    eos_token_id: TokenId | list[TokenId] | None = None


def validate_dict(schema: type[Strict], raw: Any, where: str, error: type[Exception], what: str) -> Any:
    """`schema` parsed from `raw`; any problem raises `error` with a one-line message naming the field.

    `what` names the file kind ("config.json") for the not-an-object case.
    """
    if not isinstance(raw, dict):
        raise error(f"{where}: {what} must be a JSON object, got {json_kind(raw)} {_short(raw)}")
    try:
        return schema.model_validate(raw)
    except ValidationError as e:
        raise error(f"{where}: {describe(e)}") from None


def describe(e: ValidationError) -> str:
    """The first problem of a validation error as 'field: what is wrong (got value)'."""
    errors = e.errors()
    first = errors[0]
    # Of a union's several complaints about the same field, the deepest says the most.
    same = [x for x in errors if x["loc"][:1] == first["loc"][:1]]
    err = max(same, key=lambda x: len(field_path(x["loc"])))
    path = field_path(err["loc"]) or "(top level)"
    if err["type"] == "missing":
        return f"missing required field {path!r}"
    msg = err["msg"]
    msg = msg[0].lower() + msg[1:]
    return f"invalid {path}: {msg} (got {_short(err.get('input'))})"


def field_path(loc: tuple[Any, ...]) -> str:
    """`rope_scaling.factor` / `eos_token_id.1` from a pydantic error location, union tags dropped."""
    parts = [
        str(p)
        for p in loc
        if not (isinstance(p, str) and (p in _UNION_TAGS or "[" in p or p.startswith(("constrained-", "function-"))))
    ]
    return ".".join(parts)


def json_kind(value: Any) -> str:
    """The JSON name of a parsed value's type ("an array", "null"...), for messages."""
    kinds = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return "null" if value is None else kinds.get(type(value), type(value).__name__)


def _short(value: Any) -> str:
    text = repr(value).replace("\n", " ")
    return text if len(text) <= 60 else text[:57] + "..."
