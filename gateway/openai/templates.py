"""Chat templates the gateway applies for text-only backends, chosen per model in config."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from adapters.base import ChatMessage


@dataclass(frozen=True, slots=True)
class ChatTemplate:
    """Renders messages into one prompt; ``stops`` end the assistant's turn."""

    name: str
    render: Callable[[Sequence[ChatMessage]], str]
    stops: tuple[str, ...]


def _gemma(messages: Sequence[ChatMessage]) -> str:
    # Gemma has no system role: system text leads the first user turn. BOS is the
    # tokenizer's (or the engine's) to add, never the template's.
    system = "\n\n".join(m.content for m in messages if m.role in ("system", "developer"))
    parts: list[str] = []
    for message in messages:
        if message.role in ("system", "developer"):
            continue
        role = "model" if message.role == "assistant" else "user"
        content = message.content
        if system and role == "user":
            content, system = f"{system}\n\n{content}", ""
        parts.append(f"<start_of_turn>{role}\n{content}<end_of_turn>\n")
    if system:
        parts.insert(0, f"<start_of_turn>user\n{system}<end_of_turn>\n")
    parts.append("<start_of_turn>model\n")
    return "".join(parts)


def _chatml(messages: Sequence[ChatMessage]) -> str:
    body = "".join(f"<|im_start|>{m.role}\n{m.content}<|im_end|>\n" for m in messages)
    return body + "<|im_start|>assistant\n"


def _llama3(messages: Sequence[ChatMessage]) -> str:
    body = "".join(
        f"<|start_header_id|>{m.role}<|end_header_id|>\n\n{m.content}<|eot_id|>" for m in messages
    )
    return "<|begin_of_text|>" + body + "<|start_header_id|>assistant<|end_header_id|>\n\n"


TEMPLATES: dict[str, ChatTemplate] = {
    t.name: t
    for t in (
        ChatTemplate("gemma", _gemma, ("<end_of_turn>",)),
        ChatTemplate("chatml", _chatml, ("<|im_end|>",)),
        ChatTemplate("llama3", _llama3, ("<|eot_id|>",)),
    )
}
