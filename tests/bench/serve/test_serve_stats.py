"""Cost arithmetic, per-rate figures from known outcomes, and the saturation test."""

from __future__ import annotations

import heapq
import random

import pytest

from bench.serve.cost import Price, tokens_per_usd, usd_per_mtok
from bench.serve.records import Outcome, RateRun, Sample
from bench.serve.stats import Objectives, figures, percentile, saturation

pytestmark = pytest.mark.timeout(30)


def _done(tokens: int, *, ttft: float = 0.1, tpot: float = 0.02, prompt: int = 100,
          at: float = 0.0, **kw: object) -> Outcome:
    e2e = ttft + tpot * (tokens - 1)
    return Outcome(sent_s=at, asked_tokens=tokens, input_tokens=prompt, finished_s=at + e2e,
                   e2e_s=e2e, ttft_s=ttft, chunks=tokens, prompt_tokens=prompt,
                   output_tokens=tokens, **kw)  # type: ignore[arg-type]


def test_instance_price_is_hourly_price_times_wall_time_over_tokens() -> None:
    price = Price(usd_per_hour=3.6)
    assert price.cost(10.0, prompt_tokens=999, output_tokens=500) == pytest.approx(0.01)
    assert tokens_per_usd(500, 0.01) == pytest.approx(50_000)
    assert usd_per_mtok(0.01, 500) == pytest.approx(20.0)
    assert tokens_per_usd(500, None) is None and usd_per_mtok(0.01, 0) is None
    assert Price().cost(10.0, 1, 1) is None and not Price().given


def test_per_token_prices_are_exact() -> None:
    price = Price(usd_per_mtok_in=0.5, usd_per_mtok_out=1.5)
    assert price.cost(1234.5, prompt_tokens=4000, output_tokens=2000) == 0.005  # any wall time
    assert Price(usd_per_mtok_out=2.0).cost(1.0, 10**6, 10**6) == 2.0  # no input price: free
    with pytest.raises(ValueError, match="not both"):
        Price(usd_per_hour=1.0, usd_per_mtok_out=1.0)


def test_figures_of_a_rate_from_known_outcomes() -> None:
    outcomes = [
        _done(100, backend="a", metered_usd=0.001),
        _done(400, ttft=2.0, prompt=300, backend="b", metered_usd=0.003),  # misses TTFT 1 s
        Outcome(0.0, 8, 10, finished_s=0.1, error="http 503 backend_overloaded"),
        Outcome(0.0, 8, 10, finished_s=0.1, error="timeout"),
        Outcome(0.0, 8, 10, cancelled=True),
    ]
    run = RateRun(rate=2.0, duration_s=10.0, scheduled=20, outcomes=outcomes,
                  samples=[Sample(0.0, 1, 0), Sample(0.1, 3, 2)], wall_s=10.0)
    f = figures(run, Price(usd_per_hour=3.6), Objectives(ttft_ms=1000, tpot_ms=50))
    assert (f.sent, f.completed, f.failed, f.cancelled, f.good) == (5, 2, 2, 1, 1)
    assert f.errors == {"http 503 backend_overloaded": 1, "timeout": 1}
    assert (f.output_tokens, f.prompt_tokens, f.max_outstanding) == (500, 400, 5)
    assert f.request_throughput == 0.2 and f.output_throughput == 50.0 and f.goodput == 0.1
    assert f.measured_usd == pytest.approx(0.01) and f.metered_usd == pytest.approx(0.004)
    assert f.tokens_per_usd == pytest.approx(50_000) and f.usd_per_mtok_out == pytest.approx(20)
    assert f.ttft_p50_ms == pytest.approx(1050) and f.tpot_p99_ms == pytest.approx(20)
    assert f.backends == {"a": {"requests": 1, "output_tokens": 100, "metered_usd": 0.001},
                          "b": {"requests": 1, "output_tokens": 400, "metered_usd": 0.003}}
    per_token = figures(run, Price(usd_per_mtok_in=1.0, usd_per_mtok_out=2.0), Objectives())
    assert per_token.measured_usd == (400 * 1.0 + 500 * 2.0) / 1e6


def test_percentiles_interpolate_as_numpy_does() -> None:
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.5
    assert percentile([1.0, 2.0, 3.0, 4.0], 99) == pytest.approx(3.97)
    assert percentile([], 50) is None


def _simulate(rate: float, servers: int, seed: int, horizon_s: float,
              tick_s: float = 0.1) -> list[tuple[float, list[Sample], list[Outcome]]]:
    """FIFO over ``servers`` slots: answers of log-normal length (mean 100 tokens, sigma 1) at
    50 ms TTFT and 10 ms per token. What ``saturation`` would see at every tick."""
    rng = random.Random(seed)
    jobs, t, free = [], 0.0, [0.0] * servers
    while t < horizon_s:
        tokens = max(1, min(400, round(rng.lognormvariate(4.105, 1.0))))
        start = max(t, heapq.heappop(free))
        end = start + 0.05 + 0.01 * (tokens - 1)
        heapq.heappush(free, end)
        jobs.append((t, start, end, tokens))
        t += rng.expovariate(rate)
    views, samples = [], []
    for k in range(1, int(horizon_s / tick_s) + 1):
        now = k * tick_s
        samples.append(Sample(now, sum(s <= now < e for a, s, e, _ in jobs),
                              sum(a <= now < s for a, s, e, _ in jobs)))
        outcomes = [Outcome(a, n, 16, finished_s=e if e <= now else None, e2e_s=e - a,
                            ttft_s=s - a + 0.05, chunks=n, output_tokens=n)
                    for a, s, e, n in jobs if a <= now]
        views.append((now, list(samples), outcomes))
    return views


def test_a_stable_endpoint_with_long_tailed_answers_is_not_called_saturated() -> None:
    # 10 req/s of ~1 s answers on 40 slots: ~10 outstanding after a ramp as long as the tail.
    for now, samples, outcomes in _simulate(10.0, 40, seed=1, horizon_s=12.0):
        assert saturation(samples, outcomes, 10.0, now) is None, now


def test_more_arrivals_than_the_endpoint_answers_are_called_saturated() -> None:
    # 10 slots of ~1 s answers serve ~9.5 req/s: offered 20, the queue grows ~10 a second.
    found = [(now, s) for now, samples, outcomes in _simulate(20.0, 10, seed=1, horizon_s=12.0)
             if (s := saturation(samples, outcomes, 20.0, now)) is not None]
    assert found and found[0][0] < 8.0
    assert "requests outstanding rose from" in found[0][1].reason


def test_nothing_is_judged_before_an_answer_or_on_a_short_window() -> None:
    samples = [Sample(t / 10, t * 5, 0) for t in range(1, 40)]
    waiting = [Outcome(t / 10, 100, 10) for t in range(40)]
    assert saturation(samples, waiting, 50.0, 3.9) is None  # a ramp or a queue: unknown yet
    assert saturation(samples[:4], [_done(10)], 50.0, 0.4) is None


def test_an_endpoint_that_sheds_load_is_saturated() -> None:
    samples = [Sample(t / 10, 2, 0) for t in range(1, 21)]
    ended = [Outcome(1.5, 8, 10, finished_s=1.6, error="http 503 backend_overloaded")
             for _ in range(6)]
    ended += [_done(8, at=1.5) for _ in range(30)]
    found = saturation(samples, ended, 20.0, 2.0)
    assert found is not None and "6 of the 36 requests" in found.reason
    assert "http 503 backend_overloaded: 6" in found.reason
    assert saturation(samples, ended[3:], 20.0, 2.0) is None  # 3 refusals: noise
