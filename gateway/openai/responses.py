"""Response and stream-chunk bodies, shaped exactly as the official SDKs parse them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from adapters.base import TokenLogprob, ToolCallDelta

Endpoint = Literal["completion", "chat"]


@dataclass(slots=True)
class Logprobs:
    """Logprobs of one choice, accumulated across pieces."""

    tokens: list[TokenLogprob] = field(default_factory=list)

    def completion_json(self, text_offset: int = 0) -> dict[str, Any]:
        """The legacy completions shape (parallel lists)."""
        offsets, pos = [], text_offset
        for t in self.tokens:
            offsets.append(pos)
            pos += len(t.token)
        return {
            "tokens": [t.token for t in self.tokens],
            "token_logprobs": [t.logprob for t in self.tokens],
            "top_logprobs": [dict(t.top_logprobs) if t.top_logprobs else None for t in self.tokens],
            "text_offset": offsets,
        }

    def chat_json(self) -> dict[str, Any]:
        """The chat shape (a list of token objects with their top alternatives)."""
        return {"content": [_chat_token(t) for t in self.tokens], "refusal": None}


def _chat_token(t: TokenLogprob) -> dict[str, Any]:
    top = t.top_logprobs or {}
    return {
        "token": t.token,
        "logprob": t.logprob if t.logprob is not None else 0.0,
        "bytes": list(t.token.encode()),
        "top_logprobs": [
            {"token": k, "logprob": v, "bytes": list(k.encode())} for k, v in top.items()
        ],
    }


@dataclass(slots=True)
class ToolCalls:
    """The tool calls of one choice, assembled from their streamed pieces."""

    calls: dict[int, dict[str, Any]] = field(default_factory=dict)

    def add(self, pieces: Sequence[ToolCallDelta]) -> None:
        """Pieces of calls: a new index opens a call, the rest extend its arguments."""
        for piece in pieces:
            call = self.calls.get(piece.index)
            if call is None:
                call = {"id": piece.id or "", "type": "function",
                        "function": {"name": piece.name or "", "arguments": ""}}  # fmt: skip
                self.calls[piece.index] = call
            elif piece.id and not call["id"]:
                call["id"] = piece.id
            if piece.name and not call["function"]["name"]:
                call["function"]["name"] = piece.name
            call["function"]["arguments"] += piece.arguments

    def json(self) -> list[dict[str, Any]] | None:
        """The calls in index order, as a message's ``tool_calls`` (None when there are none)."""
        return [self.calls[i] for i in sorted(self.calls)] if self.calls else None


def tool_call_chunks(pieces: Sequence[ToolCallDelta]) -> list[dict[str, Any]]:
    """Pieces of calls as a chunk's ``delta.tool_calls``: what a piece does not set is left
    out, as the SDKs' stream accumulators expect."""
    out = []
    for piece in pieces:
        function: dict[str, Any] = {"arguments": piece.arguments}
        if piece.name is not None:
            function = {"name": piece.name, **function}
        entry: dict[str, Any] = {"index": piece.index}
        if piece.id is not None:
            entry.update(id=piece.id, type="function")
        entry["function"] = function
        out.append(entry)
    return out


def usage_json(prompt: int, completion: int, cost_usd: float | None = None) -> dict[str, Any]:
    """OpenAI's usage object, with Tollgate's provisional cost when given."""
    out: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if cost_usd is not None:
        out["tollgate_cost_usd"] = round(cost_usd, 10)
    return out


@dataclass(frozen=True, slots=True)
class Envelope:
    """What every body of one response shares."""

    endpoint: Endpoint
    id: str
    created: int
    model: str

    def choice(
        self,
        index: int,
        text: str,
        finish: str | None,
        logprobs: Logprobs | None,
        tool_calls: ToolCalls | None = None,
    ) -> dict[str, Any]:
        """A choice of a non-streamed answer."""
        if self.endpoint == "completion":
            lp = logprobs.completion_json() if logprobs is not None else None
            return {"index": index, "text": text, "logprobs": lp, "finish_reason": finish}
        message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
        calls = tool_calls.json() if tool_calls is not None else None
        if calls is not None:
            message["content"] = text or None
            message["tool_calls"] = calls
        return {
            "index": index,
            "message": message,
            "logprobs": logprobs.chat_json() if logprobs is not None else None,
            "finish_reason": finish,
        }

    def response(self, choices: Sequence[dict[str, Any]], usage: dict[str, Any]) -> dict[str, Any]:
        """A whole non-streamed answer."""
        obj = "text_completion" if self.endpoint == "completion" else "chat.completion"
        return {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
            "choices": list(choices),
            "usage": usage,
        }

    def chunk(
        self,
        index: int,
        text: str | None,
        *,
        finish: str | None = None,
        logprobs: Sequence[TokenLogprob] | None = None,
        role: bool = False,
        with_usage_field: bool = False,
        tool_calls: Sequence[ToolCallDelta] | None = None,
    ) -> dict[str, Any]:
        """A streamed chunk for one choice."""
        if self.endpoint == "completion":
            lp = Logprobs(list(logprobs)).completion_json() if logprobs else None
            choice: dict[str, Any] = {
                "index": index,
                "text": text or "",
                "logprobs": lp,
                "finish_reason": finish,
            }
            obj = "text_completion"
        else:
            delta: dict[str, Any] = {}
            if role:
                delta["role"] = "assistant"
            if text is not None:
                delta["content"] = text
            if tool_calls:
                delta["tool_calls"] = tool_call_chunks(tool_calls)
            lp_chat = Logprobs(list(logprobs)).chat_json() if logprobs else None
            choice = {"index": index, "delta": delta, "logprobs": lp_chat, "finish_reason": finish}
            obj = "chat.completion.chunk"
        body: dict[str, Any] = {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
            "choices": [choice],
        }
        if with_usage_field:
            body["usage"] = None
        return body

    def usage_chunk(self, usage: dict[str, Any]) -> dict[str, Any]:
        """The final chunk of a stream that asked for usage: no choices, the usage."""
        obj = "text_completion" if self.endpoint == "completion" else "chat.completion.chunk"
        return {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
            "choices": [],
            "usage": usage,
        }
