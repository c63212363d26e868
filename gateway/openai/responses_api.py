"""Bodies and stream events of the Responses API (``/v1/responses``), as the SDKs parse them.

An answer's output is an assistant message with one ``output_text`` part (when it has text)
and a ``function_call`` item per tool call; a length cap makes the response ``incomplete``
with ``incomplete_details.reason`` ``max_output_tokens``. Streamed, each item is announced
(``response.output_item.added``) when its first piece arrives and closed at the end.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from adapters.base import ToolCallDelta
from gateway.openai.responses import ToolCalls
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
    tools: list[dict[str, Any]] = field(default_factory=list)
    tool_choice: str | dict[str, Any] = "auto"
    parallel_tool_calls: bool = True
    text_format: dict[str, Any] = field(default_factory=lambda: {"type": "text"})

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
            "parallel_tool_calls": self.parallel_tool_calls,
            "previous_response_id": None,
            "store": False,
            "temperature": self.temperature,
            "text": {"format": self.text_format},
            "tool_choice": self.tool_choice,
            "tools": self.tools,
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

    def call_item_id(self, index: int) -> str:
        """The id of the ``function_call`` item of the answer's tool call ``index``."""
        return f"fc_{self.id.removeprefix('resp_')}_{index}"

    def function_call(self, index: int, call: dict[str, Any], status: str) -> dict[str, Any]:
        """The ``function_call`` item of the answer's call ``index`` (chat's call shape in)."""
        return {
            "type": "function_call",
            "id": self.call_item_id(index),
            "call_id": call["id"],
            "name": call["function"]["name"],
            "arguments": call["function"]["arguments"],
            "status": status,
        }

    def finished(
        self, text: str, calls: ToolCalls | None, finish: str | None, usage: dict[str, Any]
    ) -> dict[str, Any]:
        """The whole answer: completed, or incomplete when ``finish`` says it was cut."""
        status = "incomplete" if finish in INCOMPLETE_REASONS else "completed"
        made = sorted(calls.calls.items()) if calls is not None else []
        output = [self.message(text, status)] if text or not made else []
        output += [self.function_call(i, call, status) for i, call in made]
        return self.response("completed", output, usage, finish)


def output_text(text: str) -> dict[str, Any]:
    """An ``output_text`` content part."""
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


class ResponseEvents:
    """The typed events of one streamed response, numbered in the order they are made."""

    def __init__(self, frame: ResponseFrame) -> None:
        self.frame = frame
        self._sequence = 0
        self._text: list[str] = []
        self._message_at: int | None = None  # output index of the message, once opened
        self._calls = ToolCalls()
        self._call_at: dict[int, int] = {}  # tool call index -> output index
        self._items = 0

    def _event(self, kind: str, **fields: Any) -> bytes:
        payload = {"type": kind, **fields, "sequence_number": self._sequence}
        self._sequence += 1
        return sse_event(kind, payload)

    def _where(self) -> dict[str, Any]:
        return {"item_id": self.frame.message_id, "output_index": self._message_at,
                "content_index": 0}  # fmt: skip

    def opening(self) -> bytes:
        """``response.created`` and ``response.in_progress``."""
        pending = self.frame.response("in_progress", [])
        return self._event("response.created", response=pending) + self._event(
            "response.in_progress", response=pending
        )

    def _open_message(self) -> bytes:
        self._message_at, self._items = self._items, self._items + 1
        item = self.frame.message("", "in_progress")
        return self._event(
            "response.output_item.added", output_index=self._message_at, item=item
        ) + self._event("response.content_part.added", **self._where(), part=output_text(""))

    def delta(self, text: str) -> bytes:
        """One ``response.output_text.delta`` (opening the message with the first)."""
        opened = self._open_message() if self._message_at is None else b""
        self._text.append(text)
        return opened + self._event(
            "response.output_text.delta", **self._where(), delta=text, logprobs=[]
        )

    def tool_calls(self, pieces: Sequence[ToolCallDelta]) -> bytes:
        """A call's ``output_item.added`` when it starts, its arguments as they come."""
        out = []
        for piece in pieces:
            self._calls.add([piece])
            at = self._call_at.get(piece.index)
            if at is None:
                at = self._call_at[piece.index] = self._items
                self._items += 1
                item = self.frame.function_call(
                    piece.index, self._calls.calls[piece.index], "in_progress"
                )
                item["arguments"] = ""
                out.append(self._event("response.output_item.added", output_index=at, item=item))
            if piece.arguments:
                out.append(self._event(
                    "response.function_call_arguments.delta",
                    item_id=self.frame.call_item_id(piece.index),
                    output_index=at, delta=piece.arguments,
                ))  # fmt: skip
        return b"".join(out)

    def closing(self, finish: str | None, usage: dict[str, Any]) -> bytes:
        """Each item's done events, then ``response.completed`` (or ``incomplete``)."""
        frame, text = self.frame, "".join(self._text)
        opened = b""
        if self._message_at is None and not self._call_at:  # an empty answer: an empty message
            opened = self._open_message()
        final = frame.finished(text, self._calls, finish, usage)
        items = {item["id"]: item for item in final["output"]}
        call_of = {at: index for index, at in self._call_at.items()}
        ends = [opened]
        for at in range(self._items):
            if at == self._message_at:
                item = items[frame.message_id]
                ends += [
                    self._event("response.output_text.done", **self._where(), text=text,
                                logprobs=[]),
                    self._event("response.content_part.done", **self._where(),
                                part=output_text(text)),
                ]  # fmt: skip
            else:
                item = items[frame.call_item_id(call_of[at])]
                ends.append(self._event(
                    "response.function_call_arguments.done", item_id=item["id"], output_index=at,
                    name=item["name"], arguments=item["arguments"],
                ))  # fmt: skip
            ends.append(self._event("response.output_item.done", output_index=at, item=item))
        last = "response.completed" if final["status"] == "completed" else "response.incomplete"
        ends.append(self._event(last, response=final))
        return b"".join(ends)

    def error(self, error: dict[str, Any]) -> bytes:
        """The ``error`` event, from the body of OpenAI's error envelope."""
        return self._event(
            "error", code=error.get("code"), message=error["message"], param=error.get("param")
        )
