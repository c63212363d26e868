"""The one table from upstream error answers to the taxonomy, and what a client may read."""

from __future__ import annotations

import orjson
import pytest

from adapters._errors import client_text, event_error, read_error, status_error
from adapters.base import BadRequest, Overloaded, Timeout, Unavailable
from tests.adapters.harness import LLAMA_CPP_CONTEXT_ERROR, LLAMA_CPP_VALIDATION

TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "/opt/venv/lib/python3.11/site-packages/vllm/engine/llm_engine.py", line 812, in step\n'
    "    raise RuntimeError('CUDA error: an illegal memory access at 0x7f3a')\n"
    "RuntimeError: CUDA error on node gpu-17.internal"
)


def test_a_server_crash_reads_as_unavailable_and_keeps_its_words_for_logs_only() -> None:
    body = orjson.dumps({"error": {"message": TRACEBACK, "type": "InternalServerError"}})
    error = status_error(500, {}, body, "b")
    assert type(error) is Unavailable
    assert "CUDA" not in error.message and "/opt" not in error.message
    assert error.detail is not None and "llm_engine.py" in error.detail
    assert "llm_engine.py" in str(error)  # logs and spans show it


def test_fastapi_validation_behind_a_500_is_the_clients_error_naming_the_field() -> None:
    error = status_error(500, {}, LLAMA_CPP_VALIDATION, "b")
    assert isinstance(error, BadRequest)
    assert error.param == "top_k"
    assert "valid integer" in error.message
    assert "app.py" not in error.message and "/srv" not in error.message


def test_an_upstream_refusal_keeps_its_message_param_and_openai_code() -> None:
    error = status_error(400, {}, LLAMA_CPP_CONTEXT_ERROR, "b")
    assert isinstance(error, BadRequest)
    assert (error.param, error.code) == ("messages", "context_length_exceeded")
    assert error.message.startswith("This model's maximum context length is 32 tokens")


def test_a_refusal_is_cleaned_of_paths_and_cut_short() -> None:
    said = f'bad stop: File "/srv/app/main.py", line 3, in f /usr/lib/x/y/z.so {"x" * 900}'
    text = client_text(said)
    assert "/srv" not in text and "/usr" not in text and "main.py" not in text
    assert text.startswith("bad stop:")
    assert len(text) <= 300


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (429, Overloaded),
        (503, Overloaded),
        (408, Timeout),
        (504, Timeout),
        (401, Unavailable),
        (424, Unavailable),
        (502, Unavailable),
        (404, BadRequest),
        (413, BadRequest),
        (422, BadRequest),
    ],
)
def test_statuses(status: int, expected: type[Exception]) -> None:
    error = status_error(status, {"retry-after": "3"}, b'{"error": "x"}', "b")
    assert type(error) is expected
    if isinstance(error, Overloaded):
        assert error.retry_after == 3.0


def test_an_in_stream_error_without_a_status_is_classed_by_its_type() -> None:
    client = read_error(b'{"error": {"message": "bad logit_bias", "type": "BadRequestError"}}')
    server = read_error(b'{"error": {"message": "engine died", "type": "InternalServerError"}}')
    assert isinstance(event_error(client, "b"), BadRequest)
    assert type(event_error(server, "b")) is Unavailable
    assert isinstance(event_error(server, "b", status=400), BadRequest)
