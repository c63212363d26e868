"""The work behind the OpenAI routes: validate, admit, route, fan out, relay, settle.

One path for every request: a ``Job`` (validated, with its generations) is admitted,
each generation is opened on the best backend with fallback before the first byte, and
the answer is relayed as SSE or folded into JSON. ``settle`` runs exactly once, also for
failures and abandoned streams.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import orjson
from opentelemetry.trace import INVALID_SPAN, Span
from starlette.responses import Response

from adapters.base import BackendError
from gateway.errors import GatewayError, error_body, http_answer
from gateway.metering.meter import Meter
from gateway.openai.generation import Generation, Piece, close_stream, open_generation
from gateway.openai.jobs import Job, JobBuilder
from gateway.openai.protocol import ChatCompletionRequest, CompletionRequest
from gateway.openai.responses import Logprobs, usage_json
from gateway.openai.streaming import DONE, EventStream, sse
from gateway.routing.policies import Objectives
from gateway.routing.router import Router
from gateway.settings import Settings
from gateway.telemetry import Telemetry
from gateway.tenancy.models import Admission, Principal, UsageRecord
from gateway.tenancy.store import Store
from gateway.tokenizers import TokenCounter

log = logging.getLogger("tollgate.serving")
T = TypeVar("T")
JSON = "application/json"


@dataclass(slots=True)
class RequestMeta:
    """Per-request facts from HTTP (ids, routing overrides), filled in for the access log."""

    request_id: str
    client_request_id: str | None = None
    policy: str | None = None
    objectives: Objectives = field(default_factory=Objectives)
    tenant: str | None = None
    model: str | None = None
    backend: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    span: Span = INVALID_SPAN  # the request's SERVER span, when tracing


@dataclass(slots=True)
class Tally:
    """A request's usage and provisional cost, computed once when it ends."""

    prompt_tokens: int
    completion_tokens: int
    cost_usd: float


class Serving:
    """Runs jobs against the router and the store; owns no HTTP details but the responses."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        router: Router,
        meter: Meter,
        telemetry: Telemetry,
        counter: TokenCounter,
    ) -> None:
        self.settings = settings
        self.store = store
        self.router = router
        self.meter = meter
        self.telemetry = telemetry
        self.counter = counter
        self.jobs = JobBuilder(settings, router, counter)
        self._settling: set[asyncio.Task[None]] = set()
        self.in_flight = 0

    # -- entry points ------------------------------------------------------------------

    async def completions(
        self, principal: Principal, body: CompletionRequest, meta: RequestMeta
    ) -> Response:
        """``POST /v1/completions``."""
        return await self._run(self.jobs.completion(principal, body, meta), meta)

    async def chat(
        self, principal: Principal, body: ChatCompletionRequest, meta: RequestMeta
    ) -> Response:
        """``POST /v1/chat/completions``."""
        return await self._run(self.jobs.chat(principal, body, meta), meta)

    # -- the one path -------------------------------------------------------------------

    async def _run(self, job: Job, meta: RequestMeta) -> Response:
        meta.tenant, meta.model = job.principal.tenant.id, job.model_id
        self.telemetry.request_started(meta.span, job)
        with self.telemetry.admitting(job.principal.tenant.id):
            admission = await self.store.admit(
                job.principal, tokens=job.reserved_tokens, cost_usd=self._worst_case(job)
            )
        self.in_flight += 1
        try:
            gens = await self._open_all(job)
        except BaseException as exc:
            self._finish(job, admission, [], _status(exc), meta)
            raise
        headers = self._headers(job, gens)
        if job.stream:
            return EventStream(self._relay(job, admission, gens, meta), headers)
        return await self._fold(job, admission, gens, meta, headers)

    def _worst_case(self, job: Job) -> float:
        names = [b.name for b in job.candidates]
        return self.meter.worst_case_cost(names, job.prompt_bound_total, job.max_tokens_total)

    async def _open_all(self, job: Job) -> list[Generation]:
        with self.telemetry.routing(job.policy) as route:
            plan = self.router.plan(
                job.candidates, job.policy, job.objectives, job.prompt_counts[0], job.max_tokens
            )
            route.ranked(plan)
        # At most ``max_attempts`` backends per generation, however many could serve it.
        plan = plan[: self.settings.routing.max_attempts]
        deadline = time.monotonic() + max(
            self.router.timeouts(b.name).first_token_s for b in job.candidates
        )

        def open_one(index: int) -> Coroutine[None, None, Generation]:
            return open_generation(
                index, plan, self.router, lambda b: self.jobs.upstream(job, index, b), deadline,
                telemetry=self.telemetry, policy=job.policy,
            )

        if len(job.requests) == 1:
            return [await open_one(0)]
        tasks = [asyncio.ensure_future(open_one(i)) for i in range(len(job.requests))]
        done = await asyncio.gather(*tasks, return_exceptions=True)
        errors = [r for r in done if isinstance(r, BaseException)]
        gens = [r for r in done if isinstance(r, Generation)]
        if errors:
            for g in gens:
                await close_stream(g.stream)
                self.router.finished(g.backend.name, ok=False, output_tokens=0, decode_s=0.0)
                g.span.end()
            raise errors[0]
        return gens

    # -- non-streamed -------------------------------------------------------------------

    async def _fold(
        self,
        job: Job,
        admission: Admission,
        gens: list[Generation],
        meta: RequestMeta,
        headers: dict[str, str],
    ) -> Response:
        env = job.envelope
        status = 200
        try:
            if len(gens) == 1:  # the common case: no task per request
                folded = [await self._collect(job, gens[0])]
            else:
                folded = await _all_or_none([self._collect(job, g) for g in gens])
        except BaseException as exc:
            status = _status(exc)
            raise
        finally:
            tally = self._finish(job, admission, gens, status, meta)
        choices = [
            env.choice(g.index, text, g.finish_reason, lp)
            for g, (text, lp) in zip(gens, folded, strict=True)
        ]
        body = env.response(choices, usage_json(tally.prompt_tokens, tally.completion_tokens))
        headers["x-tollgate-cost-usd"] = f"{tally.cost_usd:.10f}"
        return Response(orjson.dumps(body), media_type=JSON, headers=headers)

    async def _collect(self, job: Job, gen: Generation) -> tuple[str, Logprobs | None]:
        parts = [job.echo_texts[gen.index]]
        lp = Logprobs() if job.wants_logprobs else None
        async for piece in gen.pieces():
            parts.append(piece.text)
            if lp is not None and piece.logprobs:
                lp.tokens.extend(piece.logprobs)
        return "".join(parts), lp

    # -- streamed -----------------------------------------------------------------------

    async def _relay(
        self, job: Job, admission: Admission, gens: list[Generation], meta: RequestMeta
    ) -> AsyncGenerator[bytes, None]:
        env, usage_field = job.envelope, job.include_usage
        status = 499  # until the stream completes, assume the client went away
        # Events that carry no new output (role, echo, finish) ride with the next write rather
        # than costing one of their own; output is never held back.
        held = b""
        try:
            for g in gens:
                if job.endpoint == "chat":
                    held += sse(env.chunk(g.index, "", role=True, with_usage_field=usage_field))
                if job.echo_texts[g.index]:
                    held += sse(
                        env.chunk(g.index, job.echo_texts[g.index], with_usage_field=usage_field)
                    )
            async for gen, piece in _interleave(gens):
                if piece is None:
                    held += sse(
                        env.chunk(
                            gen.index,
                            None if job.endpoint == "chat" else "",
                            finish=gen.finish_reason,
                            with_usage_field=usage_field,
                        )
                    )
                else:
                    event = sse(
                        env.chunk(
                            gen.index,
                            piece.text,
                            logprobs=piece.logprobs,
                            with_usage_field=usage_field,
                        )
                    )
                    yield held + event if held else event
                    held = b""
            status = 200
            tally = self._finish(job, admission, gens, status, meta)
            if job.include_usage:
                usage = usage_json(tally.prompt_tokens, tally.completion_tokens, tally.cost_usd)
                held += sse(env.usage_chunk(usage))
            yield held + DONE
        except (BackendError, GatewayError) as exc:
            status = _status(exc)
            yield held + sse(error_body(exc)) + DONE
        finally:
            if status != 200:
                self._finish(job, admission, gens, status, meta)

    # -- settlement ---------------------------------------------------------------------

    def _finish(
        self,
        job: Job,
        admission: Admission,
        gens: Sequence[Generation],
        status: int,
        meta: RequestMeta,
    ) -> Tally:
        """Account the request once: meter, stats, ledger (async, shielded), access log."""
        if job.tally is not None:
            return job.tally
        self.in_flight -= 1
        prompt_total, completion_total, cost = 0, 0, 0.0
        counted_prompts: set[int] = set()
        for gen in gens:
            group = job.prompt_of[gen.index]
            reported = gen.usage.prompt_tokens if gen.usage is not None else None
            prompt = reported if reported is not None else job.prompt_counts[group]
            out = gen.output_tokens
            if group not in counted_prompts:
                counted_prompts.add(group)
                prompt_total += prompt
            completion_total += out
            name = gen.backend.name
            gen_cost = self.meter.provisional_cost(name, prompt, out)
            cost += gen_cost
            self.meter.observe(name, prompt, out)
            decode_s = max(0.0, (gen.ended_at or time.monotonic()) - gen.first_at)
            self.router.finished(
                name, ok=gen.error is None and status < 500, output_tokens=out, decode_s=decode_s
            )
            self.telemetry.generation_done(job, gen, prompt, out, gen_cost, decode_s)
        tally = Tally(prompt_total, completion_total, cost)
        job.tally = tally
        first = gens[0] if gens else None
        record = UsageRecord(
            request_id=admission.request_id,
            tenant=admission.tenant,
            key_id=admission.key_id,
            model=job.model_id,
            backend=first.backend.name if first else "",
            prompt_tokens=prompt_total,
            completion_tokens=completion_total,
            cost_usd=cost,
            status=status,
            started_at=admission.admitted_at,
            duration_s=time.time() - admission.admitted_at,
            ttft_s=first.ttft_s if first else None,
            client_request_id=job.client_request_id,
            weighted_tokens=self.meter.weighted_tokens(prompt_total, completion_total),
        )
        self.telemetry.request_done(meta.span, job, record, gens)
        meta.backend = record.backend
        meta.prompt_tokens, meta.completion_tokens, meta.cost_usd = (
            prompt_total,
            completion_total,
            cost,
        )
        task = asyncio.ensure_future(self._settle(admission, record))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)
        return tally

    async def _settle(self, admission: Admission, record: UsageRecord) -> None:
        try:
            await self.store.settle(admission, record)
        except Exception:  # the store spools what it cannot write; never fail the client
            log.exception("settlement of %s failed", admission.request_id)

    async def drain(self) -> None:
        """Wait for pending settlements (at shutdown)."""
        while self._settling:
            await asyncio.gather(*list(self._settling), return_exceptions=True)

    def _headers(self, job: Job, gens: Sequence[Generation]) -> dict[str, str]:
        names = dict.fromkeys(g.backend.name for g in gens)
        return {"x-tollgate-backend": ",".join(names), "x-tollgate-policy": job.policy}


async def _all_or_none(coros: Sequence[Coroutine[None, None, T]]) -> list[T]:
    """Results of all ``coros`` run concurrently; the first failure cancels the rest."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _status(exc: BaseException) -> int:
    if isinstance(exc, asyncio.CancelledError):
        return 499
    return http_answer(exc).status


async def _interleave(gens: Sequence[Generation]) -> AsyncIterator[tuple[Generation, Piece | None]]:
    """Pieces of every generation as they arrive; ``None`` marks one's end."""
    if len(gens) == 1:
        gen = gens[0]
        async for piece in gen.pieces():
            yield gen, piece
        yield gen, None
        return
    queue: asyncio.Queue[tuple[Generation, Piece | None] | BaseException] = asyncio.Queue()

    async def pump(gen: Generation) -> None:
        try:
            async for piece in gen.pieces():
                await queue.put((gen, piece))
            await queue.put((gen, None))
        except BaseException as exc:
            await queue.put(exc)

    tasks = [asyncio.ensure_future(pump(g)) for g in gens]
    try:
        remaining = len(gens)
        while remaining:
            item = await queue.get()
            if isinstance(item, BaseException):
                raise item
            if item[1] is None:
                remaining -= 1
            yield item
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
