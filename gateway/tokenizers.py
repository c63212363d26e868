"""Prompt-token counting for backends that report none (JetStream, llama.cpp streams).

A count is what the server tokenizes: its BOS, and each control token written in the text
(a chat template's ``<start_of_turn>``) as the one token it is, not as the pieces of its
spelling. JetStream adds BOS to every prompt (0.2.2: ``is_bos = not history_path``; later:
``is_bos = not has_bos``), llama.cpp wherever the model says ``add_bos_token``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Protocol


class Tokenizer(Protocol):
    """The two operations the gateway needs of a model's tokenizer."""

    def encode(self, text: str) -> list[int]: ...
    def decode(self, ids: Sequence[int]) -> str: ...


class SentencePieceTokenizer:
    """A sentencepiece model file named in config (``models[].tokenizer``), encoding as a
    server does: BOS first (when the model has one and ``add_bos``), control tokens whole."""

    def __init__(self, path: str, *, add_bos: bool = True) -> None:
        import sentencepiece

        sp = sentencepiece.SentencePieceProcessor(model_file=path)
        self._sp = sp
        self._bos = [sp.bos_id()] if add_bos and sp.bos_id() >= 0 else []
        # Sentencepiece never emits control tokens from text: they are matched here first,
        # longest first so that one prefixing another never wins wrongly.
        specials = {
            sp.id_to_piece(i): i
            for i in range(sp.get_piece_size())
            if sp.is_control(i) or sp.is_unknown(i)
        }
        self._specials = {piece: i for piece, i in specials.items() if piece}
        names = sorted(self._specials, key=len, reverse=True)
        self._special_re = re.compile("|".join(map(re.escape, names))) if names else None

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` as the server counts them."""
        ids = list(self._bos)
        at = 0
        for match in self._special_re.finditer(text) if self._special_re else ():
            if match.start() > at:
                ids.extend(self._sp.encode(text[at : match.start()]))
            ids.append(self._specials[match.group()])
            at = match.end()
        if at < len(text):
            ids.extend(self._sp.encode(text[at:]))
        return ids

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

    def exact(self, model: str, text: str) -> int | None:
        """Prompt tokens of ``text`` as a server counts them, or None without the tokenizer."""
        tok = self.tokenizer(model)
        return len(tok.encode(text)) if tok is not None else None

    def bound(self, model: str, text: str) -> int:
        """At least as many tokens as any backend will count for ``text`` (for reservations).

        With the tokenizer: its count plus the special tokens a server adds (BOS, EOS). Without:
        the UTF-8 byte count plus those, since byte-fallback vocabularies never need more
        than a token a byte; the ~4-byte estimate can be exceeded by any backend.
        """
        tok = self.tokenizer(model)
        counted = len(tok.encode(text)) if tok is not None else len(text.encode())
        return counted + SPECIAL_TOKENS
