"""The shared SSE reader, Prometheus reader and error-body reader."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from adapters._batch import DeltaBatch
from adapters._errors import read_error
from adapters._prometheus import mean, parse_metrics, total
from adapters._sse import SSEDecoder, sse_data
from adapters.base import TokenLogprob


async def _lines(*lines: str) -> AsyncIterator[str]:
    for line in lines:
        yield line


@pytest.mark.anyio
async def test_sse_tolerates_spacing_comments_and_multiline_data() -> None:
    lines = _lines(
        ":keep-alive", "", 'data:{"a":1}', "", "data: x", "data: y", "event: e", "", "data: cut"
    )
    assert [d async for d in sse_data(lines)] == ['{"a":1}', "x\ny"]  # "cut" never ended


_BODY = (
    ':keep-alive\n\ndata:{"a":1}\r\n\r\ndata: x\rdata: y\revent: e\r\r'
    'data: "h\u00e9llo \u2028 \u4e16"\n\ndata: cut'
).encode()
_EVENTS = ['{"a":1}', "x\ny", '"h\u00e9llo \u2028 \u4e16"']


def _decode(chunks: list[bytes]) -> list[str]:
    decoder = SSEDecoder()
    return [data for chunk in chunks for data in decoder.feed(chunk)]


def test_sse_decoder_reads_whole_bodies_with_any_line_ending() -> None:
    assert _decode([_BODY]) == _EVENTS  # "cut" never ended


@pytest.mark.parametrize("size", [1, 2, 3, 7])
def test_sse_decoder_frames_the_same_however_the_body_is_chunked(size: int) -> None:
    # Cuts fall inside lines, inside UTF-8 sequences and between "\r" and "\n".
    chunks = [_BODY[i : i + size] for i in range(0, len(_BODY), size)]
    assert _decode(chunks) == _EVENTS


def test_sse_decoder_keeps_a_crlf_split_across_chunks_one_line_ending() -> None:
    assert _decode([b"data: a\r", b"\n", b"\r", b"\ndata: b\r", b"\r"]) == ["a", "b"]


def test_prometheus_reader_sums_and_filters_by_label() -> None:
    text = (
        "# HELP nv_trt_llm_request_metrics x\n"
        'nv_trt_llm_request_metrics{model="t",request_type="waiting",version="1"} 4\n'
        'nv_trt_llm_request_metrics{model="t",request_type="active",version="1"} 2\n'
        'jetstream_slots_used_percentage{id="a b,c",idx="0"} 0.5\n'
        'jetstream_slots_used_percentage{id="a",idx="1"} 0.25 1700000000\n'
        "unrelated_metric 9\n"
    )
    names = ["nv_trt_llm_request_metrics", "jetstream_slots_used_percentage"]
    samples = parse_metrics(text, names)
    assert total(samples, "nv_trt_llm_request_metrics", request_type="waiting") == 4
    assert mean(samples, "jetstream_slots_used_percentage") == 0.375
    assert total(samples, "unrelated_metric") is None


@pytest.mark.parametrize(
    ("raw", "message", "param"),
    [
        (b'{"error": {"message": "m", "param": "p"}}', "m", "p"),
        (b'{"object": "error", "message": "m", "param": null}', "m", None),
        (b'{"error": "m", "error_type": "validation"}', "m", None),
        (b"<html>bad gateway</html>", "<html>bad gateway</html>", None),
    ],
)
def test_error_bodies(raw: bytes, message: str, param: str | None) -> None:
    said = read_error(raw)
    assert (said.message, said.param) == (message, param)


def test_delta_batch_merges_one_read_in_order_and_starts_over() -> None:
    batch = DeltaBatch()
    assert batch.take() is None
    batch.add("Hel", 1, [TokenLogprob("Hel", -0.1)])
    batch.add("", 1, [TokenLogprob("<eos>", -0.2)])  # a special token: counted, no text
    batch.add("lo", 1, [TokenLogprob("lo", -0.3)])
    delta = batch.take()
    assert delta is not None
    assert (delta.text, delta.tokens) == ("Hello", 3)
    assert [lp.token for lp in delta.logprobs or ()] == ["Hel", "<eos>", "lo"]
    assert batch.take() is None
    batch.add("x", 1)
    again = batch.take()
    assert again is not None
    assert (again.text, again.tokens, again.logprobs) == ("x", 1, None)
