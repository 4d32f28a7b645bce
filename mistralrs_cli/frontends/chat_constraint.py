"""Chat's output constraint: `--json-schema FILE` / `--regex PATTERN`, and the REPL's /schema and /regex.

A constraint is read and checked here (file, JSON, an object, and llguidance's grammar check,
which needs no model: a bad one fails before the model loads); compiling it against the model's
tokenizer is the engine's word (`EngineChatBackend.check_guide`), asked once when it is set.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from mistralrs_cli.engine import Guide
from mistralrs_cli.engine.guided import grammar_error
from mistralrs_cli.errors import RequestError

SCHEMA_FLAG, REGEX_FLAG = "--json-schema", "--regex"


@dataclass(frozen=True)
class Constraint:
    """A guide for every answer, with what the user gave for it (the schema file or the pattern)."""

    guide: Guide
    source: str

    @property
    def flag(self) -> str:
        """The command-line flag that sets this kind of constraint."""
        return SCHEMA_FLAG if self.guide.kind == "json_schema" else REGEX_FLAG

    @property
    def kind_name(self) -> str:
        """How messages name the kind: "JSON Schema" or "regex"."""
        return "JSON Schema" if self.guide.kind == "json_schema" else "regex"

    def describe(self) -> str:
        """One line for the REPL: "JSON Schema from FILE" or "regex PATTERN"."""
        return f"JSON Schema from {self.source}" if self.guide.kind == "json_schema" else f"regex {self.source}"

    def located(self, reason: str) -> str:
        """A reason about this constraint, led by the schema file (a regex's reason quotes the pattern itself)."""
        return f"{self.source}: {reason}" if self.guide.kind == "json_schema" else reason

    def incomplete(self) -> str:
        """What a "length" finish means for a constrained answer (the engine keeps the partial text)."""
        return f"the answer reached the length limit before its {self.kind_name} was complete: it is cut short and does not match"

    def flag_error(self, reason: str) -> str:
        """A reason as the command line reports it: "--json-schema FILE: ..." or "--regex: ..."."""
        return f"{self.flag} {self.located(reason)}" if self.guide.kind == "json_schema" else f"{self.flag}: {reason}"


def schema_constraint(path: str) -> Constraint:
    """The JSON Schema held in the file at `path` (as the user typed it); RequestError, one line, if it cannot be."""
    try:
        text = Path(path).expanduser().read_text(encoding="utf-8")
    except OSError as e:
        raise RequestError(f"{path}: cannot read it ({e.strerror or e})") from None
    except UnicodeDecodeError:
        raise RequestError(f"{path}: cannot read it (not UTF-8 text)") from None
    try:
        schema = json.loads(text)
    except json.JSONDecodeError as e:
        raise RequestError(f"{path}: not JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    if not isinstance(schema, dict):
        raise RequestError(f"{path}: a JSON Schema must be a JSON object, got {_json_type(schema)}")
    return Constraint(_checked(Guide("json_schema", schema), f"{path}: "), path)


def regex_constraint(pattern: str) -> Constraint:
    """A regex constraint (Rust regex syntax, matched against the whole answer)."""
    if not pattern:
        raise RequestError("the regex must not be empty")
    return Constraint(_checked(Guide("regex", pattern), ""), pattern)


def flags_constraint(json_schema: Path | None, regex: str | None) -> Constraint | None:
    """The constraint of chat's `--json-schema` / `--regex` flags (at most one); RequestError led by the flag."""
    if json_schema is not None and regex is not None:
        raise RequestError(f"{SCHEMA_FLAG} and {REGEX_FLAG}: give only one")
    if json_schema is not None:
        try:
            return schema_constraint(str(json_schema))
        except RequestError as e:  # the reason starts with the file: "--json-schema FILE: ..."
            raise RequestError(f"{SCHEMA_FLAG} {e.message}") from None
    if regex is not None:
        try:
            return regex_constraint(regex)
        except RequestError as e:
            raise RequestError(f"{REGEX_FLAG}: {e.message}") from None
    return None

def _checked(guide: Guide, lead: str) -> Guide:
    """`guide`, once llguidance's model-free check passed; RequestError with the engine's wording if not."""
    try:
        reason = grammar_error(guide.grammar())
    except RequestError as e:
        raise RequestError(lead + e.message) from None
    if reason is not None:
        raise RequestError(f"{lead}invalid {guide.kind.replace('_', ' ')}: {reason}")
    return guide


def _json_type(value: object) -> str:
    names = {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)
