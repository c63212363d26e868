"""One rate's run: requests sent at their Poisson times, watched until answered or stopped.

A watcher samples the outstanding count every ``tick_s``, redraws the progress line and, while
requests are still arriving, asks ``stats.saturation`` every ``judge_s`` whether the endpoint
keeps up; when it does not, no more requests are sent and those outstanding are cancelled
(also when that is found only as the arrivals end: such a backlog is not worth draining).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from contextlib import AbstractAsyncContextManager
from typing import Any, TextIO

import httpx

from bench.serve.dataset import Dataset, Prompt
from bench.serve.load import Target, arrivals, send
from bench.serve.records import Outcome, RateRun, Sample, Saturation
from bench.serve.stats import saturation

PROGRESS_TTY_S = 0.5  # how often the progress line is redrawn on a terminal
PROGRESS_LOG_S = 10.0  # ... or written as a new line to a file or pipe
SPEED_WINDOW_S = 2.0  # the progress line's output tokens/s is over this much time


class RateRunner:
    """Sends one rate's requests and keeps count of where they are."""

    def __init__(self, target: Target, dataset: Dataset, rate: float, duration_s: float, *,
                 seed: int = 0, max_concurrency: int | None = None, timeout_s: float = 300.0,
                 progress: TextIO | None = None, tick_s: float = 0.1,
                 judge_s: float = 0.25) -> None:
        self.target, self.dataset, self.rate, self.duration_s = target, dataset, rate, duration_s
        self.times = arrivals(rate, duration_s, seed)
        self.max_concurrency, self.timeout_s = max_concurrency, timeout_s
        self.progress, self.tick_s, self.judge_s = progress, tick_s, judge_s
        self.outcomes: list[Outcome] = []
        self.samples: list[Sample] = []
        self.in_flight = self.backlog = 0
        self.arriving = True
        self.saturation: Saturation | None = None
        self._stop = asyncio.Event()
        self._start = 0.0
        self._speed: list[tuple[float, int]] = []  # (time, chunks so far) for the progress line

    def now(self) -> float:
        """Seconds since the run began."""
        return time.perf_counter() - self._start

    async def run(self) -> RateRun:
        """Send every request (unless saturation stops it), wait for the answers."""
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
        timeout = httpx.Timeout(self.timeout_s, connect=min(10.0, self.timeout_s), pool=None)
        async with httpx.AsyncClient(base_url=self.target.url, limits=limits,
                                     timeout=timeout) as client:
            self._start = time.perf_counter()
            watcher = asyncio.create_task(self._watch())
            tasks = await self._arrive(client)
            self.arriving = False
            early = self._stop.is_set()
            if not early:  # the last word on the arrivals, as they end
                self._sample()
                self.saturation = saturation(self.samples, self.outcomes, self.rate, self.now())
            if self.saturation is not None:  # a backlog past saturation is not worth draining
                for task in tasks:
                    task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            wall = self.now()
            for outcome in self.outcomes:
                outcome.cancelled = outcome.finished_s is None
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
        self._draw(final=True)
        return RateRun(self.rate, self.duration_s, len(self.times), self.outcomes, self.samples,
                       wall, self.saturation, stopped_early=early)

    async def _arrive(self, client: httpx.AsyncClient) -> list[asyncio.Task[None]]:
        slots: AbstractAsyncContextManager[Any] = (
            asyncio.Semaphore(self.max_concurrency) if self.max_concurrency
            else contextlib.nullcontext())
        tasks = []
        for i, at in enumerate(self.times):
            delay = at - self.now()
            if delay > 0:  # the arrival process itself; a stop cuts the wait short
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)
            if self._stop.is_set():
                break
            prompt = self.dataset(i)
            outcome = Outcome(self.now(), prompt.max_tokens, prompt.input_tokens)
            self.outcomes.append(outcome)
            tasks.append(asyncio.create_task(self._request(client, slots, prompt, outcome)))
        return tasks

    async def _request(self, client: httpx.AsyncClient, slots: AbstractAsyncContextManager[Any],
                       prompt: Prompt, outcome: Outcome) -> None:
        self.backlog += 1
        waiting = True
        try:
            async with slots:
                self.backlog -= 1
                waiting = False
                self.in_flight += 1
                try:
                    await send(client, self.target, prompt, outcome)
                finally:
                    self.in_flight -= 1
            outcome.finished_s = self.now()
        finally:
            if waiting:
                self.backlog -= 1

    def _sample(self) -> None:
        self.samples.append(Sample(self.now(), self.in_flight, self.backlog))

    async def _watch(self) -> None:
        interactive = self.progress is not None and self.progress.isatty()
        every = PROGRESS_TTY_S if interactive else PROGRESS_LOG_S
        next_judge, next_draw = 0.0, 0.0 if interactive else every
        while True:
            await asyncio.sleep(self.tick_s)  # sampling period, not a wait for an event
            self._sample()
            now = self.now()
            if self.arriving and not self._stop.is_set() and now >= next_judge:
                next_judge = now + self.judge_s
                found = saturation(self.samples, self.outcomes, self.rate, now)
                if found is not None:
                    self.saturation = found
                    self._stop.set()
            if now >= next_draw:
                next_draw = now + every
                self._draw(final=False)

    def _draw(self, *, final: bool) -> None:
        """``rate: done/total, in flight, output tokens/s``; on a terminal one line redrawn."""
        if self.progress is None:
            return
        now = self.now()
        chunks = sum(o.chunks for o in self.outcomes)
        self._speed.append((now, chunks))
        while len(self._speed) > 2 and self._speed[1][0] <= now - SPEED_WINDOW_S:
            self._speed.pop(0)
        t0, c0 = self._speed[0]
        speed = (chunks - c0) / (now - t0) if now > t0 else 0.0
        done = sum(o.finished_s is not None for o in self.outcomes)
        waiting = f", {self.backlog} waiting" if self.max_concurrency else ""
        line = (f"{self.rate:g} req/s: {done}/{len(self.times)} done, {self.in_flight} in "
                f"flight{waiting}, {speed:,.0f} out tok/s, {now:.0f}s")
        if final:
            tokens = sum(o.tokens for o in self.outcomes if o.ok)
            line = (f"{self.rate:g} req/s: {done}/{len(self.times)} done in {now:.1f}s, "
                    f"{tokens / now if now else 0:,.0f} out tok/s")
        if self.progress.isatty():  # the rate's summary follows on stdout: clear the line
            self.progress.write("\r\x1b[2K" + ("" if final else line))
        else:
            self.progress.write(line + "\n")
        self.progress.flush()
