"""Errors the engine raises to its callers.

EngineError
 ├── PromptTooLong   the prompt leaves no room in the context for a completion
 ├── QueueFull       back-pressure: too many requests already wait
 ├── EngineClosed    the batch loop has stopped
 └── GrammarViolation  a chosen token left its answer's grammar (an engine fault, not the caller's)
"""

from __future__ import annotations


class EngineError(Exception):
    """Base of the engine's own failures."""


class PromptTooLong(EngineError):
    """The prompt (plus one completion token) does not fit in ``max_context``."""

    def __init__(self, prompt_tokens: int, max_context: int) -> None:
        super().__init__(
            f"prompt has {prompt_tokens} tokens; the context holds {max_context} "
            "including at least one completion token"
        )
        self.prompt_tokens = prompt_tokens
        self.max_context = max_context


class QueueFull(EngineError):
    """The bounded waiting queue is full; retry later."""


class EngineClosed(EngineError):
    """The engine was shut down."""


class GrammarViolation(EngineError):
    """A constrained answer's grammar refused the token the step chose."""
