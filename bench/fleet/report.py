"""The sweep's figures: a table per workload, the bar's verdict, and five charts (matplotlib)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from bench.fleet.run import RunResult

COLORS = {  # matplotlib's tab10, one colour per policy in every chart
    "cost": "tab:red", "latency": "tab:blue", "balanced": "tab:purple",
    "round-robin": "tab:gray", "least-outstanding": "tab:green", "list-price": "tab:orange",
    "healthy-round-robin": "tab:olive", "healthy-list-price": "tab:cyan",
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


SLO_BAR = 0.99  # cost keeps this attainment; "other" policies count only where they do too
BEST_BAR = 0.95  # cost earns this share of the best other policy's tokens per dollar
RR_BAR = 1.5  # median over cells, vs round-robin
ORACLE_BAR = 0.90  # median over cells, vs the oracle's bound


@dataclass(frozen=True, slots=True)
class Cell:
    """How ``cost`` did in one (fleet, workload, rate) against the others and the oracle."""

    fleet: str
    workload: str
    rate: float
    slo: float  # cost's SLO attainment
    vs_best: float  # cost's tokens/$ over the best other policy keeping SLO_BAR (nan: none)
    best: str  # that policy
    vs_round_robin: float
    vs_oracle: float  # cost's tokens/$ over the oracle's bound at cost's attainment

    @property
    def ok(self) -> bool:
        """Whether this cell meets the per-cell bars."""
        return self.slo >= SLO_BAR and (math.isnan(self.vs_best) or self.vs_best >= BEST_BAR)


def cells(results: Sequence[RunResult], oracle: Callable[[float, float], float],
          fleet: str, workload: str) -> list[Cell]:
    """One ``Cell`` per rate; ``oracle(rate, attainment)`` is the bound's tokens per dollar."""
    by = {(r.rate, r.policy): r for r in results}
    found = []
    for rate in sorted({r.rate for r in results}):
        cost = by[(rate, "cost")]
        others = [r for (x, p), r in by.items()
                  if x == rate and p != "cost" and r.slo_attainment >= SLO_BAR]
        best = max(others, key=lambda r: r.tokens_per_usd, default=None)
        rr = by.get((rate, "round-robin"))
        bound = oracle(rate, cost.slo_attainment)
        found.append(Cell(
            fleet, workload, rate, cost.slo_attainment,
            _ratio(cost.tokens_per_usd, best.tokens_per_usd) if best else math.nan,
            best.policy if best else "-",
            _ratio(cost.tokens_per_usd, rr.tokens_per_usd) if rr else math.nan,
            _ratio(cost.tokens_per_usd, bound),
        ))
    return found


def _ratio(a: float, b: float) -> float:
    return a / b if b else math.inf


def verdict(found: Sequence[Cell]) -> tuple[bool, str]:
    """The bars of the cost policy: per cell SLO and share of the best other policy; medians
    vs round-robin and the oracle."""
    notes = []
    for c in found:
        if not c.ok:
            notes.append(f"  {c.fleet} {c.workload} {c.rate:g}/s: cost SLO {c.slo:.1%}, "
                         f"{c.vs_best:.2f}x {c.best}")
    rr = _median([c.vs_round_robin for c in found])
    orc = _median([c.vs_oracle for c in found])
    measured = all(math.isfinite(c.slo) for c in found)  # a cell with nothing measured
    if not measured:
        notes.append("  some cells measured no requests: run longer (--duration) or faster")
    ok = measured and not notes and rr >= RR_BAR and orc >= ORACLE_BAR
    passed = sum(c.ok for c in found)
    notes.append(f"  cells meeting SLO >= {SLO_BAR:.0%} and >= {BEST_BAR:.0%} of the best other "
                 f"policy: {passed}/{len(found)}")
    shown = "not run" if math.isnan(rr) else f"{rr:.2f}x"
    notes.append(f"  median cost/round-robin {shown} (bar {RR_BAR}x), median cost/oracle "
                 f"{orc:.2f} (bar {ORACLE_BAR})")
    return ok, "\n".join(notes)


def distribution(found: Sequence[Cell]) -> str:
    """min / p10 / median / max of each figure over the cells."""
    rows = [("cost SLO attainment", [c.slo for c in found]),
            ("cost / best other >= 99% SLO", [c.vs_best for c in found]),
            ("cost / round-robin", [c.vs_round_robin for c in found]),
            ("cost / oracle bound", [c.vs_oracle for c in found])]
    lines = [f"  {'':<30} {'min':>7} {'p10':>7} {'median':>7} {'max':>7}"]
    for name, values in rows:
        v = sorted(x for x in values if not math.isnan(x))
        if not v:
            continue
        q = [v[0], v[int(0.1 * (len(v) - 1))], _median(v), v[-1]]
        lines.append(f"  {name:<30} " + " ".join(f"{x:>7.3f}" for x in q))
    return "\n".join(lines)


def _median(values: Sequence[float]) -> float:
    v = sorted(x for x in values if not math.isnan(x))
    if not v:
        return math.nan
    mid = len(v) // 2
    return v[mid] if len(v) % 2 else (v[mid - 1] + v[mid]) / 2


def chart(results: Sequence[RunResult], path: str, title: str) -> None:
    """Cost per 1M output tokens, tokens per dollar, SLO attainment, p50/p99 TTFT vs rate."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    from matplotlib.ticker import PercentFormatter, ScalarFormatter

    rates = sorted({r.rate for r in results})
    policies = list(dict.fromkeys(r.policy for r in results))
    by = {(r.rate, r.policy): r for r in results}
    panels = [
        ("Fleet $ per 1M output tokens", "usd_per_mtok", "linear"),
        ("Output tokens per $", "tokens_per_usd", "linear"),
        ("SLO attainment", "slo_attainment", "linear"),
        ("p50 TTFT (s)", "ttft_p50_s", "log"),
        ("p99 TTFT (s)", "ttft_p99_s", "log"),
    ]
    figure, axes = plt.subplots(3, 2, figsize=(12, 11), constrained_layout=True)
    figure.suptitle(title)
    for ax, (name, metric, scale) in zip(axes.flat, panels, strict=False):
        for policy in policies:
            values = [float(getattr(by[(x, policy)], metric)) for x in rates]
            ax.plot(rates, values, marker="o", markersize=3, label=policy,
                    color=COLORS.get(policy), linewidth=2.2 if policy == "cost" else 1.2)
        ax.set_title(name)
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.set_xticks(rates)
        ax.set_xlabel("requests/s")
        ax.set_yscale(scale)
        if metric == "slo_attainment":
            ax.yaxis.set_major_formatter(PercentFormatter(1.0))
        ax.grid(True, which="major", alpha=0.3)
    legend = axes.flat[-1]
    legend.axis("off")
    legend.legend(*axes.flat[0].get_legend_handles_labels(), loc="center", title="policy")
    figure.savefig(path, dpi=100)
    plt.close(figure)
