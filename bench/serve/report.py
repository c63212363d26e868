"""The figures of a run as a table, JSON, CSV and PNG charts (matplotlib), and several runs'
JSON files drawn on one chart."""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import orjson

from bench.serve.stats import RateFigures

Series = tuple[str, Sequence[RateFigures]]  # a run's label and its rates


def _f(value: float | None, spec: str, width: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}{spec}}"


def _trio(a: float | None, b: float | None, c: float | None, scale: float = 1.0,
          spec: str = ".0f") -> str:
    """Three percentiles as ``p50/p90/p99`` (``-`` when any is unmeasured)."""
    if a is None or b is None or c is None:
        return f"{'-':>17}"
    return "/".join(f"{v * scale:>5{spec}}" for v in (a, b, c))


def table(figs: Sequence[RateFigures]) -> str:
    """One line per rate: throughput, goodput, latency percentiles, cost, errors."""
    head = (f"{'rate/s':>7} {'req/s':>7} {'out tok/s':>9} {'goodput':>7} "
            f"{'TTFT p50/90/99 ms':>17} {'TPOT p50/90/99 ms':>17} {'ITL p50/90/99 ms':>17} "
            f"{'E2E p50/90/99 s':>17} {'out tok/$':>10} {'$/1M out':>9}  errors")
    lines = [head, "-" * len(head)]
    for f in figs:
        errors = ", ".join(f"{k}: {n}" for k, n in f.errors.items()) or "-"
        mark = "*" if f.saturated else " "
        lines.append(
            f"{f.rate:>6g}{mark} {f.request_throughput:>7.2f} {f.output_throughput:>9,.0f} "
            f"{f.goodput:>7.2f} {_trio(f.ttft_p50_ms, f.ttft_p90_ms, f.ttft_p99_ms)} "
            f"{_trio(f.tpot_p50_ms, f.tpot_p90_ms, f.tpot_p99_ms)} "
            f"{_trio(f.itl_p50_ms, f.itl_p90_ms, f.itl_p99_ms)} "
            f"{_trio(f.e2e_p50_ms, f.e2e_p90_ms, f.e2e_p99_ms, 1e-3, '.1f')} "
            f"{_f(f.tokens_per_usd, ',.0f', 10)} "
            f"{_f(f.usd_per_mtok_out, '.3f', 9)}  {errors}")
    if any(f.saturated for f in figs):
        lines.append("* saturated: the endpoint did not keep up with this rate")
    return "\n".join(lines)


def rate_line(f: RateFigures) -> str:
    """What one rate did, printed as soon as it ends."""
    line = (f"{f.rate:g} req/s: {f.completed}/{f.sent} answered in {f.wall_s:.1f}s, "
            f"{f.output_throughput:,.0f} out tok/s, goodput {f.goodput:.2f} req/s")
    if f.failed:
        line += f", {f.failed} failed"
    if f.saturation:
        when = f"after {f.wall_s:.1f} s" if f.stopped_early else "as the arrivals ended"
        line += (f"\nsaturated at {f.rate:g} req/s: {f.saturation}; stopped {when}, "
                 f"{f.cancelled} outstanding request(s) cancelled")
    return line


def costs(figs: Sequence[RateFigures]) -> str:
    """Measured cost against the gateway's metered cost per rate, and the per-backend split."""
    lines = [f"{'rate/s':>7} {'measured $':>12} {'metered $':>12} {'metered/req':>11} "
             f"{'difference':>22}"]
    for f in figs:
        diff = "-"
        if f.measured_usd is not None and f.metered_usd is not None:
            delta = f.metered_usd - f.measured_usd
            if abs(delta) <= 1e-10 * max(1, f.metered_requests):  # its rounding, per request
                diff = "none"
            else:
                share = f" ({delta / f.measured_usd:+.1%})" if f.measured_usd else ""
                diff = f"{delta:+.6f}{share}"
        lines.append(f"{f.rate:>7g} {_f(f.measured_usd, '.6f', 12)} "
                     f"{_f(f.metered_usd, '.6f', 12)} {f.metered_requests:>5}/{f.completed:<5} "
                     f"{diff:>22}")
    for f in figs:
        if f.backends:
            split = "; ".join(
                f"{name} {row['requests']:.0f} req, {row['output_tokens']:,.0f} out tok, "
                f"${row['metered_usd']:.6f} metered" for name, row in f.backends.items())
            lines.append(f"backends at {f.rate:g} req/s: {split}")
    return "\n".join(lines)


# -- files ----------------------------------------------------------------------------------


def write_json(path: str | Path, meta: Mapping[str, Any], figs: Sequence[RateFigures]) -> None:
    """The run's description (label, target, dataset, price, machine) and every rate's figures."""
    body = {**meta, "rates": [asdict(f) for f in figs]}
    Path(path).write_bytes(orjson.dumps(body, option=orjson.OPT_INDENT_2))


def read_json(path: str | Path) -> tuple[dict[str, Any], list[RateFigures]]:
    """A file written by ``write_json``: its description and its rates."""
    body = orjson.loads(Path(path).read_bytes())
    rows = body.pop("rates")
    return body, [RateFigures.from_json(row) for row in rows]


def write_csv(path: str | Path, figs: Sequence[RateFigures]) -> None:
    """One row per rate; errors and the backend split as ``key=value`` lists."""
    names = [f.name for f in fields(RateFigures)]
    with Path(path).open("w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=names)
        writer.writeheader()
        for f in figs:
            row = asdict(f)
            row["errors"] = ";".join(f"{k}={n}" for k, n in f.errors.items())
            row["backends"] = ";".join(
                f"{k}={v['requests']:.0f}req/{v['output_tokens']:.0f}tok/${v['metered_usd']:.6f}"
                for k, v in f.backends.items())
            writer.writerow({k: "" if v is None else v for k, v in row.items()})


# -- charts ---------------------------------------------------------------------------------

PANELS = (  # title, (figure, line style) pairs, y scale
    ("Output tokens per $", (("tokens_per_usd", "-"),), "linear"),
    ("$ per 1M output tokens", (("usd_per_mtok_out", "-"),), "log"),
    ("Output tokens/s", (("output_throughput", "-"),), "linear"),
    ("TTFT (ms): p50 solid, p99 dashed", (("ttft_p50_ms", "-"), ("ttft_p99_ms", "--")), "log"),
    ("TPOT (ms): p50 solid, p99 dashed", (("tpot_p50_ms", "-"), ("tpot_p99_ms", "--")), "log"),
    ("End-to-end (ms): p50 solid, p99 dashed", (("e2e_p50_ms", "-"), ("e2e_p99_ms", "--")),
     "log"),
)


def chart(series: Sequence[Series], path: str | Path, title: str) -> None:
    """Cost and throughput per dollar, output tokens/s and latency percentiles against the
    request rate, one colour per run; a saturated rate is drawn as an X."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter, LogFormatter, ScalarFormatter

    rates = sorted({f.rate for _, figs in series for f in figs})
    figure, axes = plt.subplots(2, 3, figsize=(15, 8.5), constrained_layout=True)
    figure.suptitle(title)
    colors = [plt.get_cmap("tab10")(n % 10) for n in range(len(series))]
    for ax, (name, lines, scale) in zip(axes.flat, PANELS, strict=True):
        drawn = False
        for (_, figs), color in zip(series, colors, strict=True):
            for metric, style in lines:
                drawn |= _line(ax, figs, metric, style, color)
        ax.set_title(name)
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.set_xticks(rates)
        ax.set_xlabel("requests/s offered")
        if not drawn:
            ax.text(0.5, 0.5, "no price given" if "$" in name else "no data",
                    transform=ax.transAxes, ha="center", va="center", color="gray")
            continue
        ax.set_yscale(scale)
        if scale == "log":  # plain numbers, not powers of ten
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False))
        ax.grid(True, which="major", alpha=0.3)
    handles = [Line2D([], [], color=c, marker="o", label=label)
               for (label, _), c in zip(series, colors, strict=True)]
    handles.append(Line2D([], [], color="gray", marker="X", markersize=9, linestyle="none",
                          label="saturated"))
    figure.legend(handles=handles, loc="outside lower center", ncols=min(4, len(handles)))
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _line(ax: Any, figs: Sequence[RateFigures], metric: str, style: str, color: Any) -> bool:
    points = [(f.rate, getattr(f, metric), f.saturated) for f in figs
              if getattr(f, metric) is not None]
    if not points:
        return False
    ax.plot([p[0] for p in points], [p[1] for p in points], linestyle=style, marker="o",
            markersize=3, color=color)
    hot = [p for p in points if p[2]]
    if hot:
        ax.plot([p[0] for p in hot], [p[1] for p in hot], linestyle="none", marker="X",
                markersize=9, color=color)
    return True
