"""``tollgate bench serve``: open-loop load at a series of request rates against an
OpenAI-compatible server (Tollgate or any other), reporting throughput, goodput, latency
percentiles, errors and, given a price, output tokens per dollar and $ per 1M output tokens.

Each rate sends Poisson arrivals for ``--duration`` seconds, streamed, then waits for the
answers; a rate the endpoint cannot keep up with is stopped early and reported as the
saturation point, and no higher rate is run. Figures go to PREFIX.json / .csv / .png;
``--compare A.json B.json ...`` draws saved runs on one chart without sending anything.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from typing import Any
from urllib.parse import urlsplit

import httpx

from bench.serve.cost import Price
from bench.serve.dataset import (
    LENGTH_DISTS,
    DatasetError,
    Prompt,
    RequestFile,
    Synthetic,
    read_jsonl,
)
from bench.serve.load import Target, describe_server, send
from bench.serve.records import Outcome
from bench.serve.report import (
    Series,
    chart,
    costs,
    rate_line,
    read_json,
    table,
    write_csv,
    write_json,
)
from bench.serve.run import RateRunner
from bench.serve.stats import Objectives, RateFigures, figures

SWEEP = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="tollgate bench serve", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", help="the server's base URL (http://127.0.0.1:8080)")
    p.add_argument("--model", help="the model id to ask for")
    p.add_argument("--key", default=os.environ.get("TOLLGATE_API_KEY")
                   or os.environ.get("OPENAI_API_KEY"),
                   help="bearer key (default $TOLLGATE_API_KEY, else $OPENAI_API_KEY)")
    p.add_argument("--endpoint", choices=("completions", "chat"), default="completions")
    p.add_argument("--usd-per-hour", type=float, help="the instance's price per hour")
    p.add_argument("--usd-per-mtok-in", type=float, help="per-token price, $ per 1M input")
    p.add_argument("--usd-per-mtok-out", type=float, help="per-token price, $ per 1M output")
    p.add_argument("--rates", help="requests/s, comma-separated (default: --sweep)")
    p.add_argument("--sweep", action="store_true",
                   help=f"rates {','.join(map(str, SWEEP))}, stopping after saturation")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of arrivals per rate")
    p.add_argument("--dataset", default="synthetic",
                   help='"synthetic", or a JSONL file of {"prompt" | "messages", "max_tokens"}')
    p.add_argument("--input-len", type=int, default=1024, help="synthetic prompt tokens (mean)")
    p.add_argument("--output-len", type=int, default=1024, help="synthetic max_tokens (mean)")
    p.add_argument("--len-dist", choices=LENGTH_DISTS, default="fixed",
                   help="synthetic lengths: fixed, uniform or log-normal around the means")
    p.add_argument("--len-spread", type=float, default=0.5,
                   help="uniform: +- this share of the mean; lognormal: sigma")
    p.add_argument("--ignore-eos", action="store_true",
                   help="send vLLM's ignore_eos so that answers run to max_tokens")
    p.add_argument("--max-concurrency", type=int, help="requests in flight at most (the rest wait)")
    p.add_argument("--ttft-slo-ms", type=float, default=1000.0,
                   help="goodput's TTFT objective (0: none)")
    p.add_argument("--tpot-slo-ms", type=float, default=100.0,
                   help="goodput's TPOT objective (0: none)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds without a byte")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--label", help="this run's name in --compare charts (default: model @ host)")
    p.add_argument("--out", help="PREFIX of .json, .csv and .png ('' for none; default 'serve', "
                   "with --compare 'serve-compare')")
    p.add_argument("--compare", nargs="+", metavar="JSON", help="chart saved runs and exit")
    args = p.parse_args(list(argv))
    if args.compare:
        return args
    if not args.url or not args.model:
        p.error("--url and --model are required (unless --compare)")
    if args.rates and args.sweep:
        p.error("give --rates or --sweep, not both")
    try:
        args.rates = sorted(float(r) for r in args.rates.split(",")) if args.rates else SWEEP
    except ValueError:
        p.error(f"--rates: not a list of numbers: {args.rates!r}")
    if min(args.rates) <= 0 or args.duration <= 0:
        p.error("rates and --duration must be positive")
    try:
        args.price = Price(args.usd_per_hour, args.usd_per_mtok_in, args.usd_per_mtok_out)
    except ValueError as exc:
        p.error(str(exc))
    return args


def main(argv: Sequence[str]) -> int:
    """Run the rates and report; exit 0 whatever the figures (benchmarks never fail CI), 2 when
    the server cannot be benchmarked at all."""
    args = _parse(argv)
    if args.compare:
        return _compare(args.compare, "serve-compare" if args.out is None else args.out)
    try:
        dataset = _dataset(args)
    except (DatasetError, OSError) as exc:
        print(f"tollgate bench serve: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(_bench(args, dataset))


def _dataset(args: argparse.Namespace) -> Synthetic | RequestFile:
    if args.dataset == "synthetic":
        return Synthetic(args.input_len, args.output_len, args.len_dist, args.len_spread,
                         args.seed)
    return RequestFile(args.dataset, read_jsonl(args.dataset, chat=args.endpoint == "chat"),
                       args.seed)


async def _bench(args: argparse.Namespace, dataset: Synthetic | RequestFile) -> int:
    target = Target(args.url.rstrip("/"), args.model, args.key, args.endpoint, args.ignore_eos)
    objectives = Objectives(args.ttft_slo_ms or None, args.tpot_slo_ms or None)
    server = await describe_server(target)
    meta = _meta(args, target, dataset, objectives, server)
    print(_header(meta, args.price, objectives), flush=True)
    refusal = await _try(target, dataset(0))
    if refusal:
        print(refusal, file=sys.stderr)
        return 2
    found: list[RateFigures] = []
    for rate in args.rates:
        runner = RateRunner(target, dataset, rate, args.duration, seed=args.seed + len(found),
                            max_concurrency=args.max_concurrency, timeout_s=args.timeout,
                            progress=sys.stderr)
        found.append(figures(await runner.run(), args.price, objectives))
        print(rate_line(found[-1]), flush=True)
        if found[-1].saturated:
            break
    meta["saturated_at"] = next((f.rate for f in found if f.saturated), None)
    _summary(args, found)
    if args.out != "":
        _write(args.out or "serve", meta, found)
    return 0


def _meta(args: argparse.Namespace, target: Target, dataset: Synthetic | RequestFile,
          objectives: Objectives, server: dict[str, Any]) -> dict[str, Any]:
    return {
        "label": args.label or f"{target.model} @ {urlsplit(target.url).netloc}",
        "url": target.url, "model": target.model, "endpoint": target.endpoint,
        "dataset": dataset.describe(), "duration_s": args.duration,
        "max_concurrency": args.max_concurrency, "seed": args.seed,
        "price": asdict(args.price), "objectives": asdict(objectives),
        "client_cpus": os.cpu_count(), "server": server,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _header(meta: dict[str, Any], price: Price, objectives: Objectives) -> str:
    lines = [f"tollgate bench serve: {meta['url']} model {meta['model']} "
             f"(/v1/{meta['endpoint'].replace('chat', 'chat/completions')}, streamed)",
             f"client machine: {meta['client_cpus']} CPUs (os.cpu_count)",
             f"dataset: {meta['dataset']}",
             f"arrivals: Poisson, {meta['duration_s']:g} s per rate, seed {meta['seed']}"
             + (f", at most {meta['max_concurrency']} in flight"
                if meta["max_concurrency"] else ""),
             f"price: {price.describe()}",
             f"goodput objectives: {objectives.describe()}"]
    return "\n".join(lines + _server_lines(meta["server"]))


def _server_lines(server: dict[str, Any]) -> list[str]:
    if server.get("error") or "models" in server:
        return [f"server: {server.get('error') or 'GET /v1/models: ' + server['models']}"]
    if server["kind"] != "tollgate":
        return [f"server: OpenAI-compatible; /v1/models lists {server.get('model')}"]
    lines = ["server: a Tollgate gateway (GET /v1/models, /readyz)"]
    for name, b in server.get("backends", {}).items():
        instances = b.get("instances") or {}
        lines.append(
            f"  backend {name}: {'healthy' if b.get('healthy') else 'not healthy'}, "
            f"{b.get('slots_per_instance')} slots per instance, {instances.get('ready')} "
            f"instance(s) ready, {b.get('output_tokens_per_s')} out tok/s measured so far")
    return lines


async def _try(target: Target, first: Prompt) -> str | None:
    """Why the server refuses the dataset's first prompt, cut to 16 tokens (None: it answers;
    this also warms up what a server compiles or caches on first use)."""
    prompt = replace(first, max_tokens=min(16, first.max_tokens))
    outcome = Outcome(0.0, prompt.max_tokens, prompt.input_tokens)
    async with httpx.AsyncClient(base_url=target.url, timeout=300.0) as client:
        await send(client, target, prompt, outcome)
    if outcome.error is None:
        return None
    hint = ""
    if outcome.error.startswith(("http 401", "http 403")):
        hint = ("\n  pass --key (or set TOLLGATE_API_KEY); `make serve` prints a development "
                "key: \"tollgate: development key for tenant 'dev': tg-...\"")
    return f"tollgate bench serve: the server refused a test request: {outcome.error}{hint}"


def _summary(args: argparse.Namespace, found: Sequence[RateFigures]) -> None:
    print(f"\n== {len(found)} rate(s), {args.duration:g} s of arrivals each ==")
    print(table(found))
    if args.price.given or any(f.metered_usd is not None for f in found):
        print(f"\ncost: {args.price.describe()}; metered: what the gateway charged "
              "(x-tollgate-cost-usd, usage.tollgate_cost_usd)")
        print(costs(found))
    hot = next((f for f in found if f.saturated), None)
    if hot is not None:
        served = [f.rate for f in found if not f.saturated]
        below = f"; the highest rate served: {max(served):g} req/s" if served else ""
        print(f"\nsaturation point: {hot.rate:g} req/s{below}")
        if hot.rate != args.rates[-1]:
            print(f"not run: {', '.join(f'{r:g}' for r in args.rates if r > hot.rate)} req/s")
    for f in found:
        if not f.saturated and f.e2e_p50_ms and f.e2e_p50_ms / 1e3 > args.duration / 4:
            print(f"note: at {f.rate:g} req/s answers took {f.e2e_p50_ms / 1e3:.1f} s (p50) "
                  f"against {args.duration:g} s of arrivals; saturation shows only over several "
                  "answer lengths: raise --duration")
            break


def _write(prefix: str, meta: dict[str, Any], found: Sequence[RateFigures]) -> None:
    write_json(f"{prefix}.json", meta, found)
    write_csv(f"{prefix}.csv", found)
    print(f"\nfigures: {prefix}.json, {prefix}.csv")
    _chart([(meta["label"], found)], f"{prefix}.png",
           f"tollgate bench serve: {meta['label']} ({meta['dataset']})")


def _chart(series: Sequence[Series], path: str, title: str) -> None:
    try:
        chart(series, path, title)
    except ImportError:
        print("chart: skipped, matplotlib is not installed (pip install 'tollgate[bench]')")
    else:
        print(f"chart: {path}")


def _compare(paths: Sequence[str], prefix: str) -> int:
    series: list[Series] = []
    for path in paths:
        try:
            meta, found = read_json(path)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            print(f"tollgate bench serve: {path}: {exc}", file=sys.stderr)
            return 2
        label = meta.get("label") or path
        print(f"\n== {label} ({path}): {meta.get('dataset')} ==")
        print(table(found))
        series.append((label, found))
    if prefix:
        title = "tollgate bench serve: " + " vs ".join(label for label, _ in series)
        _chart(series, f"{prefix}.png", title)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
