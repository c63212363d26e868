"""``tollgate bench fleet``: the real Router over a simulated fleet, swept over request rates.

Reads a fleet file (a Tollgate config whose backends carry ``simulate:`` blocks; default
``config/fleet.sim.yaml``) or draws ``--random N`` plausible fleets, runs every policy and
baseline at each rate on virtual time, prints cost per 1M output tokens, tokens per dollar, SLO
attainment and TTFT, compares ``cost`` with the best other policy, round-robin and an oracle's
upper bound, and writes a PNG chart per fleet file.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from bench.fleet.fleets import dump, random_settings
from bench.fleet.oracle import Oracle
from bench.fleet.report import Cell, cells, chart, distribution, table, verdict
from bench.fleet.run import ALL_POLICIES, RunResult, sweep
from gateway.settings import Settings, load_settings

DEFAULT_FLEET = Path(__file__).resolve().parent.parent / "config" / "fleet.sim.yaml"
RATES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
RANDOM_RATES = (1, 4, 16, 64, 256)


def _csv(values: Sequence[float]) -> str:
    return ",".join(map(str, values))


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="tollgate bench fleet", description=__doc__)
    p.add_argument("--fleet", default=str(DEFAULT_FLEET), help="fleet file (a Tollgate config)")
    p.add_argument("--random", type=int, default=0, metavar="N",
                   help="instead of --fleet, N random fleets (bench/fleet/fleets.py)")
    p.add_argument("--random-seed", type=int, default=0, help="the first random fleet's seed")
    p.add_argument("--dump", default="", help="write the random fleets as YAML into this folder")
    p.add_argument("--rates", default=None,
                   help=f"requests/s, comma-separated (default {_csv(RATES)}; "
                   f"with --random {_csv(RANDOM_RATES)})")
    p.add_argument("--policies", default=",".join(ALL_POLICIES))
    p.add_argument("--duration", type=float, default=None,
                   help="seconds of arrivals per run (300; 240 with --random)")
    p.add_argument("--warmup", type=float, default=None,
                   help="seconds before measuring (120 either way)")
    p.add_argument("--workload", choices=("fixed", "mixed", "both"), default="both",
                   help="lengths around 1,024 tokens, long-tailed mixed lengths, or both")
    p.add_argument("--arrivals", choices=("poisson", "bursty"), default="poisson",
                   help="Poisson, or x5 the rate for 30 s in every 120 s")
    p.add_argument("--out", default="fleet", help="PNG path prefix ('' for none)")
    p.add_argument("--jobs", type=int, default=2, help="processes to run rates in")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(list(argv))
    rates = RANDOM_RATES if args.random else RATES
    args.rates = [float(r) for r in (args.rates.split(",") if args.rates else rates)]
    args.duration = args.duration or (240.0 if args.random else 300.0)
    args.warmup = 120.0 if args.warmup is None else args.warmup
    if args.duration <= args.warmup:
        p.error(f"--duration ({args.duration:g}s) must exceed --warmup ({args.warmup:g}s): "
                "only arrivals after the warm-up are measured")
    args.policies = args.policies.split(",")
    return args


@dataclass(frozen=True, slots=True)
class Job:
    """One (fleet, workload, rate): every policy, and the oracle's bound for cost's attainment."""

    name: str
    settings: Settings
    rate: float
    mixed: bool
    args: argparse.Namespace


def _run(job: Job) -> tuple[list[RunResult], Cell]:
    a = job.args
    bursty = a.arrivals == "bursty"
    results = sweep(job.settings, a.policies, [job.rate], duration_s=a.duration,
                    warmup_s=a.warmup, mixed=job.mixed, seed=a.seed, bursty=bursty)
    oracle = Oracle(job.settings, job.rate, duration_s=a.duration, warmup_s=a.warmup,
                    mixed=job.mixed, bursty=bursty, seed=a.seed)
    workload = "mixed" if job.mixed else "fixed"
    if "cost" not in a.policies:
        return results, Cell(job.name, workload, job.rate, math.nan, math.nan, "-", math.nan,
                             math.nan)
    (cell,) = cells(results, lambda _, att: oracle.bound(att).tokens_per_usd, job.name, workload)
    return results, cell


def _fleets(args: argparse.Namespace) -> list[tuple[str, Settings]]:
    if not args.random:
        return [(args.fleet, load_settings(args.fleet))]
    seeds = range(args.random_seed, args.random_seed + args.random)
    if args.dump:
        for seed in seeds:
            dump(seed, Path(args.dump))
    return [(f"fleet-{seed}", random_settings(seed)) for seed in seeds]


def main(argv: Sequence[str]) -> int:
    """Run the sweep; exit 0 whether or not the bar is met (benchmarks never fail CI)."""
    args = _parse(argv)
    fleets = _fleets(args)
    if not any(b.simulate for _, s in fleets for b in s.backends):
        print(f"{args.fleet}: no backend has a simulate: block", file=sys.stderr)
        return 2
    workloads = {"fixed": [False], "mixed": [True], "both": [False, True]}[args.workload]
    jobs = [Job(name, settings, rate, mixed, args) for name, settings in fleets
            for mixed in workloads for rate in sorted(args.rates)[::-1]]
    began = time.perf_counter()
    found: list[Cell] = []
    with ProcessPoolExecutor(max(1, args.jobs)) as pool:
        # The heaviest rates first, so the processes finish together.
        done = list(zip(jobs, pool.map(_run, jobs), strict=True))
    for name, _ in fleets:
        for mixed in workloads:
            mine = [(j, r) for j, r in done if j.name == name and j.mixed == mixed]
            results = sorted((x for _, (rs, _) in mine for x in rs),
                             key=lambda r: (r.rate, args.policies.index(r.policy)))
            cell_list = sorted((c for _, (_, c) in mine), key=lambda c: c.rate)
            found += cell_list
            _report(args, name, mixed, results, cell_list)
    if len(found) > len(args.rates) and "cost" in args.policies:
        ok, notes = verdict(found)
        print(f"\n== {len(fleets)} fleets x {len(workloads)} workloads x {len(args.rates)} "
              f"rates ({args.arrivals} arrivals, {time.perf_counter() - began:.0f}s wall) ==")
        print(distribution(found))
        print(f"bar {'MET' if ok else 'NOT MET'}:\n{notes}")
    return 0


def _report(args: argparse.Namespace, name: str, mixed: bool, results: list[RunResult],
            found: list[Cell]) -> None:
    workload = "mixed lengths" if mixed else "lengths ~1,024"
    if args.random:  # one line per cell: the distribution at the end is the point
        for c in found:
            print(f"{name} {c.workload} {c.rate:>5g}/s: cost SLO {c.slo:6.1%}  "
                  f"{c.vs_best:5.2f}x {c.best:<20} {c.vs_round_robin:5.2f}x round-robin  "
                  f"{c.vs_oracle:5.2f} of oracle")
        return
    print(f"\n== {name}: {workload}, {args.duration:g}s of {args.arrivals} arrivals per run, "
          f"measured after {args.warmup:g}s ==")
    print(table(results))
    if "cost" in args.policies:
        ok, notes = verdict(found)
        print(f"bar {'MET' if ok else 'NOT MET'}:\n{notes}")
    if args.out:
        path = f"{args.out}-{'mixed' if mixed else 'fixed'}.png"
        try:
            chart(results, path, f"Tollgate fleet sim: {workload}")
        except ImportError:
            print("chart: skipped, matplotlib is not installed (pip install 'tollgate[bench]')")
        else:
            print(f"chart: {path}")


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
