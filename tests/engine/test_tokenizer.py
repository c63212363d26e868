"""The rebuilt sentencepiece tokenizer gives the ids transformers' GGUF tokenizer gives."""

from __future__ import annotations

import random
from typing import Any

import pytest

from engine.tokenizer import GemmaTokenizer

CORPUS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "  two leading spaces",
    "trailing spaces   ",
    "a     b          c                                 d",
    "tabs\tand\nnewlines\n\n\n  x\r\n",
    "\n" * 40,
    "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    "for (int i = 0; i < n; ++i) { sum += a[i]; }",
    "emoji 😀🎉👨‍👩‍👧‍👦 ok",
    "中文字符和日本語のテキスト、한국어",
    "مرحبا بالعالم",
    "Здравствуй, мир!",
    "1234567890 3.14159 -42 1e-9 0x1F",
    '<div class="a">Hi &amp; bye</div><br/>',
    "<start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n",
    "<unk> <bos> <eos> <mask> [multimodal]",
    "café naïve résumé e\u0301",
    "",
    " ",
]


@pytest.mark.real_model
@pytest.mark.reference
@pytest.mark.timeout(120)
@pytest.mark.parametrize("text", CORPUS)
def test_same_ids_as_transformers(
    tokenizer: GemmaTokenizer, reference_tokenizer: Any, text: str
) -> None:
    assert tokenizer.encode(text) == reference_tokenizer.encode(text)


@pytest.mark.real_model
@pytest.mark.reference
@pytest.mark.timeout(120)
def test_random_strings_match_transformers(
    tokenizer: GemmaTokenizer, reference_tokenizer: Any
) -> None:
    rng = random.Random(1234)
    alphabet = (
        list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
        + list(" \t\n\n   .,;:!?'\"()[]{}<>/\\-_=+*&^%$#@~`|")
        + list("éüßñçøåæ中文日本語한국어العربيةрусский😀🎉✓→∑")
        + ["<start_of_turn>", "<end_of_turn>", "    ", "\n\n", "the ", "ing "]
    )
    for _ in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60)))
        assert tokenizer.encode(text) == reference_tokenizer.encode(text), repr(text)


@pytest.mark.real_model
def test_round_trip_and_special_ids(tokenizer: GemmaTokenizer) -> None:
    text = "def f(x):\n    return x  # 😀 中文\n\n\n"
    ids = tokenizer.encode(text)
    assert ids[0] == tokenizer.bos_id == 2
    assert tokenizer.decode(ids) == text
    turn = tokenizer.encode("<start_of_turn>user\nhi<end_of_turn>", add_bos=False)
    assert turn[0] == 105 and turn[-1] == 106
    assert tokenizer.decode(turn, skip_special=False) == "<start_of_turn>user\nhi<end_of_turn>"
    assert tokenizer.encode("<unk>", add_bos=False) == [3]
