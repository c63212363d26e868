"""Prompt-token counting for backends that report none (JetStream, broken streams)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol


class Tokenizer(Protocol):
    """The two operations the gateway needs of a model's tokenizer."""

    def encode(self, text: str) -> list[int]: ...
    def decode(self, ids: Sequence[int]) -> str: ...


class SentencePieceTokenizer:
    """A sentencepiece model file named in config (``models[].tokenizer``)."""

    def __init__(self, path: str) -> None:
        import sentencepiece

        self._sp = sentencepiece.SentencePieceProcessor(model_file=path)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``."""
        return list(self._sp.encode(text))

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``."""
        return str(self._sp.decode(list(ids)))


TokenizerSource = Callable[[], "Tokenizer | None"]


SPECIAL_TOKENS = 2  # BOS and EOS a server may add around what the tokenizer counts


class TokenCounter:
    """Counts prompt tokens with the model's tokenizer, or estimates when it has none.

    Tokenizers come from sources so that one still loading (the embedded engine's) is used
    as soon as it is there.
    """

    # ~4 bytes per token is the usual figure for BPE/unigram vocabularies on English.
    BYTES_PER_TOKEN = 4

    def __init__(self) -> None:
        self._sources: dict[str, TokenizerSource] = {}

    def add(self, model: str, source: TokenizerSource) -> None:
        """Use ``source()`` as the model's tokenizer."""
        self._sources[model] = source

    def tokenizer(self, model: str) -> Tokenizer | None:
        """The model's tokenizer, if configured and ready."""
        source = self._sources.get(model)
        return source() if source is not None else None

    def count(self, model: str, text: str) -> int:
        """Prompt tokens of ``text`` for ``model`` (exact with a tokenizer, else estimated)."""
        tok = self.tokenizer(model)
        if tok is not None:
            return len(tok.encode(text))
        return max(1, (len(text.encode()) + self.BYTES_PER_TOKEN - 1) // self.BYTES_PER_TOKEN)

    def bound(self, model: str, text: str) -> int:
        """At least as many tokens as any backend will count for ``text`` (for reservations).

        With the tokenizer: its count plus the special tokens a server adds (BOS, EOS). Without:
        the UTF-8 byte count plus those, since byte-fallback vocabularies never need more
        than a token a byte; the ~4-byte estimate can be exceeded by any backend.
        """
        tok = self.tokenizer(model)
        counted = len(tok.encode(text)) if tok is not None else len(text.encode())
        return counted + SPECIAL_TOKENS
