"""The chaos bench: its verdict's arithmetic, and a short run that must keep every invariant."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import chaos
from bench.faults.upstream import Attempt
from bench.faults.verdict import Timeline, billing, peak, upstream_requests, window_peak

TIMELINE = Timeline(start=0.0, replicas=3, lease_ttl_s=3.0, window_s=10.0, redis_down=100.0,
                    redis_up=105.0, victim=2, killed=50.0, restarted=None)  # fmt: skip


def _attempt(rid: str, start: float, end: float, tokens: int, **kw: object) -> Attempt:
    fields: dict[str, object] = {"tenant": "t", "replica": 0, "stream": True, "backend": "flaky",
                                 "fault": "", "cut": 0, "ended": "done"} | kw  # fmt: skip
    times = [start + (end - start) * (i + 1) / (tokens + 1) for i in range(tokens)]
    return Attempt(rid=rid, start=start, end=end, times=times, **fields)  # type: ignore[arg-type]


def test_a_request_and_its_fallback_count_once_and_outage_peaks_count_apart() -> None:
    served = upstream_requests([
        _attempt("a", 0.0, 1.0, 0, ended="gone"),  # hung, given up on...
        _attempt("a", 0.999, 2.0, 5, backend="steady"),  # ...and answered by the other one
        _attempt("b", 1.5, 3.0, 5),
    ])  # fmt: skip
    assert served["a"] == (0.0, 2.0)
    assert peak(served.values(), []) == (2, 0)
    assert peak(served.values(), [(1.4, 1.6)]) == (1, 2)


def test_only_admissions_wholly_inside_a_window_count() -> None:
    # An admission happened somewhere in [sent, answered]: the third may lie past the window.
    admissions = [(0.0, 0.1), (0.5, 0.6), (9.95, 10.2)]
    assert window_peak(admissions, 10.0, []) == (2, 0)
    assert window_peak([*admissions, (9.0, 9.5)], 10.0, []) == (3, 0)
    assert window_peak(admissions, 10.0, [(9.0, 9.1)]) == (1, 2)


def test_billing_allows_only_the_stated_shortfalls() -> None:
    attempts = [
        _attempt("whole", 0.0, 1.0, 3, stream=False, fault="die", ended="died"),
        _attempt("whole", 1.0, 2.0, 10, stream=False, backend="steady"),
        _attempt("left", 3.0, 4.0, 6, ended="gone"),  # a token may still have been in flight
        _attempt("killed", 40.0, 50.0, 100, replica=2, ended="gone"),
        _attempt("cheated", 5.0, 6.0, 8),
    ]
    records = {"whole": 10, "left": 5, "killed": 85, "cheated": 7}
    out = billing(attempts, records, TIMELINE, set())
    assert (out.sent, out.billable, out.wasted, out.billed) == (127, 124, 3, 107)
    # The killed stream may lack what it received in its last two heartbeats (2 s + slack).
    assert out.offenders == ["cheated (received 8, billed 7, bound 0)"]
    assert (
        billing(attempts, {**records, "whole": 13}, TIMELINE, set())
        .offenders[0]
        .startswith("whole")
    )
    # A client that left as the answer ended: the upstream finished before it noticed.
    assert not billing(attempts, records, TIMELINE, {"cheated"}).offenders


@pytest.mark.slow
@pytest.mark.redis  # a redis-server of its own, which it kills and restarts
@pytest.mark.timeout(120)
def test_a_short_chaos_run_keeps_the_limits_the_ledger_and_the_leases(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = chaos.main(["--duration", "8", "--seed", "3", "--logs", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "verdict: every invariant held" in out
    assert "limit violations: 0" in out
    assert "leases left over after the TTL: 0 live" in out
    assert "Redis kill -9" in out and "replica 2 kill -9" in out
