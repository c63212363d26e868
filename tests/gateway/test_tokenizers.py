"""Prompt-token counts: estimates for billing where nothing counts, bounds for reservations."""

from __future__ import annotations

import pytest

from gateway.tokenizers import TokenCounter

pytestmark = pytest.mark.timeout(10)


@pytest.mark.parametrize("text", ["x " * 2000, "数据" * 500, "🙂" * 300, "a"])
def test_the_reservation_bound_covers_what_a_byte_fallback_tokenizer_can_count(text: str) -> None:
    counter = TokenCounter()  # no tokenizer configured for the model
    bound = counter.bound("m", text)
    assert bound >= len(text.encode()) + 1  # every byte a token, and a BOS
    assert counter.count("m", text) <= bound  # the billing estimate stays the ~4-byte one


def test_with_the_models_tokenizer_the_bound_is_its_count_plus_special_tokens() -> None:
    class Words:
        def encode(self, text: str) -> list[int]:
            return [0] * len(text.split())

    counter = TokenCounter()
    counter.add("m", lambda: Words())  # type: ignore[arg-type,return-value]
    assert counter.count("m", "one two three") == 3
    assert counter.bound("m", "one two three") == 5
