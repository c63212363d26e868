"""The sweep's figures: a table per workload, the bar's verdict, and a PNG of four charts."""

from __future__ import annotations

import math
from collections.abc import Sequence

from bench.fleet.png import RGB, Canvas, panel
from bench.fleet.run import BASELINES, RunResult

COLORS: dict[str, RGB] = {
    "cost": (214, 39, 40), "latency": (31, 119, 180), "balanced": (148, 103, 189),
    "round-robin": (127, 127, 127), "least-outstanding": (44, 160, 44),
    "list-price": (255, 127, 14),
}


def table(results: Sequence[RunResult]) -> str:
    """One line per (rate, policy).

    ``$/1M out`` and ``out tok/$``: the whole fleet's cost over the window (reserved and
    autoscaled instance time, API spend) against output tokens delivered; the bar is judged
    on these. ``good tok/$``: only tokens of answers within both objectives, per dollar.
    """
    head = (f"{'rate/s':>7} {'policy':<18} {'$/1M out':>9} {'out tok/$':>10} "
            f"{'good tok/$':>10} {'SLO':>7} "
            f"{'p50 TTFT':>9} {'p99 TTFT':>9} {'failed':>7}  where the tokens went")
    lines = [head, "-" * len(head)]
    for r in results:
        where = " ".join(f"{k.split('-')[0]}:{v:.0%}" for k, v in r.share.items() if v >= 0.005)
        lines.append(
            f"{r.rate:>7g} {r.policy:<18} {r.usd_per_mtok:>9.3f} {r.tokens_per_usd:>10,.0f} "
            f"{r.goodput_per_usd:>10,.0f} "
            f"{r.slo_attainment:>7.1%} {r.ttft_p50_s:>8.2f}s {r.ttft_p99_s:>8.2f}s "
            f"{r.failed:>7}  {where}"
        )
    return "\n".join(lines)


def verdict(results: Sequence[RunResult]) -> tuple[bool, str]:
    """The bar: ``cost`` >= best baseline SLO and >= round-robin tokens/$ at every rate,
    and >= 1.3x round-robin's tokens/$ at some rate."""
    by = {(r.rate, r.policy): r for r in results}
    rates = sorted({r.rate for r in results})
    notes, ok, best_gain = [], True, 0.0
    for rate in rates:
        cost, rr = by[(rate, "cost")], by[(rate, "round-robin")]
        best_slo = max(by[(rate, b)].slo_attainment for b in BASELINES if (rate, b) in by)
        gain = cost.tokens_per_usd / rr.tokens_per_usd if rr.tokens_per_usd else math.inf
        best_gain = max(best_gain, gain)
        if cost.slo_attainment + 1e-9 < best_slo:
            ok = False
            notes.append(f"  {rate:g}/s: cost SLO {cost.slo_attainment:.1%} < best baseline "
                         f"{best_slo:.1%}")
        if gain < 1.0:
            ok = False
            notes.append(f"  {rate:g}/s: cost {gain:.2f}x round-robin tokens/$")
    if best_gain < 1.3:
        ok = False
    notes.append(f"  best cost/round-robin tokens-per-dollar ratio: {best_gain:.2f}x")
    return ok, "\n".join(notes)


def chart(results: Sequence[RunResult], path: str, title: str) -> None:
    """Cost per 1M output tokens, tokens per dollar, SLO attainment, p50/p99 TTFT vs rate."""
    rates = sorted({r.rate for r in results})
    policies = list(dict.fromkeys(r.policy for r in results))
    by = {(r.rate, r.policy): r for r in results}

    def series(metric: str) -> dict[str, list[float]]:
        return {p: [float(getattr(by[(x, p)], metric)) for x in rates] for p in policies}

    canvas = Canvas(1200, 900)
    canvas.text(20, 12, title, scale=3)
    panels = [
        ("FLEET $ PER 1M OUTPUT TOKENS", "usd_per_mtok", False),
        ("OUTPUT TOKENS PER $", "tokens_per_usd", False),
        ("SLO ATTAINMENT", "slo_attainment", False),
        ("P50 TTFT S (LOG)", "ttft_p50_s", True),
        ("P99 TTFT S (LOG)", "ttft_p99_s", True),
    ]
    for i, (name, metric, log_y) in enumerate(panels):
        col, row = i % 2, i // 2
        panel(canvas, (90 + col * 590, 70 + row * 280, 480, 200), name, rates,
              series(metric), COLORS, log_y=log_y)
    for i, p in enumerate(policies):  # the legend, in the sixth cell
        y = 640 + i * 28
        canvas.rect(680, y, 30, 8, COLORS.get(p, (0, 0, 0)))
        canvas.text(720, y - 1, p)
    canvas.text(680, 620 + 28 * len(policies) + 30, "X: REQUESTS/S (LOG2)")
    canvas.save(path)
