"""Gemma turn format."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from engine.chat import render_gemma_chat


@dataclass
class Msg:
    role: str
    content: str


def test_turns_and_generation_prompt() -> None:
    text = render_gemma_chat([Msg("user", "Hi"), Msg("assistant", "Hello!"), Msg("user", "Bye")])
    assert text == (
        "<start_of_turn>user\nHi<end_of_turn>\n"
        "<start_of_turn>model\nHello!<end_of_turn>\n"
        "<start_of_turn>user\nBye<end_of_turn>\n"
        "<start_of_turn>model\n"
    )


def test_system_folds_into_first_user_turn() -> None:
    text = render_gemma_chat([Msg("system", "Be brief."), Msg("user", "Hi")])
    assert text.startswith("<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n")


def test_unknown_role_is_refused() -> None:
    with pytest.raises(ValueError, match="tool"):
        render_gemma_chat([Msg("tool", "x")])
