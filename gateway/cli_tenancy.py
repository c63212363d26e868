"""``tollgate tenants | keys | usage``: the admin HTTP API from a terminal (httpx)."""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TypeAlias

import httpx

if TYPE_CHECKING:  # the class is not subscriptable at run time on Python 3.11
    Subparsers: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]
else:
    Subparsers = argparse._SubParsersAction
_LIMIT_FLAGS = (
    ("--rpm", "requests_per_minute", int),
    ("--tpm", "tokens_per_minute", int),
    ("--concurrency", "max_concurrent", int),
    ("--budget", "monthly_budget_usd", float),
)


def add_subcommands(sub: Subparsers) -> None:
    """Register ``tenants``, ``keys`` and ``usage`` on the ``tollgate`` parser."""
    tenants = _group(sub, "tenants", "manage tenants and their limits")
    create = _command(tenants, "create", "create a tenant", _tenants_create)
    create.add_argument("id")
    _limit_flags(create)
    _command(tenants, "list", "list tenants", _tenants_list)
    _command(tenants, "show", "show one tenant", _tenants_show).add_argument("id")
    limits = _command(tenants, "set-limits", "change a tenant's limits", _tenants_set_limits)
    limits.add_argument("id")
    _limit_flags(limits)
    _command(tenants, "delete", "delete a tenant, revoking its keys", _tenants_delete).add_argument(
        "id"
    )

    keys = _group(sub, "keys", "issue, list and revoke API keys")
    create_key = _command(keys, "create", "issue a key (shown once)", _keys_create)
    create_key.add_argument("tenant", nargs="?", help="the tenant the key belongs to")
    create_key.add_argument("--tenant", dest="tenant_flag", metavar="TENANT", help="same")
    create_key.add_argument("--name", help="what the key is for (shown in listings)")
    create_key.add_argument("--expires-in", type=_duration, metavar="DURATION",
                            help="refused after this long: seconds, or 90m, 12h, 30d")
    create_key.add_argument("--models", help="comma-separated models the key may use "
                            "(within the tenant's)")  # fmt: skip
    _metered_flags(create_key, "the key's own, within the tenant's")
    _command(keys, "list", "list keys", _keys_list).add_argument("--tenant")
    _command(keys, "show", "show one key", _keys_show).add_argument("id")
    key_limits = _command(keys, "set-limits", "change a key's own limits", _keys_set_limits)
    key_limits.add_argument("id")
    _metered_flags(key_limits, "the key's own, within the tenant's")
    _command(keys, "revoke", "revoke a key", _keys_revoke).add_argument("id")

    usage = sub.add_parser("usage", help="tokens, cost and tokens per dollar")
    _connection_flags(usage)
    usage.add_argument("--tenant")
    usage.add_argument("--from", dest="start", help="unix seconds or ISO 8601 (month start)")
    usage.add_argument("--to", dest="end", help="unix seconds or ISO 8601 (default: now)")
    usage.add_argument("--group-by", default="tenant,backend,model",
                       help="comma-separated: tenant, key, backend, model, hour, day")  # fmt: skip
    usage.add_argument("--csv", metavar="FILE", help="write CSV to FILE ('-' for stdout)")
    usage.set_defaults(func=_usage)


def _group(sub: Subparsers, name: str, help_text: str) -> Subparsers:
    parser = sub.add_parser(name, help=help_text)
    commands = parser.add_subparsers(dest=f"{name}_command", required=True)
    return commands


def _command(group: Subparsers, name: str, help_text: str, func: Any) -> argparse.ArgumentParser:
    parser = group.add_parser(name, help=help_text)
    _connection_flags(parser)
    parser.set_defaults(func=func)
    return parser


def _connection_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url", default=os.environ.get("TOLLGATE_URL", "http://127.0.0.1:8080"),
        help="gateway address (env TOLLGATE_URL)",
    )  # fmt: skip
    parser.add_argument(
        "--admin-key", default=os.environ.get("TOLLGATE_ADMIN_KEY"),
        help="admin key (env TOLLGATE_ADMIN_KEY)",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print the API's JSON answer")


def _metered_flags(parser: argparse.ArgumentParser, whose: str | None = None) -> None:
    for flag, field, kind in _LIMIT_FLAGS:
        parser.add_argument(flag, type=kind, help=f"{field} ({whose})" if whose else None)


def _limit_flags(parser: argparse.ArgumentParser) -> None:
    _metered_flags(parser)
    parser.add_argument("--models", help="comma-separated allowed models")
    parser.add_argument("--policy", choices=["cost", "latency", "balanced"])


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(text: str) -> float:
    """Seconds from ``3600``, ``90m``, ``12h`` or ``30d``."""
    unit = _UNITS.get(text[-1:].lower())
    try:
        seconds = float(text[:-1]) * unit if unit else float(text)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 3600, 90m, 12h, 30d)")
    return seconds


def _metered_body(args: argparse.Namespace) -> dict[str, Any]:
    body = {field: getattr(args, flag[2:]) for flag, field, _ in _LIMIT_FLAGS}
    return {k: v for k, v in body.items() if v is not None}


def _limits_body(args: argparse.Namespace) -> dict[str, Any]:
    body = {"allowed_models": args.models.split(",") if args.models else None,
            "policy": args.policy}  # fmt: skip
    return {**_metered_body(args), **{k: v for k, v in body.items() if v is not None}}


def _call(args: argparse.Namespace, method: str, path: str, **kwargs: Any) -> Any:
    """One admin API call; prints the gateway's error message and exits 1 on failure."""
    if not args.admin_key:
        sys.exit("tollgate: set TOLLGATE_ADMIN_KEY or pass --admin-key")
    headers = {"Authorization": f"Bearer {args.admin_key}"}
    try:
        answer = httpx.request(method, args.url.rstrip("/") + path, headers=headers, **kwargs)
    except httpx.HTTPError as exc:
        sys.exit(f"tollgate: cannot reach {args.url}: {exc}")
    if answer.status_code >= 400:
        try:
            error = answer.json()["error"]
            message = error["message"]
        except (ValueError, KeyError, TypeError):
            message = answer.text
        else:
            if error.get("param") and error["param"] not in message:
                message += f" ({error['param']})"
        sys.exit(f"tollgate: {answer.status_code}: {message}")
    return answer.json()


def _print_json(answer: Any) -> None:
    print(json.dumps(answer, indent=2, sort_keys=True))


def _print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    cells = [[_cell(row.get(c), c) for c in columns] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    for r in cells:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)))


def _cell(value: Any, column: str = "") -> str:
    if value is None:
        return "-"
    if column.endswith("_at") and isinstance(value, int | float):
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(value))
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)


def _show_tenants(args: argparse.Namespace, answer: Any) -> None:
    if args.json:
        _print_json(answer)
        return
    tenants = answer["data"] if isinstance(answer, dict) and "data" in answer else [answer]
    _print_table(
        [{"id": t["id"], **t["limits"]} for t in tenants],
        ["id", "requests_per_minute", "tokens_per_minute", "max_concurrent",
         "monthly_budget_usd", "allowed_models", "policy"],
    )  # fmt: skip


def _tenants_create(args: argparse.Namespace) -> int:
    body = {"id": args.id, **_limits_body(args)}
    _show_tenants(args, _call(args, "POST", "/admin/tenants", json=body))
    return 0


def _tenants_list(args: argparse.Namespace) -> int:
    _show_tenants(args, _call(args, "GET", "/admin/tenants"))
    return 0


def _tenants_show(args: argparse.Namespace) -> int:
    _show_tenants(args, _call(args, "GET", f"/admin/tenants/{args.id}"))
    return 0


def _tenants_set_limits(args: argparse.Namespace) -> int:
    _show_tenants(args, _call(args, "PATCH", f"/admin/tenants/{args.id}", json=_limits_body(args)))
    return 0


def _tenants_delete(args: argparse.Namespace) -> int:
    answer = _call(args, "DELETE", f"/admin/tenants/{args.id}")
    print(json.dumps(answer) if args.json else f"deleted tenant {args.id}")
    return 0


def _keys_create(args: argparse.Namespace) -> int:
    tenant = args.tenant or args.tenant_flag
    if not tenant or (args.tenant_flag and args.tenant_flag != tenant):
        sys.exit("tollgate: name one tenant: 'keys create TENANT' or 'keys create --tenant TENANT'")
    body: dict[str, Any] = {"tenant": tenant, "name": args.name, "expires_in_s": args.expires_in,
                            "allowed_models": args.models.split(",") if args.models else None}
    body = {**{k: v for k, v in body.items() if v is not None}, **_metered_body(args)}
    issued = _call(args, "POST", "/admin/keys", json=body)
    if args.json:
        _print_json(issued)
        return 0
    print(f"key id: {issued['id']}\ntenant: {issued['tenant']}")
    limits = _key_limits(issued)
    if limits:
        print("limits: " + ", ".join(f"{k} {_cell(v)}" for k, v in limits.items()))
    print(f"secret (shown once): {issued['key']}")
    return 0


# Key listings name a key's own limits as its flags do (the tenants' use the API's names).
_KEY_COLUMNS = {field: flag[2:] for flag, field, _ in _LIMIT_FLAGS}


def _key_limits(key: dict[str, Any]) -> dict[str, Any]:
    """The limits a key has of its own, named as its flags (``rpm``, ``budget``...)."""
    limits = key.get("limits") or {}
    return {column: limits[f] for f, column in _KEY_COLUMNS.items() if limits.get(f) is not None}


def _show_keys(args: argparse.Namespace, answer: Any) -> None:
    if args.json:
        _print_json(answer)
        return
    keys = answer.get("data", [answer])
    _print_table(
        [{**k, **_key_limits(k)} for k in keys],
        ["id", "tenant", "name", "prefix", "created_at", "expires_at", "allowed_models",
         *_KEY_COLUMNS.values(), "revoked"],
    )  # fmt: skip


def _keys_list(args: argparse.Namespace) -> int:
    params = {"tenant": args.tenant} if args.tenant else None
    _show_keys(args, _call(args, "GET", "/admin/keys", params=params))
    return 0


def _keys_show(args: argparse.Namespace) -> int:
    _show_keys(args, _call(args, "GET", f"/admin/keys/{args.id}"))
    return 0


def _keys_set_limits(args: argparse.Namespace) -> int:
    _show_keys(args, _call(args, "PATCH", f"/admin/keys/{args.id}", json=_metered_body(args)))
    return 0


def _keys_revoke(args: argparse.Namespace) -> int:
    answer = _call(args, "DELETE", f"/admin/keys/{args.id}")
    print(json.dumps(answer) if args.json else f"revoked {args.id}")
    return 0


def _usage(args: argparse.Namespace) -> int:
    params = {"group_by": args.group_by}
    for name in ("tenant", "start", "end"):
        if getattr(args, name):
            params[{"start": "from", "end": "to"}.get(name, name)] = getattr(args, name)
    answer = _call(args, "GET", "/admin/usage", params=params)
    if args.json:
        _print_json(answer)
        return 0
    # Grouped by key, each key's name follows its id.
    groups = [c for g in answer["group_by"] for c in ((g, "key_name") if g == "key" else (g,))]
    columns = [*groups, "requests", "prompt_tokens", "completion_tokens",
               "cost_usd", "tokens_per_dollar"]  # fmt: skip
    if args.csv:
        _write_csv(args.csv, answer["data"], columns)
        return 0
    _print_table(answer["data"], columns)
    if answer.get("backends"):
        print()
        _print_table(answer["backends"], ["backend", "output_tokens", "cost_usd",
                                           "usd_per_mtok_output", "tokens_per_dollar"])  # fmt: skip
    return 0


def _write_csv(target: str, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    if target == "-":
        sys.stdout.write(buffer.getvalue())
    else:
        with open(target, "w", newline="") as handle:
            handle.write(buffer.getvalue())
