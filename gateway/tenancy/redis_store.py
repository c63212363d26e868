"""``RedisStore``: tenancy state shared by every replica, one Lua call per admit and per settle.

Key layout (``tg`` is ``store.key_prefix``): a tenant's keys share the hash tag ``{tenant}`` so
its scripts run on one Redis Cluster slot: ``tg:{acme}:tenant``, ``:keys``, ``:rq`` (accepted
requests), ``:tok`` (token buckets), ``:fl`` (leases), ``:res`` (holds), ``:rcost``, ``:spend``,
``:rec:<rid>``, ``:recs``, ``:ck`` (checkpoints of live requests), ``:agg:<hour>``,
``:w:<backend>:<window>``, and for a key with limits of its own ``:key:<id>:rq``, ``:tok``,
``:fl``, ``:res``, ``:rcost``, ``:spend`` (its level, admitted beside the tenant's in one script).
Fleet-wide keys: ``tg:tenants``, ``tg:former``, ``tg:keyids``, ``tg:auth:<sha256>``,
``tg:win:<backend>:<window>``, ``tg:idle:<backend>``, ``tg:backends``, ``tg:recon:<backend>``,
``tg:late``, ``tg:lock:<name>``, ``tg:replicas`` (live replicas).
On a Redis Cluster (``redis+cluster://``, see ``redis_client``) every script runs on one slot,
fleet-wide keys are only ever used one key per command, pipelines are never transactions, and
nothing enumerates keys but ``drop_everything`` (a SCAN of every primary, for resets).

A heartbeat per replica (``leases``) renews its requests' leases, checkpoints long ones and
announces the replica; while Redis is away, admission runs on local shares (``outage``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, replace
from typing import Any, Literal, NamedTuple, TypeVar

import orjson
from redis.exceptions import ClusterError, NoScriptError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.errors import InvalidRequest, StoreUnavailable, Unauthenticated
from gateway.settings import StoreSettings
from gateway.tenancy import keys, scripts
from gateway.tenancy.leases import Lease, Leases, Progress
from gateway.tenancy.ledger import (
    IDLE,
    UNATTRIBUTED,
    Cell,
    Counters,
    Share,
    WindowLedger,
    WindowTotals,
    check_group_by,
    group_rows,
    hour_of,
    hours_between,
)
from gateway.tenancy.limits import BUCKETS, LimitExceeded, month_of, over_budget, to_nano
from gateway.tenancy.limits import too_large as too_large_error
from gateway.tenancy.models import (
    Admission,
    ApiKey,
    IssuedKey,
    KeyScope,
    Limits,
    MeteredLimits,
    Principal,
    Tenant,
    UsageRecord,
    UsageRow,
)
from gateway.tenancy.outage import LocalShares, key_meter
from gateway.tenancy.redis_client import UNREACHABLE, Client, Script, connect
from gateway.tenancy.spool import Spool, read_segment
from gateway.tenancy.tenants import UnknownKey, UnknownTenant, checked_id

log = logging.getLogger(__name__)
T = TypeVar("T")
_Call = tuple[Script, list[Any], list[Any]]  # a script, its keys and its arguments
RETENTION_S = 90 * 86400  # how long per-request ledger records and window shares are kept
_UNLIMITED = -1
# Errors a pipeline reports per command when a node did not answer (the others may have).
_UNANSWERED = (RedisConnectionError, RedisTimeoutError, ClusterError)
# A PING or a goodbye that got no answer in time.
_NO_ANSWER: tuple[type[BaseException], ...] = (*UNREACHABLE, OSError, TimeoutError)
_EXACT_IN_LUA = 2**53


class _Checkpoint(NamedTuple):
    """One checkpoint in a heartbeat: the lease, what it books, and the window it books into."""

    lease: Lease
    usage: UsageRecord
    call: _Call
    window: str  # "backend|window", marked late if reconciliation passed it


def _checked(limits: MeteredLimits) -> dict[str, Any]:
    """The limits as a dict; a number Lua's doubles cannot hold exactly is refused first."""
    fields = asdict(limits)
    for name, value in fields.items():
        if isinstance(value, int | float) and not abs(value) <= _EXACT_IN_LUA:  # NaN fails too
            raise InvalidRequest(f"{name!r} is out of range.", param=name)
    return fields


def _limits_json(limits: Limits) -> bytes:
    """The limits as stored (see ``_checked``)."""
    return orjson.dumps(_checked(limits))


def _limits_from(raw: str) -> Limits:
    data = orjson.loads(raw)
    if data.get("allowed_models") is not None:
        data["allowed_models"] = tuple(data["allowed_models"])
    return Limits(**data)


def _scope(data: dict[str, Any] | None) -> KeyScope:
    """A key's scope as stored (JSON: the model list is a list)."""
    if not data:
        return KeyScope()
    models = data.get("allowed_models")
    return KeyScope(data.get("name"), data.get("expires_at"),
                    tuple(models) if models is not None else None,
                    MeteredLimits(**(data.get("limits") or {})))  # fmt: skip


def _scope_json(scope: KeyScope) -> dict[str, Any]:
    """A key's scope as stored; its limits are checked like a tenant's."""
    return {**asdict(scope), "limits": _checked(scope.limits)}


def _str(value: bytes | str) -> str:
    """Replies are already ``str`` (``decode_responses``); this only narrows the type."""
    return value.decode() if isinstance(value, bytes) else value


def _arg(value: int | float | None) -> int | float:
    return _UNLIMITED if value is None else value


def _limit_args(limits: MeteredLimits) -> list[int | float]:
    """A level's limits as the admission script reads them: rpm, tpm, concurrency, budget."""
    budget = limits.monthly_budget_usd
    return [
        _arg(limits.requests_per_minute), _arg(limits.tokens_per_minute),
        _arg(limits.max_concurrent), _UNLIMITED if budget is None else to_nano(budget),
    ]  # fmt: skip


# The Redis keys of a key's own level each script takes (names under ``key:<id>:``).
_ADMIT_KEY_LEVEL = ("rq", "tok", "fl", "res", "rcost", "spend")
_SETTLE_KEY_LEVEL = ("fl", "res", "tok", "rcost", "spend")
_CHECKPOINT_KEY_LEVEL = ("res", "rcost", "spend")


class RedisStore:
    """The Store on Redis (or Redis Cluster); see the module docstring for the key layout."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "tg",
        default_limits: Limits | None = None,
        limit_window_s: float = 60.0,
        metering_window_s: float = 60.0,
        key_cache_ttl_s: float = 1.0,
        failure_policy: Literal["open", "closed"] = "open",
        spool_dir: str | None = None,
        outage_trust_s: float | None = None,
        lease_ttl_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.redis: Client = connect(url)  # one server, or a cluster (see ``redis_client``)
        self._p = prefix
        self._defaults = default_limits or Limits()
        self._window_s = limit_window_s
        self._metering_window_s = metering_window_s
        self._cache_ttl = key_cache_ttl_s
        # How old a key check may be and still be trusted while Redis is away: the
        # revocation promise (a revoked key stops within the cache TTL) holds by default.
        self._outage_trust = key_cache_ttl_s if outage_trust_s is None else outage_trust_s
        self._clock = clock
        self._policy = failure_policy
        self._spool = Spool(spool_dir) if spool_dir else None
        self._cache: dict[str, tuple[float, Principal | None]] = {}
        script = functools.partial(Script, self.redis)
        self._admit = script(scripts.ADMIT)
        self._settle = script(scripts.SETTLE)
        self._book = script(scripts.BOOK)
        self._unlock = script(scripts.UNLOCK)
        self._flush = script(scripts.FLUSH)
        self._create = script(scripts.CREATE_TENANT)
        self._checkpoint = script(scripts.CHECKPOINT)
        self._renew = script(scripts.RENEW)
        self._announce = script(scripts.ANNOUNCE)
        self._swap = script(scripts.SWAP)
        self._leases = Leases(lease_ttl_s)
        self._local = LocalShares(limit_window_s)
        self._replica = secrets.token_hex(8)
        self._heart: asyncio.Task[None] | None = None
        self._unreachable = False  # the last call to Redis failed
        self._replayer: asyncio.Task[None] | None = None
        self._closing = False
        self._replayed = asyncio.Event()
        self._wake = asyncio.Event()  # beat now: Redis is back, leases may need listing

    @classmethod
    def from_settings(
        cls, settings: StoreSettings, defaults: Limits, *, metering_window_s: float
    ) -> RedisStore:
        """The store a config describes (``redis_url`` must be set)."""
        assert settings.redis_url
        return cls(
            settings.redis_url,
            prefix=settings.key_prefix,
            default_limits=defaults,
            limit_window_s=settings.limit_window_s,
            metering_window_s=metering_window_s,
            key_cache_ttl_s=settings.key_cache_ttl_s,
            failure_policy=settings.failure_policy,
            spool_dir=settings.spool_dir,
            outage_trust_s=settings.outage_trust_s,
            lease_ttl_s=settings.lease_ttl_s,
        )

    @property
    def windows(self) -> WindowLedger:
        """The window ledger reconciliation works on (this store itself)."""
        return self

    def _t(self, tenant: str, name: str) -> str:
        return f"{self._p}:{{{tenant}}}:{name}"

    async def _call(self, work: Awaitable[T]) -> T:
        """Run an admin or report command, turning an outage into ``StoreUnavailable``."""
        try:
            return await work
        except UNREACHABLE as exc:
            raise StoreUnavailable("The tenancy store is unreachable; try again shortly.") from exc

    # Tenants

    async def create_tenant(self, tenant_id: str, limits: Limits | None = None) -> Tenant:
        """Create a tenant; an existing one is returned unchanged."""
        checked_id(tenant_id)
        return await self._call(self._create_tenant(tenant_id, limits or self._defaults))

    async def _create_tenant(self, tenant_id: str, limits: Limits) -> Tenant:
        stored = _limits_json(limits)  # refused before anything is written
        now = time.time()
        # The index first: readers skip an id without a record, so a failure between the two
        # writes leaves nothing half-made, and the record itself is one script (all or nothing).
        await self.redis.sadd(f"{self._p}:tenants", tenant_id)
        reply = await self._create(keys=[self._t(tenant_id, "tenant")], args=[repr(now), stored])
        if int(reply[0]) == 1:
            return Tenant(tenant_id, limits, now)
        return Tenant(tenant_id, _limits_from(_str(reply[2])), float(reply[1]))

    async def _read_tenant(self, tenant_id: str) -> Tenant | None:
        data = await self.redis.hgetall(self._t(tenant_id, "tenant"))
        if "limits" not in data:
            return None
        return Tenant(tenant_id, _limits_from(_str(data["limits"])), float(data["created_at"]))

    async def get_tenant(self, tenant_id: str) -> Tenant | None:
        """The tenant, or ``None``."""
        return await self._call(self._read_tenant(tenant_id))

    async def list_tenants(self) -> Sequence[Tenant]:
        """Every tenant, by id."""
        ids = sorted(map(_str, await self._call(self.redis.smembers(f"{self._p}:tenants"))))
        found = [await self.get_tenant(tenant_id) for tenant_id in ids]
        return [t for t in found if t is not None]

    async def update_limits(self, tenant_id: str, limits: Limits) -> Tenant:
        """Replace a tenant's limits (every replica sees them within the key cache's TTL)."""
        tenant = await self.get_tenant(tenant_id)
        if tenant is None:
            raise UnknownTenant(tenant_id)
        key = self._t(tenant_id, "tenant")
        await self._call(self.redis.hset(key, "limits", _limits_json(limits)))
        return replace(tenant, limits=limits)

    async def delete_tenant(self, tenant_id: str) -> bool:
        """Delete a tenant and revoke its keys; its usage stays in the ledger."""
        if await self.get_tenant(tenant_id) is None:
            return False
        for record in await self.list_keys(tenant_id):
            await self.revoke_key(record.id)
        pipe = self.redis.pipeline(transaction=False)
        pipe.delete(self._t(tenant_id, "tenant"))
        pipe.srem(f"{self._p}:tenants", tenant_id)
        pipe.sadd(f"{self._p}:former", tenant_id)
        await self._call(pipe.execute())
        return True

    # Keys

    async def create_key(self, tenant_id: str, scope: KeyScope | None = None) -> IssuedKey:
        """Issue a key, creating the tenant with default limits if it does not exist.

        The auth entry carries the key's scope, and Redis deletes it at the key's expiry.
        """
        scope = scope or KeyScope()
        stored = _scope_json(scope)  # refused before anything is written
        await self.create_tenant(tenant_id)
        secret = keys.new_secret()
        record = ApiKey(keys.new_key_id(), tenant_id, keys.shown_prefix(secret), time.time(),
                        scope=scope)  # fmt: skip
        digest = keys.hash_secret(secret)
        entry = orjson.dumps({"key": record.id, "tenant": tenant_id, "scope": stored})
        expires = None if scope.expires_at is None else max(1, math.ceil(scope.expires_at))
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(self._t(tenant_id, "keys"), record.id, self._key_json(record, digest))
        pipe.hset(f"{self._p}:keyids", record.id, tenant_id)
        pipe.set(f"{self._p}:auth:{digest}", entry, exat=expires)
        await self._call(pipe.execute())
        self._cache.pop(digest, None)
        return IssuedKey(record, secret)

    @staticmethod
    def _key_json(record: ApiKey, digest: str) -> bytes:
        return orjson.dumps({**asdict(record), "sha256": digest})

    @staticmethod
    def _key_record(data: dict[str, Any]) -> ApiKey:
        data.pop("sha256", None)
        return ApiKey(**{**data, "scope": _scope(data.get("scope"))})

    async def list_keys(self, tenant_id: str | None = None) -> Sequence[ApiKey]:
        """Key records (never secrets), oldest first."""
        if tenant_id is None:
            owners = await self._call(self.redis.hgetall(f"{self._p}:keyids"))
            tenants = {_str(owner) for owner in owners.values()}
        else:
            tenants = {tenant_id}
        found: list[ApiKey] = []
        for tenant in sorted(tenants):
            raw = await self._call(self.redis.hgetall(self._t(tenant, "keys")))
            for value in raw.values():
                found.append(self._key_record(orjson.loads(value)))
        return sorted(found, key=lambda r: (r.created_at, r.id))

    async def _key_data(self, key_id: str) -> tuple[str, str, dict[str, Any]] | None:
        """A key's tenant, its stored record as written, and decoded."""
        owner = await self._call(self.redis.hget(f"{self._p}:keyids", key_id))
        tenant = _str(owner) if owner is not None else ""
        raw = await self._call(self.redis.hget(self._t(tenant, "keys"), key_id)) if tenant else None
        return None if raw is None else (tenant, _str(raw), orjson.loads(raw))

    async def get_key(self, key_id: str) -> ApiKey | None:
        """One key's record (revoked ones too), or ``None``."""
        found = await self._key_data(key_id)
        return None if found is None else self._key_record(found[2])

    async def update_key_limits(self, key_id: str, limits: MeteredLimits) -> ApiKey:
        """Replace an active key's own limits (every replica applies them within the key
        cache's TTL); raises ``UnknownKey``. A revocation at the same time wins."""
        for _ in range(3):  # another update may slip in between the read and the write
            found = await self._key_data(key_id)
            if found is None or found[2]["revoked"]:
                raise UnknownKey(key_id)
            tenant, raw, data = found
            current = _scope(data.get("scope"))
            if current.expired(time.time()):
                raise UnknownKey(key_id)
            scope = _scope_json(replace(current, limits=limits))
            new = orjson.dumps({**data, "scope": scope})
            swapped = self._swap(keys=[self._t(tenant, "keys")], args=[key_id, raw, new])
            if int(await self._call(swapped)):
                break
        else:
            raise StoreUnavailable("The key changed under this update three times; try again.")
        entry = orjson.dumps({"key": key_id, "tenant": tenant, "scope": scope})
        auth = self.redis.set(f"{self._p}:auth:{data['sha256']}", entry, xx=True, keepttl=True)
        if not await self._call(auth):  # revoked (or expired) since: the key stays refused
            raise UnknownKey(key_id)
        self._cache.pop(data["sha256"], None)
        return self._key_record(orjson.loads(new))

    async def revoke_key(self, key_id: str) -> bool:
        """Revoke a key everywhere; replicas stop accepting it within the cache TTL (<= 1 s)."""
        found = await self._key_data(key_id)
        if found is None:
            return False
        tenant, _, data = found
        if data["revoked"]:
            return False
        data["revoked"] = True
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(self._t(tenant, "keys"), key_id, orjson.dumps(data))
        pipe.delete(f"{self._p}:auth:{data['sha256']}")
        await self._call(pipe.execute())
        self._cache.pop(data["sha256"], None)
        return True

    async def authenticate(self, secret: str) -> Principal:
        """The caller behind ``secret``, from a per-replica cache of at most ``key_cache_ttl_s``."""
        if not keys.looks_like_secret(secret):
            raise Unauthenticated("Incorrect API key provided.")
        digest = keys.hash_secret(secret)
        now = self._clock()
        cached = self._cache.get(digest)
        if cached is not None and cached[0] > now:
            return self._known(cached[1], time.time())
        try:
            principal = await self._lookup(digest)
        except UNREACHABLE as exc:
            self._lost()
            # Fail open only for keys this replica saw valid, and only as long as a revocation
            # elsewhere could not have been seen anyway.
            if self._policy == "open" and cached is not None and cached[1] is not None:
                checked_at = cached[0] - self._cache_ttl
                if now - checked_at <= self._outage_trust:
                    return self._known(cached[1], time.time())
            raise StoreUnavailable("The tenancy store is unreachable; try again shortly.") from exc
        if len(self._cache) > 100_000:
            self._cache.clear()
        self._cache[digest] = (now + self._cache_ttl, principal)
        return self._known(principal, time.time())

    @staticmethod
    def _known(principal: Principal | None, wall: float) -> Principal:
        if principal is None:
            raise Unauthenticated("Incorrect API key provided.")
        if principal.scope.expired(wall):
            raise Unauthenticated("This API key has expired.")
        return principal

    async def _lookup(self, digest: str) -> Principal | None:
        found = await self.redis.get(f"{self._p}:auth:{digest}")
        if found is None:
            return None
        text = _str(found)
        if text.startswith("{"):
            entry = orjson.loads(text)
            key_id, tenant_id, scope = entry["key"], entry["tenant"], _scope(entry.get("scope"))
        else:  # written before keys had scopes: "key_id tenant"
            (key_id, tenant_id), scope = text.split(" ", 1), KeyScope()
        tenant = await self._read_tenant(tenant_id)
        return Principal(tenant, key_id, scope) if tenant else None

    # Admission and settlement

    async def admit(self, principal: Principal, *, tokens: int, cost_usd: float) -> Admission:
        """One EVALSHA on the tenant's slot: check and reserve every limit (see ``limits``), the
        key's own beside the tenant's when it has any (six more keys, same slot).

        While Redis is away the request is checked against this replica's share of each
        limit instead (``failure_policy: open``), or refused (``closed``); never unchecked.
        """
        tenant, limits = principal.tenant.id, principal.tenant.limits
        own = principal.scope.limits
        metered = not own.unlimited
        rid = keys.new_request_id()
        cost = to_nano(cost_usd)
        month = month_of(time.time())
        t = self._t
        script_keys = [t(tenant, "rq"), t(tenant, "tok"), t(tenant, "fl"), t(tenant, "res"),
                       t(tenant, "rcost"), t(tenant, "spend")]  # fmt: skip
        args: list[Any] = [rid, self._window_s, tokens, cost, *_limit_args(limits), month,
                           self._leases.ttl_s, BUCKETS]  # fmt: skip
        if metered:
            script_keys += self._key_level(tenant, principal.key_id, _ADMIT_KEY_LEVEL)
            args += _limit_args(own)
        self._ensure_heartbeat()
        try:
            answer = await self._admit(keys=script_keys, args=args)
        except UNREACHABLE as exc:
            self._lost()
            if self._policy == "closed":
                raise StoreUnavailable("The tenancy store is unreachable.") from exc
            now = time.time()
            self._local.admit(rid, principal, now, tokens, cost)
            admission = Admission(rid, tenant, principal.key_id, tokens, cost_usd, now, metered)
            self._leases.hold(admission)  # listed in Redis by the first renewal that reaches it
            return admission
        self._found()
        outcome = answer[0]
        if outcome == "ok":
            self._local.recovered(tenant)
            self._local.known(tenant, month, int(answer[2]))
            if metered:
                meter = key_meter(tenant, principal.key_id)
                self._local.recovered(meter)
                self._local.known(meter, month, int(answer[3]))
            at = float(answer[1])
            admission = Admission(rid, tenant, principal.key_id, tokens, cost_usd, at, metered)
            self._leases.hold(admission)
            return admission
        key = principal.key_label if answer[1] == "key" else None
        if outcome == "quota":
            raise over_budget(key)
        if outcome == "too_large":
            tpm = (own if key else limits).tokens_per_minute
            raise too_large_error(tokens, tpm or 0, key)
        raise LimitExceeded(outcome, retry_after=float(answer[2]), at=float(answer[3]), key=key)

    def _key_level(self, tenant: str, key_id: str, names: Sequence[str]) -> list[str]:
        """The Redis keys of a key's own limits, under its tenant's hash tag (one slot)."""
        return [self._t(tenant, f"key:{key_id}:{name}") for name in names]

    async def settle(self, admission: Admission, usage: UsageRecord) -> None:
        """One EVALSHA: release the hold, book actuals, aggregates and the record, once.

        When Redis is unreachable the settlement is spooled to disk and replayed later.
        """
        usage = replace(usage, request_id=admission.request_id, tenant=admission.tenant)
        self._leases.release(admission.request_id)
        if self._local.holds(admission.request_id):
            t_end = usage.started_at + usage.duration_s
            tokens = usage.prompt_tokens + usage.completion_tokens
            self._local.settle(
                admission.request_id, time.time(), t_end, tokens, to_nano(usage.cost_usd)
            )
        try:
            await self._settle_now(admission, usage)
        except UNREACHABLE:
            self._lost()
            if self._spool is None:
                log.error("store unreachable and no spool: usage of %s lost", admission.request_id)
                return
            await asyncio.to_thread(self._spool.append, admission, usage)
            self._start_replay()
            return
        if self._spool is not None and self._replayer is None and self._spool.pending():
            self._start_replay()  # leftovers of an earlier run or of a dead replica

    async def _settle_now(
        self, admission: Admission, usage: UsageRecord, *, replay: bool = False
    ) -> None:
        tenant, rid = admission.tenant, admission.request_id
        t_end = usage.started_at + usage.duration_s
        window = int(t_end // self._metering_window_s)
        hour = hour_of(t_end)
        cost = to_nano(usage.cost_usd)
        month = month_of(t_end)
        t = self._t
        script_keys = [
            t(tenant, "fl"), t(tenant, "res"), t(tenant, "tok"), t(tenant, "rcost"),
            t(tenant, "spend"), t(tenant, f"rec:{rid}"), t(tenant, "recs"),
            t(tenant, f"agg:{hour}"), t(tenant, f"w:{usage.backend}:{window}"),
            t(tenant, "hours"), t(tenant, "ck"),
        ]  # fmt: skip
        if admission.key_metered:
            script_keys += self._key_level(tenant, admission.key_id, _SETTLE_KEY_LEVEL)
        answer = await self._settle(
            keys=script_keys,
            args=[rid, self._window_s, t_end, usage.prompt_tokens + usage.completion_tokens, cost,
                  month, orjson.dumps(asdict(usage)), usage.started_at, _cell(usage),
                  usage.prompt_tokens, usage.completion_tokens, usage.weighted_tokens,
                  usage.model, RETENTION_S, BUCKETS, (window + 1.5) * self._metering_window_s,
                  hour],
        )  # fmt: skip
        code = int(answer[0])
        if code:
            self._local.known(tenant, month, int(answer[1]))
            if admission.key_metered:
                self._local.known(key_meter(tenant, admission.key_id), month, int(answer[2]))
        # Reconciliation may already have run: have it run again. A replayed repeat (0) may be
        # one whose first run was cut off before this marker was written.
        if code == 2 or (replay and code == 0):
            await self.redis.sadd(f"{self._p}:late", f"{usage.backend}|{window}")

    def track(self, admission: Admission, progress: Progress) -> None:
        """Checkpoint ``progress()`` of a live request on each heartbeat until it settles."""
        self._leases.follow(admission, progress)

    # Heartbeat: leases, checkpoints, replicas

    async def start(self) -> None:
        """Announce this replica and start its heartbeat (admission starts it too)."""
        self._ensure_heartbeat()

    def _ensure_heartbeat(self) -> None:
        if self._heart is None and not self._closing:
            self._heart = asyncio.get_running_loop().create_task(self._heartbeat())

    async def _heartbeat(self) -> None:
        """Every third of a lease's TTL: one round trip for the whole replica."""
        while not self._closing:
            try:
                await self._beat()
            except UNREACHABLE:
                self._lost()
            except Exception:  # the heartbeat must outlive any one bad beat
                log.exception("store heartbeat failed")
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for returns the inner result
            # when a cancellation lands as the wake fires, and this loop would go on beating
            # through the cancellation (an event loop's close then waits on it forever).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._leases.interval_s):
                    await self._wake.wait()
            self._wake.clear()

    async def _beat(self) -> None:
        beat = self._leases.beat()
        ttl = self._leases.ttl_s
        renewals: list[_Call] = [(self._announce, [f"{self._p}:replicas"], [self._replica, ttl])]
        for (tenant, key_id), rids in beat.renew.items():
            leases = self._t(tenant, "fl" if key_id is None else f"key:{key_id}:fl")
            records = [self._t(tenant, f"rec:{rid}") for rid in rids]
            renewals.append((self._renew, [leases, *records], [ttl, *rids]))
        checkpoints = [self._checkpoint_call(lease, usage) for lease, usage in beat.checkpoints]
        answers = await self._pipelined_scripts(renewals + [c.call for c in checkpoints])
        # On a cluster one node may fail while the others answer: found only if all did.
        if any(isinstance(a, _UNANSWERED) for a in answers):
            self._lost()
        else:
            self._found()
        for answer in answers[: len(renewals)]:
            if isinstance(answer, Exception):
                log.warning("lease renewal failed: %s", answer)
        if not isinstance(answers[0], Exception):
            self._local.replicas = max(int(answers[0]), 1)
        late: list[str] = []
        for checkpoint, answer in zip(checkpoints, answers[len(renewals) :], strict=True):
            if isinstance(answer, Exception):
                log.warning("checkpoint failed: %s", answer)
                continue
            if int(answer):
                Leases.booked(checkpoint.lease, checkpoint.usage)
            if int(answer) == 2:
                late.append(checkpoint.window)
        if late:
            await self.redis.sadd(f"{self._p}:late", *late)

    def _checkpoint_call(self, lease: Lease, usage: UsageRecord) -> _Checkpoint:
        """The CHECKPOINT script call booking ``usage`` so far into the current hour and window."""
        tenant, rid = lease.admission.tenant, lease.admission.request_id
        usage = replace(usage, request_id=rid, tenant=tenant)
        now = time.time()
        window, hour = int(now // self._metering_window_s), hour_of(now)
        t = self._t
        script_keys = [
            t(tenant, "res"), t(tenant, "rcost"), t(tenant, "spend"), t(tenant, f"rec:{rid}"),
            t(tenant, "ck"), t(tenant, f"agg:{hour}"), t(tenant, f"w:{usage.backend}:{window}"),
            t(tenant, "hours"),
        ]  # fmt: skip
        if lease.admission.key_metered:
            key_id = lease.admission.key_id
            script_keys += self._key_level(tenant, key_id, _CHECKPOINT_KEY_LEVEL)
        call: _Call = (
            self._checkpoint,
            script_keys,
            [rid, usage.prompt_tokens, usage.completion_tokens, to_nano(usage.cost_usd),
             repr(usage.weighted_tokens), month_of(now), _cell(usage), usage.model, hour,
             RETENTION_S, orjson.dumps(asdict(usage)), (window + 1.5) * self._metering_window_s],
        )  # fmt: skip
        return _Checkpoint(lease, usage, call, f"{usage.backend}|{window}")

    async def _pipelined_scripts(self, calls: Sequence[_Call]) -> list[Any]:
        """EVALSHA each call in one pipeline; EVAL those whose node lacks the script (restarted,
        or a replica just promoted), in a second."""
        answers = await self._evalshas(calls)
        missing = [i for i, a in enumerate(answers) if isinstance(a, NoScriptError)]
        if missing:
            again = await self._evalshas([calls[i] for i in missing], text=True)
            for i, answer in zip(missing, again, strict=True):
                answers[i] = answer
        return answers

    async def _evalshas(self, calls: Sequence[_Call], *, text: bool = False) -> list[Any]:
        pipe = self.redis.pipeline(transaction=False)
        for script, script_keys, args in calls:
            # As a raw command: a cluster pipeline refuses ``evalsha()`` because it cannot load
            # scripts, which ``Script`` does itself. It routes each call by its keys' slot.
            pipe.execute_command(*script.command(script_keys, args, text=text))
        return list(await pipe.execute(raise_on_error=False))

    def _lost(self) -> None:
        """A call to Redis failed: admission runs on local shares until one succeeds."""
        if not self._unreachable and self._policy == "open":
            log.warning(
                "tenancy store unreachable: limits are enforced per replica, each a share of "
                "%d replicas, until it answers again", self._local.replicas,
            )  # fmt: skip
        self._unreachable = True

    def _found(self) -> None:
        if self._unreachable:
            log.warning("tenancy store reachable again: limits are fleet-wide again")
            # Renew now: until this replica's leases are listed again, Redis would admit the
            # whole limit beside the requests it admitted on local shares.
            self._wake.set()
        self._unreachable = False

    @property
    def replicas(self) -> int:
        """Live replicas (this one included) as the last heartbeat counted them."""
        return self._local.replicas

    @property
    def degraded(self) -> bool:
        """Whether limits are enforced per replica, on local shares, because Redis is away."""
        return self._unreachable and self._policy == "open"

    def _start_replay(self) -> None:
        if self._replayer is None or self._replayer.done():
            self._replayed.clear()
            self._replayer = asyncio.get_running_loop().create_task(self._replay())

    async def _replay(self) -> None:
        """Wait for Redis, then settle every spooled line (idempotently) and drop the segments."""
        assert self._spool is not None
        while not self._closing:
            try:
                await self.redis.ping()
                self._spool.close_segment()
                for segment in self._spool.segments():
                    for admission, usage in read_segment(segment):
                        await self._settle_now(admission, usage, replay=True)
                    segment.unlink(missing_ok=True)
            except UNREACHABLE:
                await asyncio.sleep(0.2)  # Redis offers nothing to await on; poll gently
                continue
            if not self._spool.pending():
                break
        self._replayed.set()

    async def replayed(self) -> None:
        """Wait until the spool has been replayed (for tests and shutdown)."""
        if self._replayer is not None:
            await self._replayed.wait()

    async def record(self, tenant: str, request_id: str) -> UsageRecord | None:
        """The ledger's record of one request, if settled."""
        raw = await self._call(self.redis.get(self._t(tenant, f"rec:{request_id}")))
        if raw is None:  # never settled (its replica died): its last checkpoint, if any
            ck = self.redis.hget(self._t(tenant, "ck"), f"rec:{request_id}")
            raw = await self._call(ck)  # type: ignore[arg-type]
        return UsageRecord(**orjson.loads(raw)) if raw else None

    async def usage(
        self, *, tenant: str | None, start: float, end: float, group_by: Sequence[str]
    ) -> Sequence[UsageRow]:
        """Aggregates over the hours of [start, end), reconciled cost included."""
        fields = check_group_by(group_by)
        hours = hours_between(start, end)
        tenants = [tenant] if tenant is not None else await self._all_tenants()
        slots = await self._hours_with_usage(tenants, hours)
        pipe = self.redis.pipeline(transaction=False)
        for t, h in slots:
            pipe.hgetall(self._t(t, f"agg:{h}"))
        cells: list[tuple[Cell, Counters]] = []
        for (t, h), data in zip(slots, await self._call(pipe.execute()), strict=True):
            cells += _cells(t, h, data)
        if tenant is None:
            cells += await self._idle_cells(hours)
        return group_rows(cells, fields)

    async def _hours_with_usage(
        self, tenants: Sequence[str], hours: range
    ) -> list[tuple[str, int]]:
        """(tenant, hour) pairs in range that hold aggregates, so empty hours cost nothing."""
        if not hours:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for tenant in tenants:
            pipe.zrangebyscore(self._t(tenant, "hours"), hours.start, hours.stop - 1)
        found = await self._call(pipe.execute())
        return [(t, int(h)) for t, hs in zip(tenants, found, strict=True) for h in hs]

    async def _all_tenants(self) -> list[str]:
        current = await self._call(self.redis.smembers(f"{self._p}:tenants"))
        former = await self._call(self.redis.smembers(f"{self._p}:former"))
        return sorted({_str(t) for t in current} | {_str(t) for t in former})

    async def _idle_cells(self, hours: range) -> list[tuple[Cell, Counters]]:
        cells: list[tuple[Cell, Counters]] = []
        for raw_backend in await self._call(self.redis.smembers(f"{self._p}:backends")):
            backend = _str(raw_backend)
            idle = await self._call(self.redis.hgetall(f"{self._p}:idle:{backend}"))
            for window, nano in idle.items():
                hour = hour_of(int(window) * self._metering_window_s)
                if int(nano) and hour in hours:
                    cell = Cell(IDLE, hour, backend, IDLE, IDLE)
                    cells.append((cell, Counters(cost_nano=int(nano))))
        return cells

    async def reachable(self) -> bool:
        """Whether Redis answers a PING within a second."""
        try:
            answered = bool(await asyncio.wait_for(self.redis.ping(), 1.0))
        except _NO_ANSWER:
            self._lost()
            return False
        self._found()
        return answered

    async def aclose(self) -> None:
        """Stop replaying and close connections (the spool keeps what is left)."""
        self._closing = True
        if self._replayer is not None:
            self._replayer.cancel()
        if self._heart is not None:
            self._heart.cancel()
            with contextlib.suppress(*_NO_ANSWER):
                leave = self.redis.zrem(f"{self._p}:replicas", self._replica)
                await asyncio.wait_for(leave, 0.5)  # type: ignore[arg-type]
        await self.redis.aclose()

    async def drop_everything(self) -> None:
        """Delete every key under this store's prefix (tests and ``tollgate`` resets only).

        On a cluster the SCAN runs on every primary; each key is deleted on its own slot.
        """
        async for key in self.redis.scan_iter(match=f"{self._p}:*", count=1000):
            await self.redis.delete(key)

    # WindowLedger

    async def add_window_totals(self, totals: Mapping[tuple[str, int], WindowTotals]) -> None:
        """Add one replica's batch: a script per window, one round trip (see ``WindowLedger``)."""
        slots = [f"{backend}|{window}" for backend, window in totals]
        calls: list[_Call] = [
            (self._flush, [f"{self._p}:win:{backend}:{window}"], [
                part.requests, part.prompt_tokens, part.completion_tokens,
                repr(part.weighted_tokens),
                "" if part.instance_seconds is None else repr(part.instance_seconds),
                RETENTION_S, (window + 1.5) * self._metering_window_s,
            ])
            for (backend, window), part in totals.items()
        ]  # fmt: skip
        answers = await self._pipelined_scripts(calls)
        for answer in answers:
            if isinstance(answer, Exception):
                raise answer
        late = [slot for slot, answer in zip(slots, answers, strict=True) if int(answer)]
        if late:
            await self.redis.sadd(f"{self._p}:late", *late)

    async def window_totals(self, backend: str, windows: Sequence[int]) -> dict[int, WindowTotals]:
        """Fleet-wide totals of ``backend`` per window."""
        pipe = self.redis.pipeline(transaction=False)
        for window in windows:
            pipe.hgetall(f"{self._p}:win:{backend}:{window}")
        found = await pipe.execute()
        return {w: _window_totals(d) for w, d in zip(windows, found, strict=True)}

    async def window_shares(self, backend: str, window: int) -> dict[tuple[str, str], Share]:
        """Per (tenant, model) shares of a backend window, read from every tenant's slot."""
        tenants = await self._all_tenants()
        pipe = self.redis.pipeline(transaction=False)
        for tenant in tenants:
            pipe.hgetall(self._t(tenant, f"w:{backend}:{window}"))
        shares: dict[tuple[str, str], Share] = {}
        for tenant, data in zip(tenants, await pipe.execute(), strict=True):
            for name, value in data.items():
                model, _, field = name.rpartition("|")
                share = shares.setdefault((tenant, model), Share())
                if field == "wt":
                    share.weighted_tokens = float(value)
                elif field == "pc":
                    share.provisional_nano = int(value)
        return shares

    async def book_window(
        self,
        backend: str,
        window: int,
        window_s: float,
        allocation: Mapping[tuple[str, str], int],
        idle_nano: int,
    ) -> None:
        """Set each (tenant, model)'s adjustment for the window; re-booking moves only deltas."""
        hour = hour_of(window * window_s)
        calls: list[_Call] = [
            (self._book,
             [self._t(tenant, f"w:{backend}:{window}"), self._t(tenant, f"agg:{hour}")],
             [model, nano, f"{backend}|{model}|"])
            for (tenant, model), nano in allocation.items()
        ]  # fmt: skip
        for answer in await self._pipelined_scripts(calls):
            if isinstance(answer, Exception):
                raise answer
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(f"{self._p}:idle:{backend}", str(window), idle_nano)
        pipe.sadd(f"{self._p}:backends", backend)
        await pipe.execute()

    async def reconciled_through(self, backend: str) -> int | None:
        """The reconciliation cursor of ``backend``."""
        found = await self.redis.get(f"{self._p}:recon:{backend}")
        return int(found) if found is not None else None

    async def mark_reconciled(self, backend: str, window: int) -> None:
        """Advance the cursor (only ever forwards)."""
        key = f"{self._p}:recon:{backend}"
        current = await self.redis.get(key)
        if current is None or int(current) < window:
            await self.redis.set(key, window)

    async def take_late_windows(self) -> list[tuple[str, int]]:
        """Windows that got records after they could have been reconciled, emptied on read."""
        found: list[str] = await self.redis.spop(f"{self._p}:late", 10_000) or []  # type: ignore[assignment]
        pairs = [entry.rpartition("|") for entry in found]
        return sorted((backend, int(window)) for backend, _, window in pairs)

    async def try_lock(self, name: str, ttl_s: float) -> str | None:
        """A fleet-wide lock (SET NX PX); ``None`` when another replica holds it."""
        token = secrets.token_hex(8)
        taken = await self.redis.set(f"{self._p}:lock:{name}", token, nx=True, px=int(ttl_s * 1000))
        return token if taken else None

    async def unlock(self, name: str, token: str) -> None:
        """Release the lock if this replica still holds it."""
        await self._unlock(keys=[f"{self._p}:lock:{name}"], args=[token])


def _cell(usage: UsageRecord) -> str:
    """The aggregate fields' prefix a request is booked under: ``backend|model|key|``."""
    return f"{usage.backend}|{usage.model}|{usage.key_id}|"


def _cells(tenant: str, hour: int, data: Mapping[str, Any]) -> list[tuple[Cell, Counters]]:
    """Parse one tenant-hour aggregate hash: fields ``backend|model|key|counter``, and
    ``backend|model|adj`` (reconciliation, per model) or, written before the ledger kept keys,
    ``backend|model|counter``."""
    by_cell: dict[Cell, Counters] = {}
    for name, value in data.items():
        parts = name.split("|")
        key: str | None
        if len(parts) == 4:
            backend, model, key_id, counter = parts
            key = key_id or UNATTRIBUTED
        else:
            backend, model, counter = name.split("|", 2)
            key = None if counter == "adj" else UNATTRIBUTED
        c = by_cell.setdefault(Cell(tenant, hour, backend, model, key), Counters())
        number = int(value)
        if counter == "n":
            c.requests = number
        elif counter == "p":
            c.prompt_tokens = number
        elif counter == "c":
            c.completion_tokens = number
        elif counter == "cost":
            c.cost_nano = number
        elif counter == "adj":
            c.adjust_nano = number
    return list(by_cell.items())


def _window_totals(data: Mapping[str, Any]) -> WindowTotals:
    """Parse one backend-window totals hash (``is``: instance-seconds, absent if unobserved)."""
    seen = data.get("is")
    return WindowTotals(
        int(data.get("n", 0)), int(data.get("p", 0)), int(data.get("c", 0)),
        float(data.get("wt", 0)), None if seen is None else float(seen),
    )  # fmt: skip
