"""What each real server should answer, known without the adapter under test.

JetStream's mock engine is arithmetic, so its answers are computed here from its source;
llama.cpp's are asked of the server itself, unstreamed and at temperature 0, over plain
HTTP: the adapter's stream must fold into the same text, finish and token counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

# jetstream/engine/mock_utils.py (TestVocab) and core/config_lib.py (get_test_engine), 0.2.2
_BOS = 2
_PREFILL_WEIGHT = 2
_MAX_PREFILL = 32  # cache_length: longer prompts keep their last 32 tokens
_EXACT = 2**24  # float32 holds the engine's sums exactly below this


@dataclass(frozen=True)
class Answer:
    """A whole answer: text, why it ended, and the server's own token counts."""

    text: str
    finish: str
    completion_tokens: int
    prompt_tokens: int | None = None  # None: the server reports none


def jetstream_mock(prompt: str, max_tokens: int) -> Answer:
    """JetStream 0.2.2's ``TestEngine`` under its ``InterleavedCPUTestServer``.

    Characters are tokens (``ord``), BOS prepended; prefill multiplies them by 2; step n
    emits ``prefill sum + (sum of the n tokens before) / 2``, i.e. ``S * 1.5**n``, decoded
    with ``chr``. No EOS is ever sampled, so every answer ends at ``max_tokens``. Past
    U+10FFFF ``chr`` raises inside the server's detokenizing thread, which kills it: a
    request that would get there is refused here instead.
    """
    ids = ([_BOS] + [ord(c) for c in prompt])[-_MAX_PREFILL:]
    prefill = _PREFILL_WEIGHT * sum(ids)
    values: list[float] = []
    for _ in range(max_tokens):
        values.append(prefill + sum(values) / 2)
    if any(v >= _EXACT or v > 0x10FFFF or 0xD800 <= v <= 0xDFFF for v in values):
        raise ValueError(f"the mock engine cannot answer {prompt!r} with {max_tokens} tokens")
    return Answer("".join(chr(int(v)) for v in values), "length", max_tokens)


def llama_cpp(url: str, body: dict[str, Any]) -> Answer:
    """The server's own unstreamed answer to ``body`` (``/v1/completions`` or chat)."""
    path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
    response = httpx.post(f"{url}{path}", json={**body, "stream": False}, timeout=60)
    response.raise_for_status()
    answer = response.json()
    choice = answer["choices"][0]
    text = choice["message"]["content"] if "messages" in body else choice["text"]
    usage = answer["usage"]
    return Answer(
        text or "", choice["finish_reason"], usage["completion_tokens"], usage["prompt_tokens"]
    )
