"""The PromQL of the Grafana dashboards in config/grafana, with Grafana's variables filled in."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "config" / "grafana" / "dashboards"
# What Grafana would substitute; ranges wide enough to cover a short test's whole history.
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "5s",
    "$__range": "5m",
    "$backend": ".*",
    "$tenant": ".*",
}
FUNCTIONS_AND_KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "offset",
    "and",
    "or",
    "unless",
    "inf",
    "nan",
    "le",
}


@dataclass(frozen=True)
class Query:
    """One expression of one panel (or template variable)."""

    dashboard: str
    panel: str
    expr: str
    exemplar: bool = False


def substitute(expr: str) -> str:
    """The expression as Prometheus receives it from Grafana."""
    for name in sorted(GRAFANA_VARIABLES, key=len, reverse=True):
        expr = expr.replace(name, GRAFANA_VARIABLES[name])
    return expr


def _variable_query(variable: dict[str, Any]) -> str | None:
    query = variable.get("query")
    text = query.get("query") if isinstance(query, dict) else query
    if not isinstance(text, str):
        return None
    match = re.fullmatch(r"label_values\((.+),\s*\w+\)", text.strip())
    return match.group(1) if match else text  # label_values(m, l) asks Prometheus for m's series


def queries() -> Iterator[Query]:
    """Every PromQL expression in every dashboard file."""
    for path in sorted(DASHBOARDS.glob("*.json")):
        board = json.loads(path.read_text())
        for variable in board.get("templating", {}).get("list", []):
            expr = _variable_query(variable)
            if expr:
                yield Query(path.name, f"${variable['name']}", expr)
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                exemplar = bool(target.get("exemplar", False))
                yield Query(path.name, panel["title"], target["expr"], exemplar)


def metric_names(expr: str) -> set[str]:
    """Metric names an expression selects (label matchers, groupings and functions removed)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        word = match.group(0)
        rest = text[match.end() :].lstrip()
        if rest.startswith("(") or word in FUNCTIONS_AND_KEYWORDS:
            continue
        if re.fullmatch(r"\d+(e\d+)?", word) or (word.startswith("e") and word[1:].isdigit()):
            continue
        names.add(word)
    return names
