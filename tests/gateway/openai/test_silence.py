"""The silence watch: a wait past the limit ends, waits that keep coming do not, and the
consumer's own time between waits is never counted."""

from __future__ import annotations

import asyncio

import pytest

from gateway.openai.silence import Silence, SilenceWatch

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(10)]


async def test_a_wait_past_the_limit_ends_with_silence() -> None:
    watch = SilenceWatch(0.05)
    never = asyncio.Event()
    with pytest.raises(Silence):
        await watch.wait(never.wait())
    # The task is not left cancelled: it goes on awaiting normally.
    await asyncio.sleep(0)
    watch.close()


async def test_deltas_that_keep_coming_are_never_cut_however_long_the_stream() -> None:
    watch = SilenceWatch(0.1)
    for _ in range(8):  # 0.24 s in all, each wait well within the limit
        await watch.wait(asyncio.sleep(0.03))
    watch.close()


async def test_time_spent_by_the_consumer_between_waits_is_not_silence() -> None:
    watch = SilenceWatch(0.05)
    await watch.wait(asyncio.sleep(0))
    await asyncio.sleep(0.15)  # a slow client took the last delta
    assert await watch.wait(asyncio.sleep(0, "next")) == "next"
    watch.close()


async def test_a_cancellation_from_elsewhere_stays_a_cancellation() -> None:
    watch = SilenceWatch(5.0)
    waiting = asyncio.ensure_future(watch.wait(asyncio.Event().wait()))
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    watch.close()
