"""Bodies and stream events of the Responses API (``/v1/responses``), as the SDKs parse them.

One answer is one assistant message with one ``output_text`` part; a length cap makes the
response ``incomplete`` with ``incomplete_details.reason`` ``max_output_tokens``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gateway.openai.streaming import sse_event

# Chat finish reasons that end a response early, as the Responses API names them.
INCOMPLETE_REASONS = {"length": "max_output_tokens", "content_filter": "content_filter"}


def responses_usage(prompt: int, completion: int, cost_usd: float | None = None) -> dict[str, Any]:
    """The Responses usage object, with Tollgate's provisional cost when given."""
    out: dict[str, Any] = {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + completion,
    }
    if cost_usd is not None:
        out["tollgate_cost_usd"] = round(cost_usd, 10)
    return out


@dataclass(frozen=True, slots=True)
class ResponseFrame:
    """What every body of one response shares: its ids and the request's echoed settings."""

    id: str
    message_id: str
    created_at: int
    model: str
    instructions: str | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    user: str | None = None

    def response(
        self,
        status: str,
        output: list[dict[str, Any]],
        usage: dict[str, Any] | None = None,
        finish: str | None = None,
    ) -> dict[str, Any]:
        """The Response object in ``status`` (``incomplete`` when ``finish`` cut it short)."""
        reason = INCOMPLETE_REASONS.get(finish or "")
        if reason is not None:
            status = "incomplete"
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "error": None,
            "incomplete_details": {"reason": reason} if reason else None,
            "instructions": self.instructions,
            "max_output_tokens": self.max_output_tokens,
            "metadata": self.metadata,
            "model": self.model,
            "output": output,
            "parallel_tool_calls": False,
            "previous_response_id": None,
            "store": False,
            "temperature": self.temperature,
            "text": {"format": {"type": "text"}},
            "tool_choice": "none",
            "tools": [],
            "top_p": self.top_p,
            "truncation": "disabled",
            "usage": usage,
            "user": self.user,
        }

    def message(self, text: str, status: str) -> dict[str, Any]:
        """The assistant message item holding ``text``."""
        return {
            "type": "message",
            "id": self.message_id,
            "status": status,
            "role": "assistant",
            "content": [output_text(text)] if status != "in_progress" else [],
        }

    def finished(self, text: str, finish: str | None, usage: dict[str, Any]) -> dict[str, Any]:
        """The whole answer: completed, or incomplete when ``finish`` says it was cut."""
        status = "incomplete" if finish in INCOMPLETE_REASONS else "completed"
        return self.response("completed", [self.message(text, status)], usage, finish)


def output_text(text: str) -> dict[str, Any]:
    """An ``output_text`` content part."""
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


class ResponseEvents:
    """The typed events of one streamed response, numbered in the order they are made."""

    def __init__(self, frame: ResponseFrame) -> None:
        self.frame = frame
        self._sequence = 0
        self._text: list[str] = []

    def _event(self, kind: str, **fields: Any) -> bytes:
        payload = {"type": kind, **fields, "sequence_number": self._sequence}
        self._sequence += 1
        return sse_event(kind, payload)

    def _where(self) -> dict[str, Any]:
        return {"item_id": self.frame.message_id, "output_index": 0, "content_index": 0}

    def opening(self) -> bytes:
        """From ``response.created`` to the empty ``output_text`` part the deltas fill."""
        frame = self.frame
        pending = frame.response("in_progress", [])
        item = frame.message("", "in_progress")
        return b"".join(
            (
                self._event("response.created", response=pending),
                self._event("response.in_progress", response=pending),
                self._event("response.output_item.added", output_index=0, item=item),
                self._event("response.content_part.added", **self._where(), part=output_text("")),
            )
        )

    def delta(self, text: str) -> bytes:
        """One ``response.output_text.delta``."""
        self._text.append(text)
        return self._event("response.output_text.delta", **self._where(), delta=text, logprobs=[])

    def closing(self, finish: str | None, usage: dict[str, Any]) -> bytes:
        """From ``response.output_text.done`` to ``response.completed`` (or ``incomplete``)."""
        frame, text = self.frame, "".join(self._text)
        final = frame.finished(text, finish, usage)
        item = final["output"][0]
        last = "response.completed" if final["status"] == "completed" else "response.incomplete"
        return b"".join(
            (
                self._event("response.output_text.done", **self._where(), text=text, logprobs=[]),
                self._event("response.content_part.done", **self._where(), part=output_text(text)),
                self._event("response.output_item.done", output_index=0, item=item),
                self._event(last, response=final),
            )
        )

    def error(self, error: dict[str, Any]) -> bytes:
        """The ``error`` event, from the body of OpenAI's error envelope."""
        return self._event(
            "error", code=error.get("code"), message=error["message"], param=error.get("param")
        )
