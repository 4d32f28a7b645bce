"""Tokenizer wrapper over `tokenizers`, with chat rendering and an incremental detokenizer for streaming."""

from __future__ import annotations

from functools import cached_property
from typing import Any

from tokenizers import Tokenizer

from mistralrs_cli.loading.chat_template import ChatTemplate
from mistralrs_cli.loading.token_bound import TokenBound, token_bound


class TextTokenizer:
    """Encodes prompts, renders chats and decodes ids; knows the model's special tokens."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        *,
        bos_token: str | None = None,
        eos_tokens: tuple[str, ...] = (),
        unk_token: str | None = None,
        pad_token: str | None = None,
        chat_template: ChatTemplate | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.bos_token = bos_token
        self.eos_tokens = tuple(t for t in eos_tokens if t)
        self.unk_token = unk_token
        self.pad_token = pad_token
        self.chat_template = chat_template
        self.bos_token_id = self.token_to_id(bos_token)
        self.eos_token_ids = frozenset(
            i for i in (self.token_to_id(t) for t in self.eos_tokens) if i is not None
        )

    def token_to_id(self, token: str | None) -> int | None:
        """The id of a token string, or None when absent."""
        return None if token is None else self.tokenizer.token_to_id(token)

    @property
    def vocab_size(self) -> int:
        """Number of ids the tokenizer can produce (added tokens included)."""
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def add_eos_ids(self, ids: tuple[int, ...]) -> None:
        """Also stop on these ids (e.g. generation_config / config.json eos ids)."""
        self.eos_token_ids = self.eos_token_ids | frozenset(ids)

    @cached_property
    def bound(self) -> TokenBound | None:
        """A lower bound on token counts that needs no tokenizing (None when this pipeline has none)."""
        return token_bound(self.tokenizer)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of `text`; special tokens (bos) added by the tokenizer's post-processor."""
        try:
            # NOTE: encode_batch releases the GIL while it works and encode does not (8 s for
            # 8 MB of text): in a worker thread it leaves the event loop and the engine running.
            return self.tokenizer.encode_batch([text], add_special_tokens=add_special_tokens)[0].ids
        except TypeError:
            # `tokenizers` refuses strings that are not valid Unicode (lone surrogates).
            from mistralrs_cli.errors import RequestError

            raise RequestError("the text is not valid Unicode (it holds an unpaired surrogate)") from None

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        """Text of `ids`."""
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    @property
    def template_takes_tools(self) -> bool:
        """Whether the chat template renders a `tools` list itself (transformers' convention)."""
        return self.chat_template is not None and "tools" in self.chat_template.source

    def render_chat(
        self, messages: list[dict[str, Any]], add_generation_prompt: bool = True, tools: list[Any] | None = None
    ) -> str:
        """Prompt text for a chat; needs a chat template. `tools` (OpenAI's tool objects) go to the template."""
        from mistralrs_cli.errors import TokenizerError

        if self.chat_template is None:
            raise TokenizerError("this model has no chat template; pass one with -c/--chat-template")
        extra = {"tools": tools} if tools else {}
        return self.chat_template.render(messages, add_generation_prompt=add_generation_prompt, **extra)

    def encode_chat(
        self, messages: list[dict[str, Any]], add_generation_prompt: bool = True, tools: list[Any] | None = None
    ) -> list[int]:
        """Token ids of a rendered chat (as transformers: the template already holds bos)."""
        return self.encode(self.render_chat(messages, add_generation_prompt, tools), add_special_tokens=False)

    def detokenizer(self, prompt_ids: list[int] | None = None) -> IncrementalDetokenizer:
        """A streaming decoder for generated ids (prompt ids give context for leading spaces)."""
        return IncrementalDetokenizer(self, prompt_ids or [])


class IncrementalDetokenizer:
    """Turns ids into text pieces as they arrive, never splitting a multi-byte character.

    Decodes a short window ending at the newest id and emits only the text past what the
    previous window produced; holds text back while it ends in an incomplete UTF-8 sequence.
    """

    _CONTEXT = 6  # ids kept before the read offset so decoders see leading-space context

    def __init__(self, tokenizer: TextTokenizer, prompt_ids: list[int]) -> None:
        self.tok = tokenizer
        self.ids: list[int] = list(prompt_ids[-self._CONTEXT :])
        self.prefix_offset = 0
        self.read_offset = len(self.ids)

    def push(self, token_id: int) -> str:
        """Add one id; return the newly completed text (possibly empty)."""
        self.ids.append(token_id)
        prefix = self.tok.decode(self.ids[self.prefix_offset : self.read_offset])
        full = self.tok.decode(self.ids[self.prefix_offset :])
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            new = full[len(prefix) :]
            self.prefix_offset = self.read_offset
            self.read_offset = len(self.ids)
            return new
        return ""

    def flush(self) -> str:
        """Text still held back at the end of generation (e.g. a dangling partial character)."""
        prefix = self.tok.decode(self.ids[self.prefix_offset : self.read_offset])
        full = self.tok.decode(self.ids[self.prefix_offset :])
        self.prefix_offset = self.read_offset = len(self.ids)
        return full[len(prefix) :] if len(full) > len(prefix) else ""
