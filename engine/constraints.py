"""Constrained decoding: answers forced to be JSON valid against a schema, or JSON or free text.

Grammars are llguidance's. Before each decode step the host writes every constrained row's
allowed tokens as a bitmask (int32 ``[rows, ceil(vocab / 32)]``, token ``t`` is bit ``t % 32`` of
word ``t // 32``); the jitted step sets the logits of the others to -inf (``sampling.allow_only``).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import llguidance as llg
import llguidance.numpy as llg_numpy
import numpy as np

from engine.errors import GrammarViolation
from engine.tokenizer import GemmaTokenizer

# One-line JSON with json.dumps's separators: given free whitespace, a small model can pad forever.
JSON_LAYOUT: Mapping[str, Any] = {
    "whitespace_flexible": False,
    "item_separator": ", ",
    "key_separator": ": ",
}
ANY_OBJECT: Mapping[str, Any] = {"type": "object"}
# Free text is anything that does not open a JSON object, the empty answer included.
_TEXT_LEXEME = r"/([^{][\s\S]*)?/"


@dataclass(frozen=True, slots=True)
class Constraint:
    """What an answer must be: JSON valid against ``schema`` (any JSON object when None); with
    ``or_text``, either that JSON or free text that does not begin with '{'."""

    schema: Mapping[str, Any] | None = None
    or_text: bool = False


def compile_grammar(constraint: Constraint) -> str:
    """llguidance's grammar for ``constraint``; ``ValueError`` says what the schema gets wrong."""
    schema = ANY_OBJECT if constraint.schema is None else constraint.schema
    if not isinstance(schema, Mapping):
        raise ValueError("a JSON schema must be a JSON object")
    # Our layout wins over any "x-guidance" options the schema carries.
    laid_out = {**schema, "x-guidance": dict(JSON_LAYOUT)}
    try:
        text = json.dumps(laid_out, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise ValueError(f"the JSON schema is not JSON: {error}") from None
    grammar = llg.LLMatcher.grammar_from_json_schema(text)
    problem = llg.LLMatcher.validate_grammar(grammar)
    if problem:
        raise ValueError(f"unsupported JSON schema: {problem}")
    if not constraint.or_text:
        return grammar
    lark = "\n".join(
        (
            "start: json_answer | text_answer",
            f"json_answer: %json {text}",
            f"text_answer: {_TEXT_LEXEME}",
        )
    )
    grammar = llg.LLMatcher.grammar_from_lark(lark)
    problem = llg.LLMatcher.validate_grammar(grammar)
    if problem:  # the schema compiled alone, so this is ours
        raise ValueError(f"unsupported constraint: {problem}")
    return grammar


class ConstrainedAnswer:
    """One answer's place in its grammar: what may come next, and whether it is complete.

    A stop token (``<eos>``, ``<end_of_turn>``, or the request's own) is allowed exactly when the
    grammar accepts what was generated so far.
    """

    def __init__(self, matcher: llg.LLMatcher, stop_ids: frozenset[int], eos_id: int) -> None:
        self.matcher = matcher
        self._stop_ids = tuple(sorted(stop_ids))
        self._eos_id = eos_id  # the one stop llguidance itself knows

    def settle_stops(self, row: np.ndarray) -> None:
        """Fix the stop tokens' bits in this answer's freshly computed ``row`` of the mask."""
        words = row.view(np.uint32)
        _clear(words, self._eos_id)
        accepting = self.matcher.is_accepting()
        for token in self._stop_ids:
            if accepting:
                words[token >> 5] |= np.uint32(1 << (token & 31))
            else:
                _clear(words, token)

    def advance(self, token: int) -> bool:
        """Take a generated (non-stop) token; True when the grammar is complete."""
        if not self.matcher.consume_token(token):
            raise GrammarViolation(f"token {token} broke the grammar: {self.matcher.get_error()}")
        return self.matcher.is_stopped()


def _clear(words: np.ndarray, token: int) -> None:
    words[token >> 5] &= np.uint32(~(1 << (token & 31)) & 0xFFFFFFFF)


class GrammarVocabulary:
    """The engine's vocabulary as llguidance sees it: starts answers and fills their masks.

    Building it reads all 262k tokens (about 1.5 s), so that happens once, on first use or in
    ``prepare``; it is thread-safe.
    """

    def __init__(self, tokenizer: GemmaTokenizer, vocab_size: int) -> None:
        self._tokenizer = tokenizer
        self.vocab_size = vocab_size
        self._lock = threading.Lock()
        self._llg: llg.LLTokenizer | None = None
        self._executor: llg.LLExecutor | None = None

    def prepare(self) -> llg.LLTokenizer:
        """Build the llguidance tokenizer now if it is not built yet."""
        with self._lock:
            if self._llg is None:
                self._llg = llg.LLTokenizer(
                    llg.TokenizerWrapper(_GemmaVocabulary(self._tokenizer)),
                    n_vocab=self.vocab_size,
                )
                self._executor = llg.LLExecutor()
            return self._llg

    def start(self, grammar: str, stop_ids: frozenset[int]) -> ConstrainedAnswer:
        """A fresh answer for a grammar from ``compile_grammar``."""
        matcher = llg.LLMatcher(self.prepare(), grammar, log_level=0)
        if matcher.is_error():
            raise ValueError(f"unsupported constraint: {matcher.get_error()}")
        return ConstrainedAnswer(matcher, stop_ids, self._tokenizer.eos_id)

    def fill(self, rows: Sequence[tuple[ConstrainedAnswer, int]], mask: np.ndarray) -> None:
        """Write each answer's allowed tokens into its row of ``mask`` (other rows untouched)."""
        self.prepare()
        assert self._executor is not None
        matchers = [(answer.matcher, row) for answer, row in rows]
        llg_numpy.fill_next_token_bitmask_par(self._executor, matchers, mask)
        for answer, row in rows:
            answer.settle_stops(mask[row])


class _GemmaVocabulary:
    """What ``llguidance.TokenizerWrapper`` reads: each token's bytes, the specials, encoding."""

    def __init__(self, tokenizer: GemmaTokenizer) -> None:
        self._tokenizer = tokenizer
        self.eos_token_id = tokenizer.eos_id
        self.bos_token_id = tokenizer.bos_id
        self.tokens = tokenizer.token_bytes()
        self.special_token_ids = [
            token for token in range(len(self.tokens)) if tokenizer.is_special(token)
        ]

    def __call__(self, text: str | bytes) -> list[int]:
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        return self._tokenizer.encode(text, add_bos=False)
