"""What a run records: one ``Outcome`` per request, and how many were outstanding over time."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class Outcome:
    """One request as the client saw it. Seconds; ``sent_s`` and ``finished_s`` count from the
    start of the rate's run, the latencies from when the request went out."""

    sent_s: float
    asked_tokens: int  # max_tokens
    input_tokens: int  # the dataset's prompt length, for when usage reports none
    finished_s: float | None = None
    e2e_s: float = 0.0
    ttft_s: float | None = None  # to the first chunk with text
    itl_s: list[float] = field(default_factory=list)  # between chunks with text
    chunks: int = 0  # chunks with text
    prompt_tokens: int | None = None  # from the usage chunk
    output_tokens: int | None = None  # from the usage chunk
    error: str | None = None  # "http 503 backend_overloaded", "timeout", "connection", ...
    backend: str | None = None  # x-tollgate-backend
    metered_usd: float | None = None  # the gateway's provisional cost of this request
    cancelled: bool = False  # cut when the run stopped early

    @property
    def ok(self) -> bool:
        """Answered in full."""
        return self.finished_s is not None and self.error is None and not self.cancelled

    @property
    def tokens(self) -> int:
        """Output tokens: as the usage chunk reports them, else the chunks with text."""
        return self.output_tokens if self.output_tokens is not None else self.chunks

    @property
    def tpot_s(self) -> float | None:
        """Mean seconds per output token after the first (vLLM's TPOT)."""
        if self.ttft_s is None or self.tokens < 2:
            return None
        return (self.e2e_s - self.ttft_s) / (self.tokens - 1)


@dataclass(frozen=True, slots=True)
class Sample:
    """Requests outstanding at one moment: sent and unanswered, and waiting for a slot under
    ``--max-concurrency``."""

    t_s: float
    in_flight: int
    backlog: int

    @property
    def outstanding(self) -> int:
        """All requests that have arrived and are not answered yet."""
        return self.in_flight + self.backlog


@dataclass(frozen=True, slots=True)
class Saturation:
    """Why a rate was judged more than the endpoint can serve, and when."""

    at_s: float
    reason: str


@dataclass(slots=True)
class RateRun:
    """One rate's run: every request, the outstanding count over the arrivals, the wall time
    (first send to last answer, or to the early stop)."""

    rate: float
    duration_s: float
    scheduled: int
    outcomes: list[Outcome]
    samples: list[Sample]
    wall_s: float
    saturation: Saturation | None = None
    stopped_early: bool = False
