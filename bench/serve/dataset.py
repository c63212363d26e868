"""What each request asks: synthetic prompts of chosen lengths, or a JSONL file of requests.

Synthetic prompts are common English words, each one token in the usual tokenizers (checked
against Gemma's), so a prompt of N tokens is N - 1 words and the BOS token. Nothing is
downloaded: no tokenizer, no data set.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import orjson

LengthDist = Literal["fixed", "uniform", "lognormal"]
LENGTH_DISTS: tuple[LengthDist, ...] = ("fixed", "uniform", "lognormal")

_WORD_TEXT = """
time year people way day man thing woman life child world school state family student group
country problem hand part place case week company system program question work government number
night point home water room mother area money story fact month lot right study book eye job word
business issue side kind head house service friend father power hour game line end member law car
city community name president team minute idea kid body information back parent face others level
office door health person art war history party result change morning reason research girl guy
moment air teacher force education be have do say get make go know take see come think look want
give use find tell ask feel try leave call good new first last long great little own other old big
high different small large next early young important few public bad same able open wide green
blue red black white light dark river stone road and the of to in for on with at by from up about
into over after under again then there here when where why how all each both more most some such
only just also very well even still never always often sun moon star tree bird fish horse dog cat
garden field forest hill sea rain snow wind fire summer winter
"""
WORDS = tuple(_WORD_TEXT.split())


@dataclass(frozen=True, slots=True)
class Prompt:
    """One request's content: a completion prompt or chat messages, and its ``max_tokens``."""

    max_tokens: int
    text: str | None = None
    messages: tuple[dict[str, Any], ...] | None = None
    input_tokens: int = 0  # the length aimed at (synthetic), or a word count (a file)


Dataset = Callable[[int], Prompt]  # request number -> what it asks; the same number, the same


def draw_length(rng: random.Random, dist: LengthDist, mean: int, spread: float) -> int:
    """One length around ``mean``: ``uniform`` within +-spread of it, ``lognormal`` with sigma
    ``spread`` (same mean, capped at 4x it)."""
    if dist == "fixed":
        return mean
    if dist == "uniform":
        return max(1, round(rng.uniform(mean * (1 - spread), mean * (1 + spread))))
    mu = math.log(mean) - spread * spread / 2  # so that the mean, not the median, is ``mean``
    return max(1, min(4 * mean, round(rng.lognormvariate(mu, spread))))


@dataclass(frozen=True, slots=True)
class Synthetic:
    """Random-word prompts; request ``i``'s lengths and words depend only on ``seed`` and ``i``."""

    input_len: int = 1024
    output_len: int = 1024
    dist: LengthDist = "fixed"
    spread: float = 0.5
    seed: int = 0

    def __call__(self, i: int) -> Prompt:
        rng = random.Random(f"{self.seed}:{i}")
        n_in = draw_length(rng, self.dist, self.input_len, self.spread)
        n_out = draw_length(rng, self.dist, self.output_len, self.spread)
        text = " ".join(rng.choices(WORDS, k=max(1, n_in - 1)))
        return Prompt(max_tokens=n_out, text=text, input_tokens=n_in)

    def describe(self) -> str:
        """One line for the report."""
        spread = "" if self.dist == "fixed" else f", spread {self.spread:g}"
        return (f"synthetic: {self.input_len} tokens in, {self.output_len} out "
                f"({self.dist}{spread}, seed {self.seed})")


class DatasetError(ValueError):
    """A dataset file that cannot be used, with the line at fault."""


class RequestFile:
    """Requests from a JSONL file, in an order shuffled by ``seed``, cycled when a run needs
    more than the file holds."""

    def __init__(self, path: str, prompts: Sequence[Prompt], seed: int = 0) -> None:
        self.path = path
        self.prompts = list(prompts)
        self._order = list(range(len(self.prompts)))
        random.Random(seed).shuffle(self._order)

    def __call__(self, i: int) -> Prompt:
        return self.prompts[self._order[i % len(self._order)]]

    def describe(self) -> str:
        """One line for the report."""
        return f"{self.path}: {len(self.prompts)} requests"


def read_jsonl(path: str | Path, *, chat: bool) -> list[Prompt]:
    """``{"prompt", "max_tokens"}`` or ``{"messages", "max_tokens"}`` per line; messages need
    the chat endpoint."""
    prompts = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            prompts.append(_prompt(orjson.loads(line), chat=chat))
        except (orjson.JSONDecodeError, TypeError, ValueError) as exc:
            raise DatasetError(f"{path}:{n}: {exc}") from None
    if not prompts:
        raise DatasetError(f"{path}: no requests")
    return prompts


def _prompt(row: Any, *, chat: bool) -> Prompt:
    if not isinstance(row, dict):
        raise ValueError("each line must be a JSON object")
    max_tokens = row.get("max_tokens")
    if not isinstance(max_tokens, int) or max_tokens < 1:
        raise ValueError("max_tokens must be a positive integer")
    if isinstance(row.get("prompt"), str):
        return Prompt(max_tokens, text=row["prompt"], input_tokens=len(row["prompt"].split()))
    messages = row.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ValueError('each line needs "prompt" (a string) or "messages" (a list)')
    if not chat:
        raise ValueError('"messages" needs --endpoint chat')
    words = sum(len(str(m.get("content", "")).split()) for m in messages if isinstance(m, dict))
    return Prompt(max_tokens, messages=tuple(messages), input_tokens=words)
