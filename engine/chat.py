"""Gemma's chat turn format (the GGUF carries no template, so the engine states it here)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol


class Message(Protocol):
    """Anything with a role and flattened text content."""

    @property
    def role(self) -> str: ...

    @property
    def content(self) -> str: ...


_ROLES = {"user": "user", "assistant": "model", "model": "model"}


def render_gemma_chat(messages: Iterable[Message], add_generation_prompt: bool = True) -> str:
    """Render messages as Gemma turns; a system message is folded into the first user turn.

    The text carries no ``<bos>``: the engine's tokenizer adds it.
    """
    system: list[str] = []
    parts: list[str] = []
    for message in messages:
        if message.role in ("system", "developer"):
            system.append(message.content)
            continue
        role = _ROLES.get(message.role)
        if role is None:
            raise ValueError(f"Gemma has no turn for role {message.role!r}")
        content = message.content
        if system and role == "user":
            content = "\n\n".join(system) + "\n\n" + content
            system = []
        parts.append(f"<start_of_turn>{role}\n{content.strip()}<end_of_turn>\n")
    if system:  # a conversation of only system text still reaches the model
        parts.append(f"<start_of_turn>user\n{chr(10).join(system)}<end_of_turn>\n")
    if add_generation_prompt:
        parts.append("<start_of_turn>model\n")
    return "".join(parts)
