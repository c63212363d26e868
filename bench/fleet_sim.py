"""``tollgate bench fleet``: the real Router over a simulated fleet, swept over request rates.

Reads a fleet file (a Tollgate config whose backends carry ``simulate:`` blocks; default
``config/fleet.sim.yaml``), runs every policy and baseline at each rate on virtual time, prints
cost per 1M output tokens, tokens per dollar, SLO attainment and TTFT, and writes a PNG chart.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from bench.fleet.report import chart, table, verdict
from bench.fleet.run import ALL_POLICIES, RunResult, sweep
from gateway.settings import Settings, load_settings

DEFAULT_FLEET = Path(__file__).resolve().parent.parent / "config" / "fleet.sim.yaml"
RATES = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="tollgate bench fleet", description=__doc__)
    p.add_argument("--fleet", default=str(DEFAULT_FLEET), help="fleet file (a Tollgate config)")
    p.add_argument("--rates", default=",".join(map(str, RATES)), help="requests/s, comma-separated")
    p.add_argument("--policies", default=",".join(ALL_POLICIES))
    p.add_argument("--duration", type=float, default=300.0, help="seconds of arrivals per run")
    p.add_argument("--warmup", type=float, default=120.0, help="seconds before measuring")
    p.add_argument("--workload", choices=("fixed", "mixed", "both"), default="both",
                   help="lengths around 1,024 tokens, long-tailed mixed lengths, or both")
    p.add_argument("--out", default="fleet", help="PNG path prefix ('' for none)")
    p.add_argument("--jobs", type=int, default=2, help="processes to run rates in")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(list(argv))


def _one(settings: Settings, rate: float, args: argparse.Namespace, mixed: bool
         ) -> list[RunResult]:
    return sweep(settings, args.policies.split(","), [rate], duration_s=args.duration,
                 warmup_s=args.warmup, mixed=mixed, seed=args.seed)


def main(argv: Sequence[str]) -> int:
    """Run the sweep; exit 0 whether or not the bar is met (benchmarks never fail CI)."""
    args = _parse(argv)
    settings = load_settings(args.fleet)
    if not any(b.simulate for b in settings.backends):
        print(f"{args.fleet}: no backend has a simulate: block", file=sys.stderr)
        return 2
    rates = [float(r) for r in args.rates.split(",")]
    workloads = {"fixed": [False], "mixed": [True], "both": [False, True]}[args.workload]
    for mixed in workloads:
        name = "mixed lengths" if mixed else "lengths ~1,024"
        began = time.perf_counter()
        with ProcessPoolExecutor(max(1, args.jobs)) as pool:
            # The heaviest rates first, so the processes finish together.
            jobs = [pool.submit(_one, settings, r, args, mixed) for r in sorted(rates)[::-1]]
            results = sorted((x for j in jobs for x in j.result()),
                             key=lambda r: (r.rate, ALL_POLICIES.index(r.policy)))
        print(f"\n== {args.fleet}: {name}, {args.duration:g}s of arrivals per run, measured "
              f"after {args.warmup:g}s ({time.perf_counter() - began:.0f}s wall) ==")
        print(table(results))
        if {"cost", "round-robin"} <= {r.policy for r in results}:
            ok, notes = verdict(results)
            print(f"bar {'MET' if ok else 'NOT MET'}:\n{notes}")
        if args.out:
            path = f"{args.out}-{'mixed' if mixed else 'fixed'}.png"
            chart(results, path, f"TOLLGATE FLEET SIM: {name.upper()}")
            print(f"chart: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
