"""Incremental text with stop strings, on a character-level stand-in decoder."""

from __future__ import annotations

from engine.detokenize import TextAssembler


def decode(ids: list[int]) -> str:
    return "".join(chr(i) for i in ids)


def feed(assembler: TextAssembler, text: str) -> list[str]:
    return [assembler.add(ord(ch)) for ch in text]


def test_plain_text_streams_through() -> None:
    assembler = TextAssembler(decode)
    assert "".join(feed(assembler, "hello")) + assembler.finish() == "hello"


def test_partial_stop_is_held_then_released() -> None:
    assembler = TextAssembler(decode, stop=("STOP",))
    pieces = feed(assembler, "a ST")
    assert "".join(pieces) == "a "  # "ST" might begin the stop string
    assert feed(assembler, "x") == ["STx"]
    assert not assembler.stopped


def test_stop_truncates_and_hides_it() -> None:
    assembler = TextAssembler(decode, stop=("END", "\n\n"))
    out = "".join(feed(assembler, "one two\n\nthree"))
    assert out == "one two"
    assert assembler.stopped
    assert assembler.finish() == ""


def test_earliest_of_several_stops_wins() -> None:
    assembler = TextAssembler(decode, stop=("cd", "bcde"))
    assert "".join(feed(assembler, "abcdef")) == "ab"


def test_split_characters_wait_for_completion() -> None:
    raw = "é😀".encode()

    def bytes_decode(ids: list[int]) -> str:
        return bytes(ids).decode("utf-8", errors="replace")

    assembler = TextAssembler(bytes_decode)
    pieces = [assembler.add(b) for b in raw]
    assert "\ufffd" not in "".join(pieces)
    assert "".join(pieces) + assembler.finish() == "é😀"
