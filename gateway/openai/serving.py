"""The work behind the OpenAI routes: validate, admit, route, fan out, relay, settle.

One path for every request: a ``Job`` (validated, with its generations) is admitted,
each generation is opened on the best backend with fallback before the first byte (a
``FanOut`` runs them at most the tenant's ``max_concurrent`` at a time), and the answer is
relayed as SSE or folded into JSON. ``settle`` runs exactly once, also for failures and
abandoned streams.

Billing of fallbacks: an attempt that fails before its first token produced nothing. A
non-streamed choice whose upstream breaks mid-answer is restarted on the next backend, since
nothing has reached the client; the tenant is billed only the answer it received, and the
broken attempt's tokens go to its backend's window totals (the instance did run them, so
instance cost stays conserved: the window's cost is shared by the tenants' answers). A
request that fails in the end is billed what its choices received, as a broken stream is.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncGenerator, Coroutine, Sequence
from dataclasses import dataclass, field

import orjson
from opentelemetry.trace import INVALID_SPAN, Span
from starlette.responses import Response

from adapters.base import BackendError
from gateway.errors import GatewayError, error_body, http_answer
from gateway.metering.meter import Meter
from gateway.openai.disconnect import ClientLeft, unless_client_leaves
from gateway.openai.fanout import FanOut
from gateway.openai.generation import Generation, open_generation
from gateway.openai.jobs import Job, JobBuilder
from gateway.openai.protocol import ChatCompletionRequest, CompletionRequest, ResponsesRequest
from gateway.openai.responses import Logprobs, ToolCalls, usage_json
from gateway.openai.responses_api import ResponseEvents, responses_usage
from gateway.openai.streaming import DONE, EventStream, sse
from gateway.routing.policies import Objectives
from gateway.routing.router import Router
from gateway.settings import Settings
from gateway.telemetry import Telemetry
from gateway.tenancy.models import Admission, Principal, UsageRecord
from gateway.tenancy.store import Store
from gateway.tokenizers import TokenCounter

log = logging.getLogger("tollgate.serving")
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
    client_left: ClientLeft | None = None  # resolves when the client disconnects


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

    async def responses(
        self, principal: Principal, body: ResponsesRequest, meta: RequestMeta
    ) -> Response:
        """``POST /v1/responses``: a chat job, answered in the Responses API's shape."""
        return await self._run(self.jobs.response(principal, body, meta), meta)

    # -- the one path -------------------------------------------------------------------

    async def _run(self, job: Job, meta: RequestMeta) -> Response:
        meta.tenant, meta.model = job.principal.tenant.id, job.model_id
        self.telemetry.request_started(meta.span, job)
        with self.telemetry.admitting(job.principal.tenant.id):
            admission = await self.store.admit(
                job.principal, tokens=job.reserved_tokens, cost_usd=self._worst_case(job)
            )
        self.in_flight += 1
        fan: FanOut | None = None
        try:
            fan = self._fan_out(job)
            self.store.track(admission, functools.partial(self._progress, job, admission, fan))
            if job.stream:  # open before answering: a failure still gets its HTTP status
                await fan.open_first()
        except BaseException as exc:
            self._finish(job, admission, fan.opened if fan else [], _status(exc), meta)
            raise
        if job.stream:
            headers = self._headers(job, fan.opened)
            relay = self._relay if job.frame is None else self._relay_response
            return EventStream(relay(job, admission, fan, meta), headers)
        return await self._fold(job, admission, fan, meta)

    def _worst_case(self, job: Job) -> float:
        names = [b.name for b in job.candidates]
        return self.meter.worst_case_cost(names, job.prompt_bound_total, job.max_tokens_total)

    def _fan_out(self, job: Job) -> FanOut:
        """Route the job once; each choice walks the plan (at most ``max_attempts`` backends)
        until its deadline, the longest ``total_s`` of the candidates after it started."""
        with self.telemetry.routing(job.policy) as route:
            plan = self.router.plan(
                job.candidates, job.policy, job.objectives, job.prompt_counts[0], job.max_tokens,
                job.prompt_blocks,
            )
            route.ranked(plan)
        plan = plan[: self.settings.routing.max_attempts]
        allowed_s = max(self.router.timeouts(b.name).total_s for b in job.candidates)

        def open_choice(
            index: int, tried: int, opened_at: float | None
        ) -> Coroutine[None, None, Generation]:
            started = time.monotonic() if opened_at is None else opened_at
            return open_generation(
                index, plan, self.router, lambda b: self.jobs.upstream(job, index, b),
                started + allowed_s, telemetry=self.telemetry, policy=job.policy,
                endpoint=job.endpoint, tried=tried, opened_at=opened_at, prompt=job.prompt_blocks,
            )

        def wasted(gen: Generation, exc: BackendError) -> None:
            self._waste(job, gen, exc)

        return FanOut(len(job.requests), job.width, len(plan), open_choice, wasted)

    def _waste(self, job: Job, gen: Generation, exc: BackendError) -> None:
        """An attempt replaced by a restart: not billed (its client never saw it), but its
        tokens join the backend's window totals, since the instance did run them."""
        reported = gen.usage.prompt_tokens if gen.usage is not None else None
        prompt = reported if reported is not None else job.prompt_counts[job.prompt_of[gen.index]]
        out = gen.output_tokens
        name = gen.backend.name
        self.meter.observe(name, prompt, out)
        decode_s = max(0.0, (gen.ended_at or time.monotonic()) - gen.first_at)
        self.router.finished(name, ok=False, output_tokens=out, decode_s=decode_s)
        self.telemetry.attempt_failed(
            gen.span,
            gen.backend,
            exc,
            job.policy,
            endpoint=job.endpoint,
            model=gen.backend.models.get(job.model_id, job.model_id),
            started=gen.attempt_at,
        )

    # -- non-streamed -------------------------------------------------------------------

    async def _fold(
        self, job: Job, admission: Admission, fan: FanOut, meta: RequestMeta
    ) -> Response:
        env = job.envelope
        status = 200
        try:
            folded = await unless_client_leaves(
                fan.fold(lambda g: self._collect(job, g)), meta.client_left
            )
        except BaseException as exc:
            status = _status(exc)
            raise
        finally:
            tally = self._finish(job, admission, fan.opened, status, meta)
        gens = fan.opened
        headers = self._headers(job, gens)
        if job.frame is not None:  # one generation: a Response has no choices
            usage = responses_usage(tally.prompt_tokens, tally.completion_tokens)
            text, _, calls = folded[0]
            body = job.frame.finished(text, calls, gens[0].finish_reason, usage)
        else:
            choices = [
                env.choice(g.index, text, g.finish_reason, lp, calls)
                for g, (text, lp, calls) in zip(gens, folded, strict=True)
            ]
            body = env.response(choices, usage_json(tally.prompt_tokens, tally.completion_tokens))
        headers["x-tollgate-cost-usd"] = f"{tally.cost_usd:.10f}"
        return Response(orjson.dumps(body), media_type=JSON, headers=headers)

    async def _collect(
        self, job: Job, gen: Generation
    ) -> tuple[str, Logprobs | None, ToolCalls | None]:
        parts = [job.echo_texts[gen.index]]
        lp = Logprobs() if job.wants_logprobs else None
        calls: ToolCalls | None = None
        async for piece in gen.pieces():
            parts.append(piece.text)
            if lp is not None and piece.logprobs:
                lp.tokens.extend(piece.logprobs)
            if piece.tool_calls:
                calls = calls or ToolCalls()
                calls.add(piece.tool_calls)
        return "".join(parts), lp, calls

    # -- streamed -----------------------------------------------------------------------

    async def _relay(
        self, job: Job, admission: Admission, fan: FanOut, meta: RequestMeta
    ) -> AsyncGenerator[bytes, None]:
        env, usage_field = job.envelope, job.include_usage
        status = 499  # until the stream completes, assume the client went away
        # Events that carry no new output (role, echo, finish) ride with the next write rather
        # than costing one of their own; output is never held back.
        held = b""
        try:
            for index in range(fan.count):
                if job.endpoint == "chat":
                    held += sse(env.chunk(index, "", role=True, with_usage_field=usage_field))
                if job.echo_texts[index]:
                    held += sse(
                        env.chunk(index, job.echo_texts[index], with_usage_field=usage_field)
                    )
            async for gen, piece in fan.stream():
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
                            None if piece.tool_calls and not piece.text else piece.text,
                            logprobs=piece.logprobs,
                            with_usage_field=usage_field,
                            tool_calls=piece.tool_calls,
                        )
                    )
                    yield held + event if held else event
                    held = b""
            status = 200
            tally = self._finish(job, admission, fan.opened, status, meta)
            if job.include_usage:
                usage = usage_json(tally.prompt_tokens, tally.completion_tokens, tally.cost_usd)
                held += sse(env.usage_chunk(usage))
            yield held + DONE
        except (BackendError, GatewayError) as exc:
            status = _status(exc)
            yield held + sse(error_body(exc)) + DONE
        finally:
            if status != 200:
                self._finish(job, admission, fan.opened, status, meta)

    async def _relay_response(
        self, job: Job, admission: Admission, fan: FanOut, meta: RequestMeta
    ) -> AsyncGenerator[bytes, None]:
        """The Responses API's typed events; the opening ones ride with the first output."""
        assert job.frame is not None
        events = ResponseEvents(job.frame)
        status = 499  # until the stream completes, assume the client went away
        held = events.opening()
        finish: str | None = None
        try:
            async for gen, piece in fan.stream():
                if piece is None:
                    finish = gen.finish_reason
                    continue
                event = events.delta(piece.text) if piece.text else b""
                if piece.tool_calls:
                    event += events.tool_calls(piece.tool_calls)
                if event:
                    yield held + event if held else event
                    held = b""
            status = 200
            tally = self._finish(job, admission, fan.opened, status, meta)
            usage = responses_usage(tally.prompt_tokens, tally.completion_tokens, tally.cost_usd)
            yield held + events.closing(finish, usage)
        except (BackendError, GatewayError) as exc:
            status = _status(exc)
            yield held + events.error(error_body(exc)["error"])
        finally:
            if status != 200:
                self._finish(job, admission, fan.opened, status, meta)

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

    def _progress(self, job: Job, admission: Admission, fan: FanOut) -> UsageRecord | None:
        """What the request has received so far, for the store's periodic checkpoint (status
        0: not finished); ``None`` before any generation opened or once it is settling."""
        gens = fan.opened
        if not gens or job.tally is not None:
            return None
        prompt_total, completion_total, cost = 0, 0, 0.0
        counted_prompts: set[int] = set()
        for gen in gens:
            group = job.prompt_of[gen.index]
            reported = gen.usage.prompt_tokens if gen.usage is not None else None
            prompt = reported if reported is not None else job.prompt_counts[group]
            if group not in counted_prompts:
                counted_prompts.add(group)
                prompt_total += prompt
            completion_total += gen.output_tokens
            cost += self.meter.provisional_cost(gen.backend.name, prompt, gen.output_tokens)
        return UsageRecord(
            request_id=admission.request_id,
            tenant=admission.tenant,
            key_id=admission.key_id,
            model=job.model_id,
            backend=gens[0].backend.name,
            prompt_tokens=prompt_total,
            completion_tokens=completion_total,
            cost_usd=cost,
            status=0,
            started_at=admission.admitted_at,
            duration_s=time.time() - admission.admitted_at,
            ttft_s=gens[0].ttft_s,
            client_request_id=job.client_request_id,
            weighted_tokens=self.meter.weighted_tokens(prompt_total, completion_total),
        )

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


def _status(exc: BaseException) -> int:
    if isinstance(exc, asyncio.CancelledError):
        return 499
    return http_answer(exc).status
