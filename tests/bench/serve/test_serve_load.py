"""The arrival process, the datasets, and the client's timings against a paced fake server."""

from __future__ import annotations

import asyncio
import itertools
import statistics
from pathlib import Path

import pytest

from bench.serve.cost import Price
from bench.serve.dataset import DatasetError, RequestFile, Synthetic, read_jsonl
from bench.serve.load import Target, arrivals
from bench.serve.records import RateRun
from bench.serve.run import RateRunner
from bench.serve.stats import Objectives, figures
from tests.bench.serve.conftest import PacedVLLM
from tests.fakes._server import Failure

pytestmark = pytest.mark.timeout(30)


def test_poisson_arrivals_have_the_rates_mean_gap_and_repeat_with_the_seed() -> None:
    times = arrivals(20.0, 500.0, seed=7)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert times[0] == 0.0 and times[-1] < 500.0
    assert statistics.fmean(gaps) == pytest.approx(1 / 20, rel=0.03)
    # Exponential gaps: the standard deviation equals the mean (a fixed pace would give 0).
    assert statistics.stdev(gaps) == pytest.approx(1 / 20, rel=0.05)
    assert len(times) == pytest.approx(20 * 500, rel=0.03)
    assert arrivals(20.0, 500.0, seed=7) == times
    assert arrivals(20.0, 500.0, seed=8)[:10] != times[:10]


def test_synthetic_prompts_have_the_asked_lengths_and_repeat_with_the_seed() -> None:
    fixed = Synthetic(input_len=300, output_len=40)
    prompt = fixed(3)
    assert prompt.max_tokens == 40 and prompt.input_tokens == 300
    assert prompt.text is not None and len(prompt.text.split()) == 299  # and the BOS token
    assert fixed(3) == prompt and fixed(4) != prompt
    for dist in ("uniform", "lognormal"):
        draws = [Synthetic(1024, 512, dist, 0.5, seed=1)(i) for i in range(2000)]
        assert statistics.fmean(p.input_tokens for p in draws) == pytest.approx(1024, rel=0.04)
        assert statistics.fmean(p.max_tokens for p in draws) == pytest.approx(512, rel=0.04)
        assert len({p.max_tokens for p in draws}) > 100
    uniform = [Synthetic(100, 100, "uniform", 0.5)(i).max_tokens for i in range(500)]
    assert min(uniform) >= 50 and max(uniform) <= 150


def test_a_jsonl_file_gives_prompts_or_messages_and_names_a_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "requests.jsonl"
    path.write_text('{"prompt": "one two three", "max_tokens": 5}\n\n'
                    '{"messages": [{"role": "user", "content": "hi there"}], "max_tokens": 7}\n')
    prompts = read_jsonl(path, chat=True)
    assert [(p.text, p.max_tokens, p.input_tokens) for p in prompts[:1]] == [
        ("one two three", 5, 3)]
    assert prompts[1].messages == ({"role": "user", "content": "hi there"},)
    assert sorted(RequestFile(str(path), prompts)(i).max_tokens for i in range(4)) == [5, 5, 7, 7]
    with pytest.raises(DatasetError, match=r"requests\.jsonl:3: .*needs --endpoint chat"):
        read_jsonl(path, chat=False)
    path.write_text('{"prompt": "x"}\n')
    with pytest.raises(DatasetError, match=":1: max_tokens must be a positive integer"):
        read_jsonl(path, chat=False)


def _run(fake: PacedVLLM, rate: float, duration_s: float, *, endpoint: str = "completions",
         output_len: int = 8) -> RateRun:
    target = Target(fake.url, "fake-model", endpoint=endpoint)  # type: ignore[arg-type]
    dataset = Synthetic(input_len=16, output_len=output_len)
    return asyncio.run(RateRunner(target, dataset, rate, duration_s, seed=3).run())


def test_percentiles_match_the_servers_pace(paced: PacedVLLM) -> None:
    """60 ms to the first token and 15 ms between the eight: TTFT 60, TPOT and ITL 15, E2E 165
    (each sleep of the fake's may overrun by a millisecond or so)."""
    _run(paced, 10.0, 0.1)  # the first request of a process pays for imports and connecting
    run = _run(paced, 10.0, 1.0)
    f = figures(run, Price(), Objectives(ttft_ms=1000, tpot_ms=100))
    assert f.completed == f.sent == len(arrivals(10.0, 1.0, 3)) and f.failed == 0
    assert f.output_tokens == 8 * f.completed and f.good == f.completed
    assert all(o.chunks == 8 and o.output_tokens == 8 and o.prompt_tokens == 15
               for o in run.outcomes)  # the fake counts 15 words of the 16-token prompt
    # The lower bounds are exact (a TTFT timed to the headers or the role chunk, or a TPOT
    # over all tokens rather than the gaps, falls below them); the slack is scheduling on a
    # busy 2-core machine, and still well under any mistaken figure (a TTFT timed to the last
    # token is 165 ms). One gap may look short when the chunk before it was read late: ITL's
    # bound is 1 ms lower.
    for name, low, slack in (("ttft", 60, 35), ("tpot", 15, 6), ("itl", 14, 10),
                             ("e2e", 165, 60)):
        for q in ("p50", "p90", "mean"):
            value = getattr(f, f"{name}_{q}_ms")
            assert low <= value <= low + slack, (name, q, value)
    assert 60 <= f.ttft_p99_ms <= 60 + 60 and 165 <= f.e2e_p99_ms <= 165 + 100
    assert 15 <= f.tpot_p99_ms <= 15 + 10


def test_chat_times_the_first_chunk_with_text_not_the_role_chunk(paced: PacedVLLM) -> None:
    run = _run(paced, 5.0, 0.5, endpoint="chat", output_len=3)
    f = figures(run, Price(), Objectives())
    assert f.completed == f.sent > 0 and f.output_tokens == 3 * f.completed
    assert f.ttft_p50_ms is not None and 60 <= f.ttft_p50_ms <= 95
    assert paced.requests[-1].body["messages"][0]["role"] == "user"
    assert paced.requests[-1].body["stream_options"] == {"include_usage": True}
    assert "ignore_eos" not in paced.requests[-1].body


def test_refusals_are_counted_by_status_and_code_and_shedding_is_saturation() -> None:
    fake = PacedVLLM(0.0, 0.0, failure=Failure("status", status=429, message="slow down"))
    with fake:
        run = _run(fake, 40.0, 1.5)
    f = figures(run, Price(), Objectives())
    assert f.completed == 0 and f.failed > 5
    assert f.errors == {"http 429 RateLimitError": f.failed}  # its code is a number: the type
    assert f.saturated and f.saturation is not None and "refused or timed out" in f.saturation


def test_a_concurrency_cap_queues_requests_on_the_client_and_its_backlog_saturates(
    paced: PacedVLLM,
) -> None:
    # Two in flight at ~170 ms each serve ~12 req/s: at 60 req/s the backlog grows.
    target = Target(paced.url, "fake-model")
    runner = RateRunner(target, Synthetic(16, 8), 60.0, 3.0, seed=3, max_concurrency=2)
    run = asyncio.run(runner.run())
    assert max(s.in_flight for s in run.samples) == 2
    assert max(s.backlog for s in run.samples) > 10
    assert run.saturation is not None and run.stopped_early and run.wall_s < 3.0
    done = [o for o in run.outcomes if o.ok]
    assert done and all(o.ttft_s is not None and o.ttft_s < 0.1 for o in done)  # no slot wait
    assert runner.in_flight == runner.backlog == 0


@pytest.mark.parametrize(
    ("failure", "style", "error"),
    [
        (Failure("error_event", after=2, status=503), "nested", "stream error"),
        (Failure("error_event", after=2, status=503), "flat", "stream error"),  # vLLM < 0.10
        (Failure("malformed", after=1), "nested", "bad stream event"),
        (Failure("drop", after=2), "nested", None),
    ],
)
def test_a_stream_that_breaks_is_a_failure_not_a_short_answer(
    failure: Failure, style: str, error: str | None
) -> None:
    fake = PacedVLLM(0.0, 0.0, failure=failure, error_style=style)  # type: ignore[arg-type]
    with fake:
        run = _run(fake, 10.0, 0.3)
    assert run.outcomes and all(o.error is not None for o in run.outcomes), run.outcomes
    if error is not None:
        assert all(o.error is not None and o.error.startswith(error) for o in run.outcomes)


def test_merged_chunks_are_counted_from_usage_or_else_by_chunk(paced: PacedVLLM) -> None:
    """vLLM sends several tokens a chunk under load: tokens come from the usage chunk, and
    a server that sends none is counted a chunk a token (a floor, said so in the output)."""
    fake = PacedVLLM(0.0, 0.0, tokens_per_chunk=2)
    with fake:
        (first, *_) = _run(fake, 10.0, 0.2).outcomes
    assert first.chunks == 4 and first.output_tokens == 8
    fake = PacedVLLM(0.0, 0.0, tokens_per_chunk=2, send_usage=False)
    with fake:
        (first, *_) = _run(fake, 10.0, 0.2).outcomes
    assert first.chunks == 4 and first.output_tokens is None and first.tokens == 4
