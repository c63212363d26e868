"""Gateway-side stop sequences: the same cut for any chunking, never a partial stop leaked."""

from __future__ import annotations

from itertools import pairwise

from hypothesis import given
from hypothesis import strategies as st

from gateway.openai.streaming import StopMatcher, sse


def _expected(text: str, stops: list[str]) -> tuple[str, bool]:
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return (text[: min(hits)], True) if hits else (text, False)


def _chunked(text: str, cuts: list[int]) -> list[str]:
    points = sorted({c % (len(text) + 1) for c in cuts} | {0, len(text)})
    return [text[a:b] for a, b in pairwise(points)]


@given(
    text=st.text(alphabet="ab\n ", max_size=40),
    stops=st.lists(st.text(alphabet="ab\n ", min_size=1, max_size=4), min_size=1, max_size=3),
    cuts=st.lists(st.integers(0, 50), max_size=10),
)
def test_any_chunking_gives_the_cut_at_the_first_stop(
    text: str, stops: list[str], cuts: list[int]
) -> None:
    matcher = StopMatcher(stops)
    out = []
    for piece in _chunked(text, cuts):
        emitted = matcher.feed(piece)
        out.append(emitted)
        # Nothing emitted so far may contain a stop sequence.
        assert not any(s in "".join(out) for s in stops)
    out.append(matcher.flush())
    assert ("".join(out), matcher.stopped) == _expected(text, stops)


def test_partial_stop_is_held_until_resolved() -> None:
    matcher = StopMatcher(["</end>"])
    assert matcher.feed("hello </e") == "hello "
    assert matcher.feed("x") == "</ex"
    assert matcher.feed(" bye </en") == " bye "
    assert matcher.feed("d> trailing") == ""
    assert matcher.stopped


def test_sse_frame() -> None:
    assert sse({"a": 1}) == b'data: {"a":1}\n\n'
