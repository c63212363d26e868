"""Test doubles for what the gateway talks to: a scripted backend and a per-token meter.

``ScriptedBackend`` is to the ``Backend`` protocol what httpx's ``MockTransport`` is to a
transport: it speaks the interface exactly and does what each test scripts.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field

from adapters.base import (
    BackendError,
    Capabilities,
    Delta,
    GenerationRequest,
    LoadSnapshot,
    TokenLogprob,
    Usage,
)


@dataclass
class Script:
    """What the backend does for one request."""

    tokens: list[str] = field(default_factory=lambda: ["Hello", ",", " world", "!"])
    error_before: BackendError | None = None  # raised before the first token
    error_after: int | None = None  # raise ``error_mid`` after this many tokens
    error_mid: BackendError | None = None
    report_prompt_tokens: int | None = 7
    gate: asyncio.Event | None = None  # each token waits for this event when set


class ScriptedBackend:
    """A ``Backend`` whose answers come from ``script(request)``."""

    kind = "vllm"

    def __init__(
        self,
        name: str = "scripted",
        models: Mapping[str, str] | None = None,
        capabilities: Capabilities | None = None,
        script: Callable[[GenerationRequest], Script] | None = None,
        healthy: bool = True,
    ) -> None:
        self.name = name
        self.models = dict(models or {"test-model": "upstream-test-model"})
        self.capabilities = capabilities or Capabilities(
            chat=True,
            token_prompts=True,
            echo=True,
            logprobs=5,
            stop=False,
            seed=True,
            logit_bias=True,
            penalties=True,
        )
        self.script = script or (lambda _: Script())
        self.healthy = healthy
        self.requests: list[GenerationRequest] = []
        self.cancelled = 0
        self.completed = 0

    async def generate(self, req: GenerationRequest) -> AsyncIterator[Delta]:
        """Yield the scripted tokens, one delta each, then the usage."""
        self.requests.append(req)
        script = self.script(req)
        if script.error_before is not None:
            raise script.error_before
        sent = 0
        finished = False
        try:
            if req.echo:
                yield Delta(
                    text=req.prompt or "",
                    echo=True,
                    logprobs=[TokenLogprob(req.prompt or "", None)],
                )
            for token in script.tokens[: req.max_tokens]:
                if script.gate is not None:
                    await script.gate.wait()
                if script.error_after is not None and sent >= script.error_after:
                    assert script.error_mid is not None
                    raise script.error_mid
                sent += 1
                lp = (
                    [TokenLogprob(token, -0.5, {token: -0.5})] if req.logprobs is not None else None
                )
                yield Delta(text=token, tokens=1, logprobs=lp)
            reason = "length" if sent == req.max_tokens else "stop"
            finished = True
            yield Delta(finish_reason=reason, usage=Usage(script.report_prompt_tokens, sent))
            self.completed += 1
        finally:
            if not finished:
                self.cancelled += 1

    async def probe(self) -> LoadSnapshot:
        """Healthy unless a test says otherwise."""
        return LoadSnapshot(healthy=self.healthy, running=0, waiting=0)

    async def aclose(self) -> None:
        """Nothing to release."""


class PerTokenMeter:
    """A ``Meter`` with a flat per-token price, for tests that do not exercise metering."""

    def __init__(self, usd_per_token: float = 1e-6) -> None:
        self.usd_per_token = usd_per_token
        self.observed: list[tuple[str, int, int]] = []

    def worst_case_cost(self, backends: list[str], prompt_tokens: int, max_tokens: int) -> float:
        return (prompt_tokens + max_tokens) * self.usd_per_token

    def provisional_cost(self, backend: str, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens + completion_tokens) * self.usd_per_token

    def weighted_tokens(self, prompt_tokens: int, completion_tokens: int) -> float:
        return prompt_tokens * 0.125 + completion_tokens

    def observe(self, backend: str, prompt_tokens: int, completion_tokens: int) -> None:
        self.observed.append((backend, prompt_tokens, completion_tokens))

    def instance_usd(self) -> dict[str, float]:
        return {}  # nothing is billed by the hour

    async def start(self) -> None:
        pass

    async def aclose(self) -> None:
        pass
