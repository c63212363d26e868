"""Tenants, keys, limits, admissions and usage records: the values the store deals in."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

TENANT_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")


@dataclass(frozen=True, slots=True)
class MeteredLimits:
    """The limits admission meters, for a tenant or for one key; ``None`` means unlimited."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    max_concurrent: int | None = None
    monthly_budget_usd: float | None = None

    @property
    def unlimited(self) -> bool:
        """Whether none is set (a key without limits of its own costs admission nothing)."""
        return (self.requests_per_minute is None and self.tokens_per_minute is None
                and self.max_concurrent is None and self.monthly_budget_usd is None)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Limits(MeteredLimits):
    """A tenant's limits; ``None`` means unlimited (or, for models, every model)."""

    allowed_models: tuple[str, ...] | None = None
    policy: str | None = None  # default routing policy for this tenant


@dataclass(frozen=True, slots=True)
class Tenant:
    """A team that holds API keys and is limited and billed as one."""

    id: str
    limits: Limits = field(default_factory=Limits)
    created_at: float = 0.0

    def may_use(self, model: str) -> bool:
        """Whether the tenant's allowed-model list admits ``model``."""
        allowed = self.limits.allowed_models
        return allowed is None or model in allowed


@dataclass(frozen=True, slots=True)
class KeyScope:
    """What one key may do within its tenant's limits: a name, an expiry, fewer models, and
    limits of its own, metered beside (never instead of) the tenant's."""

    name: str | None = None
    expires_at: float | None = None  # unix seconds; refused from then on
    allowed_models: tuple[str, ...] | None = None  # None: whatever the tenant may use
    limits: MeteredLimits = field(default_factory=MeteredLimits)

    def expired(self, now: float) -> bool:
        """Whether the key no longer authenticates at ``now``."""
        return self.expires_at is not None and now >= self.expires_at


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A key's public record; the secret itself is shown once and stored only as SHA-256."""

    id: str
    tenant: str
    prefix: str  # the first characters of the secret, to recognise it in listings
    created_at: float
    revoked: bool = False
    scope: KeyScope = field(default_factory=KeyScope)


@dataclass(frozen=True, slots=True)
class IssuedKey:
    """A newly created key: its record and the secret, which is never stored."""

    record: ApiKey
    secret: str


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the tenant and the key it used."""

    tenant: Tenant
    key_id: str
    scope: KeyScope = field(default_factory=KeyScope)

    def may_use(self, model: str) -> bool:
        """Whether both the tenant's and the key's allowed-model lists admit ``model``."""
        allowed = self.scope.allowed_models
        return self.tenant.may_use(model) and (allowed is None or model in allowed)

    @property
    def key_label(self) -> str:
        """How refusals of the key's own limits name it: ``key 'ci-bot'``, or by id."""
        return f"key {self.scope.name!r}" if self.scope.name else f"key {self.key_id}"


@dataclass(frozen=True, slots=True)
class Admission:
    """What admission reserved for one request, to be replaced at settlement."""

    request_id: str  # server-generated, scoped to the tenant: the ledger's idempotency key
    tenant: str
    key_id: str
    reserved_tokens: int
    reserved_cost_usd: float
    admitted_at: float  # unix seconds
    key_metered: bool = False  # the key's own limits reserved too: settlement releases both


@dataclass(frozen=True, slots=True)
class UsageRecord:
    """The ledger's one record of a finished (or broken) request."""

    request_id: str
    tenant: str
    key_id: str
    model: str
    backend: str
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    status: int  # HTTP status the client saw (or would have seen)
    started_at: float
    duration_s: float
    ttft_s: float | None = None
    client_request_id: str | None = None
    weighted_tokens: float = 0.0  # prefill-weighted tokens, for window reconciliation


@dataclass(frozen=True, slots=True)
class UsageRow:
    """One aggregate row of a usage report."""

    group: dict[str, str]
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float

    @property
    def tokens_per_dollar(self) -> float | None:
        """Output tokens bought per dollar, the figure operators compare stacks by."""
        return self.completion_tokens / self.cost_usd if self.cost_usd > 0 else None
