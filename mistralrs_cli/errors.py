"""Typed, user-facing errors: each carries a one-line message and the CLI exit code it maps to."""

from __future__ import annotations


class MistralrsError(Exception):
    """Base class for errors a user can act on; the CLI prints the message and exits."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ModelSourceError(MistralrsError):
    """A model folder, Hub id, revision or weight file cannot be found or read."""


class ConfigError(MistralrsError):
    """A config.json / GGUF metadata / adapter config is missing fields or unsupported."""


class WeightError(MistralrsError):
    """Weights are missing, unreadable or do not fit the model's shapes."""


class TokenizerError(MistralrsError):
    """The tokenizer or chat template cannot be built or rendered."""


class GGUFError(MistralrsError):
    """A GGUF file is corrupt, truncated or uses an unsupported feature."""


class AdapterError(MistralrsError):
    """A LoRA / X-LoRA adapter, classifier or ordering file is invalid."""


class RequestError(MistralrsError, ValueError):
    """A generation request is invalid (bad sampling values, prompt too long...)."""


class ContextLengthError(RequestError):
    """A prompt, with room for max_tokens, is longer than the model's context."""

    def __init__(self, message: str, prompt_tokens: int, context: int) -> None:
        super().__init__(message)
        self.prompt_tokens = prompt_tokens
        self.context = context
