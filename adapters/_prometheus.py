"""A small reader for the Prometheus text exposition format, enough for load probes."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

Sample = tuple[Mapping[str, str], float]


def parse_metrics(text: str, names: Iterable[str]) -> dict[str, list[Sample]]:
    """The samples of the metric families in ``names``; other lines are not parsed at all."""
    wanted = set(names)
    found: dict[str, list[Sample]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] == "#":
            continue
        brace = line.find("{")
        space = line.find(" ")
        end = brace if 0 <= brace < space or (brace >= 0 and space < 0) else space
        name = line[:end] if end >= 0 else line
        if name not in wanted:
            continue
        labels: dict[str, str] = {}
        rest = line[end:]
        if rest.startswith("{"):
            close = rest.rfind("}")
            if close < 0:
                continue
            labels = _labels(rest[1:close])
            rest = rest[close + 1 :]
        fields = rest.split()
        if not fields:
            continue
        try:
            value = float(fields[0])
        except ValueError:
            continue
        found.setdefault(name, []).append((labels, value))
    return found


def _labels(body: str) -> dict[str, str]:
    labels: dict[str, str] = {}
    i, n = 0, len(body)
    while i < n:
        eq = body.find("=", i)
        if eq < 0:
            break
        key = body[i:eq].strip().lstrip(",").strip()
        j = eq + 1
        if j >= n or body[j] != '"':
            break
        j += 1
        chars: list[str] = []
        while j < n and body[j] != '"':
            if body[j] == "\\" and j + 1 < n:
                j += 1
                chars.append({"n": "\n"}.get(body[j], body[j]))
            else:
                chars.append(body[j])
            j += 1
        labels[key] = "".join(chars)
        i = j + 1
    return labels


def total(samples: Mapping[str, list[Sample]], name: str, **match: str) -> float | None:
    """Sum of the samples of ``name`` whose labels include ``match``; None when absent."""
    values = [
        v
        for labels, v in samples.get(name, ())
        if all(labels.get(k) == w for k, w in match.items())
    ]
    return sum(values) if values else None


def mean(samples: Mapping[str, list[Sample]], name: str) -> float | None:
    """Mean over the series of ``name`` (e.g. one per engine); None when absent."""
    values = [v for _, v in samples.get(name, ())]
    return sum(values) / len(values) if values else None
