"""Response and stream-chunk bodies, shaped exactly as the official SDKs parse them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from adapters.base import TokenLogprob

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
        self, index: int, text: str, finish: str | None, logprobs: Logprobs | None
    ) -> dict[str, Any]:
        """A choice of a non-streamed answer."""
        if self.endpoint == "completion":
            lp = logprobs.completion_json() if logprobs is not None else None
            return {"index": index, "text": text, "logprobs": lp, "finish_reason": finish}
        return {
            "index": index,
            "message": {"role": "assistant", "content": text, "refusal": None},
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
