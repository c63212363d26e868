"""Which backend most likely still holds a prompt's prefix in its KV cache.

Engines with prefix caching (vLLM's automatic prefix caching, TGI 3, the embedded engine) skip
the prefill of a prompt's leading blocks when they computed the same blocks recently. The
router cannot see their caches, so, as llm-d's and the GKE Inference Gateway's endpoint
pickers do, it estimates them from what it sent where: each backend keeps a least-recently-
used set of the prompt blocks it was sent, bounded like the cache it mirrors. A prompt's
blocks are chained hashes of fixed-size pieces of its text, so block ``i`` matching means
the whole prefix up to it matches.

The match becomes prompt tokens the backend will not prefill: its predicted TTFT and its
marginal cost fall by what the cache saves, and the policy trades that against load and
price like any other difference between backends.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

BLOCK_CHARS = 256  # ~64 tokens of English: coarse enough to hash cheaply, fine enough to match
DEFAULT_BLOCKS = 8192  # ~0.5M tokens of prefixes remembered per backend


@dataclass(frozen=True, slots=True)
class PromptBlocks:
    """A prompt's leading full blocks (chained hashes) and its length in characters."""

    hashes: tuple[int, ...]
    chars: int

    @classmethod
    def of(cls, text: str) -> PromptBlocks:
        """The blocks of ``text`` (a partial last block is never shared: it is left out)."""
        hashes: list[int] = []
        chained = 0
        for start in range(0, len(text) - BLOCK_CHARS + 1, BLOCK_CHARS):
            chained = hash((chained, text[start : start + BLOCK_CHARS]))
            hashes.append(chained)
        return cls(tuple(hashes), len(text))

    def cached_tokens(self, blocks: int, prompt_tokens: int) -> int:
        """The prompt tokens ``blocks`` leading blocks stand for (a share of the whole)."""
        if not blocks or not self.chars:
            return 0
        return max(0, min(prompt_tokens - 1, prompt_tokens * blocks * BLOCK_CHARS // self.chars))


class PrefixIndex:
    """Per backend, the prompt blocks it was sent most recently, at most ``capacity`` each."""

    def __init__(self, capacity: int = DEFAULT_BLOCKS) -> None:
        self.capacity = capacity
        self._held: dict[str, OrderedDict[int, None]] = {}

    def matched(self, backend: str, prompt: PromptBlocks) -> int:
        """How many of ``prompt``'s leading blocks ``backend`` was sent and likely still holds."""
        held = self._held.get(backend)
        if not held:
            return 0
        count = 0
        for block in prompt.hashes:
            if block not in held:
                break
            count += 1
        return count

    def sent(self, backend: str, prompt: PromptBlocks) -> None:
        """``backend`` was sent ``prompt``: its blocks are now the freshest it holds."""
        if not prompt.hashes:
            return
        held = self._held.setdefault(backend, OrderedDict())
        for block in prompt.hashes:
            if block in held:
                held.move_to_end(block)
            else:
                held[block] = None
        while len(held) > self.capacity:
            held.popitem(last=False)
