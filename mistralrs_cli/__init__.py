"""mistralrs: fast, correct inference for Mistral-family models (chat, batch, OpenAI-compatible serve)."""

__version__ = "0.1.0"
