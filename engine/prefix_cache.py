"""The prefix cache's host side: which token blocks have KV in the device pool, LRU-evicted.

A block is ``block_tokens`` prompt tokens; its key is a chained hash of every token up to its end
(vLLM's scheme), so a key names one whole prefix and a match is always a prefix of the prompt. The
KV itself lives in the engine's pool, one pool row per block; this index only maps keys to rows.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PrefixCacheStats:
    """Prompt tokens looked up in the cache, and how many of them it served."""

    prompt_tokens: int = 0
    cached_tokens: int = 0
    blocks_used: int = 0
    blocks: int = 0

    @property
    def hit_rate(self) -> float:
        """Prompt tokens served from the cache / prompt tokens (0 before any prompt)."""
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0


class PrefixIndex:
    """Chained block hashes -> pool rows, least recently used first."""

    def __init__(self, blocks: int, block_tokens: int) -> None:
        self.blocks = blocks
        self.block_tokens = block_tokens
        self._rows: OrderedDict[bytes, int] = OrderedDict()
        self._free = list(range(blocks - 1, -1, -1))
        self.prompt_tokens = 0
        self.cached_tokens = 0

    def keys(self, tokens: Sequence[int]) -> list[bytes]:
        """The chained key of each full block of ``tokens``."""
        size = self.block_tokens
        keys: list[bytes] = []
        parent = b""
        for start in range(0, len(tokens) - size + 1, size):
            block = np.asarray(tokens[start : start + size], np.int64).tobytes()
            parent = hashlib.blake2b(parent + block, digest_size=16).digest()
            keys.append(parent)
        return keys

    def match(self, tokens: Sequence[int]) -> list[int]:
        """Pool rows of the longest cached block prefix leaving at least one token to compute."""
        usable = (len(tokens) - 1) // self.block_tokens
        rows: list[int] = []
        for key in self.keys(tokens[: usable * self.block_tokens]):
            row = self._rows.get(key)
            if row is None:
                break
            rows.append(row)
        return rows

    def record(self, prompt_tokens: int, cached_tokens: int) -> None:
        """Count one prompt's lookup for the hit rate."""
        self.prompt_tokens += prompt_tokens
        self.cached_tokens += cached_tokens

    def admit(self, tokens: Sequence[int]) -> tuple[list[int], list[int]]:
        """Make room for the full blocks of ``tokens`` that are not cached yet.

        Returns (block indices in the prompt, pool rows to write them to). Every block of the
        prompt becomes most recently used, parents after children, so eviction takes a chain's
        leaves first (a child without its parent could never match).
        """
        keys = self.keys(tokens)[: self.blocks]
        for key in keys:  # this prompt's cached blocks go to the back: never evicted for it
            if key in self._rows:
                self._rows.move_to_end(key)
        missing = [i for i, key in enumerate(keys) if key not in self._rows]
        rows: list[int] = []
        for i in missing:
            row = self._free.pop() if self._free else self._rows.popitem(last=False)[1]
            self._rows[keys[i]] = row
            rows.append(row)
        for key in reversed(keys):
            self._rows.move_to_end(key)
        return missing, rows

    def stats(self) -> PrefixCacheStats:
        """Counts so far (read from other threads: a racy but consistent-enough snapshot)."""
        return PrefixCacheStats(
            self.prompt_tokens, self.cached_tokens, len(self._rows), self.blocks
        )
