"""What Tollgate adds: the same wrk load straight to a fast upstream and through the gateway.

Concurrency 1, 32 and 128, non-streamed and streamed (16 chunks), interleaved in one run;
prints requests/s, p50/p99 latency, the added latency and the throughput ratio.
Run: ``tollgate bench overhead [--duration S] [--rounds N]`` (needs Debian's ``wrk``).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml

ADMIN_KEY = "tg-admin-bench"
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


@dataclass(frozen=True)
class WrkResult:
    """One wrk run: throughput, latency percentiles in ms, and failures."""

    rps: float
    p50_ms: float
    p99_ms: float
    errors: int


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_ready(url: str, proc: subprocess.Popen[bytes], seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: process exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready after {seconds}s")


def _lua(body: str, key: str | None) -> str:
    auth = f'wrk.headers["Authorization"] = "Bearer {key}"\n' if key else ""
    return (
        'wrk.method = "POST"\n'
        f"wrk.body = [[{body}]]\n"
        'wrk.headers["Content-Type"] = "application/json"\n' + auth
    )


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if not m:
        raise ValueError(f"cannot read wrk latency {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def run_wrk(url: str, script: Path, connections: int, duration: float) -> WrkResult:
    """One wrk run with one thread (wrk shares the two cores with both servers)."""
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--latency",
         "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"^\s*50%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"^\s*99%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = int(bad.group(1)) if bad else 0
    errors += sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    return WrkResult(rps, p50, p99, errors)


def _gateway_config(upstream: str, port: int) -> dict[str, object]:
    return {
        "server": {"host": "127.0.0.1", "port": port, "max_tokens_limit": 4096},
        "models": [{"id": "bench-model"}],
        "backends": [
            {
                "name": "upstream",
                "kind": "vllm",
                "url": upstream,
                "models": {"bench-model": "bench-upstream"},
                "price": {"usd_per_mtok_input": 0.1, "usd_per_mtok_output": 0.4},
            }
        ],
        "tenants": {"seed": [{"id": "bench", "dev_key": True}]},
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run the comparison and print the table."""
    parser = argparse.ArgumentParser(prog="tollgate bench overhead", description=__doc__)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved repetitions")
    parser.add_argument("--concurrency", default="1,32,128")
    parser.add_argument("--chunks", type=int, default=16)
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is not installed: apt-get install wrk", file=sys.stderr)
        return 2
    levels = [int(c) for c in args.concurrency.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        return _run(Path(tmp), levels, args.duration, args.rounds, args.chunks)


def _run(tmp: Path, levels: list[int], duration: float, rounds: int, chunks: int) -> int:
    up_port, gw_port = free_port(), free_port()
    upstream_url = f"http://127.0.0.1:{up_port}"
    gateway_url = f"http://127.0.0.1:{gw_port}"
    config = tmp / "tollgate.yaml"
    config.write_text(yaml.safe_dump(_gateway_config(upstream_url, gw_port)))
    env = {**os.environ, "TOLLGATE_ADMIN_KEY": ADMIN_KEY}
    env.pop("TOLLGATE_REDIS_URL", None)
    log = (tmp / "gateway.log").open("wb")
    upstream = subprocess.Popen([sys.executable, "-m", "bench.upstream", str(up_port), str(chunks)])
    gateway = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        _wait_ready(f"{upstream_url}/health", upstream)
        _wait_ready(f"{gateway_url}/readyz", gateway)
        key = re.search(
            rb"development key for tenant 'bench': (tg-\S+)", (tmp / "gateway.log").read_bytes()
        )
        if key is None:
            raise RuntimeError("the gateway printed no development key")
        secret = key.group(1).decode()
        results = _measure(tmp, levels, duration, rounds, upstream_url, gateway_url, secret, chunks)
    finally:
        for proc in (gateway, upstream):
            proc.terminate()
            proc.wait(10)
        log.close()
    _print(results, levels, chunks)
    return 0


Key = tuple[str, int, str]  # (mode, concurrency, "direct" | "tollgate")


def _measure(
    tmp: Path,
    levels: list[int],
    duration: float,
    rounds: int,
    upstream_url: str,
    gateway_url: str,
    secret: str,
    chunks: int,
) -> dict[Key, list[WrkResult]]:
    bodies = {
        "json": '{"model": "%s", "prompt": "Say something", "max_tokens": %d}',
        "stream": '{"model": "%s", "prompt": "Say something", "max_tokens": %d, "stream": true}',
    }
    scripts: dict[tuple[str, str], Path] = {}
    for mode, template in bodies.items():
        for target, model, key in (
            ("direct", "bench-upstream", None),
            ("tollgate", "bench-model", secret),
        ):
            path = tmp / f"{mode}-{target}.lua"
            path.write_text(_lua(template % (model, chunks), key))
            scripts[(mode, target)] = path
    urls = {"direct": f"{upstream_url}/v1/completions", "tollgate": f"{gateway_url}/v1/completions"}
    results: dict[Key, list[WrkResult]] = {}
    for _ in range(rounds):
        for conc in levels:
            for mode in bodies:
                for target in ("direct", "tollgate"):  # interleaved: drift hits both alike
                    res = run_wrk(urls[target], scripts[(mode, target)], conc, duration)
                    results.setdefault((mode, conc, target), []).append(res)
    return results


def _print(results: dict[Key, list[WrkResult]], levels: list[int], chunks: int) -> None:
    print(f"\nTollgate overhead (median of rounds; streamed = {chunks} chunks; wrk -t1)")
    head = (
        f"{'mode':<7}{'conc':>5}{'direct rps':>12}{'tollgate rps':>14}{'ratio':>8}"
        f"{'p50 d/t ms':>16}{'added p50':>11}{'p99 d/t ms':>18}{'errors':>8}"
    )
    print(head)
    print("-" * len(head))
    for mode in ("json", "stream"):
        for conc in levels:
            d = _median(results[(mode, conc, "direct")])
            t = _median(results[(mode, conc, "tollgate")])
            print(
                f"{mode:<7}{conc:>5}{d.rps:>12.0f}{t.rps:>14.0f}{t.rps / d.rps:>8.1%}"
                f"{f'{d.p50_ms:.2f}/{t.p50_ms:.2f}':>16}{t.p50_ms - d.p50_ms:>11.3f}"
                f"{f'{d.p99_ms:.2f}/{t.p99_ms:.2f}':>18}{d.errors + t.errors:>8}"
            )


def _median(runs: list[WrkResult]) -> WrkResult:
    return WrkResult(
        statistics.median(r.rps for r in runs),
        statistics.median(r.p50_ms for r in runs),
        statistics.median(r.p99_ms for r in runs),
        sum(r.errors for r in runs),
    )


if __name__ == "__main__":
    raise SystemExit(main())
