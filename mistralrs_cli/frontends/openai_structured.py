"""OpenAI request shapes for structured output and tools: `response_format`, `tools`, `tool_choice`, tool calls."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic.json_schema import SkipJsonSchema

from mistralrs_cli.frontends.openai_base import OpenAIModel

# OpenAI's rule for function and schema names.
Name = Annotated[str, Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]
JsonSchema = dict[str, Any]
# Fields of a response the SDKs echo back when a client appends the assistant message it got
# (message.model_dump()); they carry nothing the next answer depends on, so they are accepted.
Echoed = SkipJsonSchema[Any]


class JsonSchemaFormat(OpenAIModel):
    """`response_format.json_schema`: the schema the answer must match."""

    name: Name
    description: str | None = None
    # `schema` would shadow BaseModel.schema; the alias keeps OpenAI's spelling on the wire.
    schema_: JsonSchema | None = Field(default=None, alias="schema", description="absent: any JSON object")
    strict: bool | None = Field(default=None, description="accepted; the schema is always enforced")


class ResponseFormat(OpenAIModel):
    """`response_format`: free text, any JSON object, or JSON matching a schema."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_with_its_type(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("type 'json_schema' needs a 'json_schema' object")
        if self.type != "json_schema" and self.json_schema is not None:
            raise ValueError(f"'json_schema' is only for type 'json_schema', not {self.type!r}")
        return self


class FunctionDef(OpenAIModel):
    """A function the model may call."""

    name: Name
    description: str | None = None
    parameters: JsonSchema | None = Field(default=None, description="JSON Schema of the arguments; absent: none")
    strict: bool | None = Field(default=None, description="accepted; arguments are constrained when a call is required")


class Tool(OpenAIModel):
    """One entry of `tools`."""

    type: Literal["function"]
    function: FunctionDef


class FunctionName(OpenAIModel):
    """The function a named tool_choice asks for."""

    name: Name


class NamedToolChoice(OpenAIModel):
    """`tool_choice: {"type": "function", "function": {"name": ...}}`: call exactly this function."""

    type: Literal["function"]
    function: FunctionName


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class CalledFunction(OpenAIModel):
    """A function call of an earlier assistant turn; `arguments` is a JSON object, encoded as a string."""

    name: str
    arguments: str
    parsed_arguments: Echoed = None  # the SDK's parse() helpers add it

    @field_validator("arguments")
    @classmethod
    def _json_object(cls, value: str) -> str:
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError as e:
            raise ValueError(f"arguments must be a JSON object encoded as a string ({e.msg})") from None
        if not isinstance(parsed, dict):
            raise ValueError("arguments must be a JSON object encoded as a string")
        return value

    def argument_dict(self) -> dict[str, Any]:
        """The arguments decoded (checked to be an object when the request was read)."""
        return json.loads(self.arguments)


class ToolCallItem(OpenAIModel):
    """One of an assistant message's `tool_calls`."""

    id: str
    type: Literal["function"]
    function: CalledFunction
