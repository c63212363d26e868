"""Whether a request fits a backend's context window, decided before anything is sent.

A backend states its limits in ``Capabilities`` (``max_context``: prompt + completion;
``max_prompt``: the prompt alone), learned from the server (TGI's ``/info``, vLLM's
``/v1/models``) or given in config; a model's ``context_length`` bounds every backend. A
server past its limit may truncate the prompt silently (JetStream keeps its last tokens) or
refuse it in ways that read as its own failure, so the gateway refuses first, with OpenAI's
``context_length_exceeded``. Only exact counts refuse (the model's tokenizer, or a token
prompt): an estimate could refuse a prompt that fits. When the client gave no ``max_tokens``,
the default is cut to the room a backend has left rather than refused, as OpenAI does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from adapters.base import Backend
from gateway.errors import ContextLengthExceeded


@dataclass(frozen=True, slots=True)
class ContextFit:
    """A request's size against context windows: exact prompt tokens per prompt (None where
    only estimated), the completion asked for, and whether the client asked for it."""

    prompt_tokens: Sequence[int | None]
    max_tokens: int
    explicit: bool
    model_limit: int | None = None
    param: str = "prompt"

    def limit(self, backend: Backend) -> int | None:
        """Prompt + completion tokens ``backend`` holds for this model."""
        limits = [n for n in (backend.capabilities.max_context, self.model_limit) if n]
        return min(limits) if limits else None

    def fits(self, backend: Backend) -> bool:
        """Whether every prompt, with its completion (or at least one token), fits."""
        return all(self._fits(backend, tokens) for tokens in self.prompt_tokens)

    def _fits(self, backend: Backend, tokens: int | None) -> bool:
        if tokens is None:
            return True
        most_prompt = backend.capabilities.max_prompt
        if most_prompt is not None and tokens > most_prompt:
            return False
        limit = self.limit(backend)
        wanted = self.max_tokens if self.explicit else min(1, self.max_tokens)
        return limit is None or tokens + wanted <= limit

    def max_tokens_on(self, backend: Backend, prompt: int, asked: int) -> int:
        """The completion to ask ``backend`` for: a default cut to the room it has left."""
        tokens = self.prompt_tokens[prompt]
        limit = self.limit(backend)
        if self.explicit or tokens is None or limit is None:
            return asked
        return max(0, min(asked, limit - tokens))

    def candidates(self, backends: Sequence[Backend]) -> list[Backend]:
        """The backends the request fits; OpenAI's 400 when it fits none."""
        fitting = [b for b in backends if self.fits(b)]
        if fitting or not backends:
            return fitting
        raise self._refusal(backends)

    def _refusal(self, backends: Sequence[Backend]) -> ContextLengthExceeded:
        limits = [n for n in (self.limit(b) for b in backends) if n is not None]
        prompts = [n for n in (b.capabilities.max_prompt for b in backends) if n is not None]
        prompt = max(t for t in self.prompt_tokens if t is not None)
        where = "messages" if self.param == "messages" else "prompt"
        if limits:
            limit = max(limits)
            asked = self.max_tokens if self.explicit else 0
            message = (
                f"This model's maximum context length is {limit} tokens. However, you "
                f"requested {prompt + asked} tokens ({prompt} in the {where}, {asked} in the "
                f"completion). Please reduce the length of the {where} or completion."
            )
        else:
            message = (
                f"This model takes at most {max(prompts)} tokens of input. However, your "
                f"{where} has {prompt} tokens. Please reduce the length of the {where}."
            )
        return ContextLengthExceeded(message, param=self.param)
