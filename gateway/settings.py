"""The configuration schema: one YAML file validated by pydantic, secrets and URLs from env.

``load_settings(path)`` reads the file and applies ``TOLLGATE_REDIS_URL`` and
``TOLLGATE_ADMIN_KEY``; ``tollgate check-config`` reports every problem with its field path.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gateway.tenancy.models import TENANT_ID

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "config" / "tollgate.yaml"
Policy = Literal["cost", "latency", "balanced"]


class _Strict(BaseModel):
    """Unknown keys are errors: a typo in config must not be silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerSettings(_Strict):
    """Where the gateway listens and what it accepts."""

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    workers: int = Field(1, ge=1)
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    max_tokens_limit: int = Field(131_072, ge=1)  # the most max_tokens any request may ask
    default_max_tokens: int = Field(256, ge=1)  # when a completions request names none
    max_generations_per_request: int = Field(128, ge=1)  # prompts x n: one request's fan-out
    drain_timeout_s: float = Field(30.0, ge=0)
    access_log: bool = True
    # Request fields to accept and drop beyond OpenAI's service hints (service_tier, store,
    # reasoning_effort, ...); "*" drops every unknown field instead of answering 400.
    drop_params: frozenset[str] = frozenset()


class StoreSettings(_Strict):
    """Tenancy state: Redis when ``redis_url`` is set, else in-process (one replica)."""

    # redis://host:port/db for one server; redis+cluster://host:port[,host:port...] for a
    # Redis Cluster (rediss:// and rediss+cluster:// with TLS).
    redis_url: str | None = None
    key_prefix: str = "tg"
    key_cache_ttl_s: float = Field(1.0, ge=0, le=1.0)
    limit_window_s: float = Field(60.0, gt=0)  # the "minute" of RPM and TPM
    # While Redis is away: "open" keeps admitting on each replica's share of every limit
    # (limit / live replicas, budget from the last known spend); "closed" refuses (503).
    failure_policy: Literal["open", "closed"] = "open"
    # A concurrency lease lapses this long after its replica stopped renewing it (it renews
    # every third of it, and checkpoints long requests' usage as often).
    lease_ttl_s: float = Field(10.0, ge=0.3, le=600)
    # While Redis is away, a key checked this long ago is still trusted (None: the cache TTL,
    # so a revocation on another replica is honoured as fast as ever, or the request refused).
    outage_trust_s: float | None = Field(None, ge=0)
    spool_dir: str = "var/spool"

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        from gateway.tenancy.redis_client import check_url  # loads Redis only when used

        return check_url(value)

    @field_validator("key_prefix")
    @classmethod
    def _key_prefix(cls, value: str) -> str:
        if "{" in value or "}" in value:  # the tenant's {tag} must pick its cluster slot
            raise ValueError("key_prefix may not contain { or }")
        return value


class ModelSettings(_Strict):
    """A client-facing model: its id, aliases, tokenizer and chat template."""

    id: str
    aliases: tuple[str, ...] = ()
    tokenizer: str | None = None  # "embedded" or a path to a sentencepiece model
    chat_template: str | None = None  # a template name from gateway.openai.templates
    context_length: int | None = Field(None, ge=1)


class Price(_Strict):
    """Instance pricing (``usd_per_hour``) or per-token pricing, never both."""

    usd_per_hour: float | None = Field(None, ge=0)
    usd_per_mtok_input: float | None = Field(None, ge=0)
    usd_per_mtok_output: float | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _one_kind(self) -> Price:
        hourly = self.usd_per_hour is not None
        per_token = self.usd_per_mtok_input is not None or self.usd_per_mtok_output is not None
        if hourly == per_token:
            raise ValueError("give either usd_per_hour or usd_per_mtok_input/usd_per_mtok_output")
        return self


class TimeoutSettings(_Strict):
    """Deadlines for one upstream attempt, in seconds."""

    connect_s: float = Field(5.0, gt=0)
    first_token_s: float = Field(60.0, gt=0)
    total_s: float = Field(600.0, gt=0)
    # The longest silence between two outputs of a started stream: a stall ends it early
    # (with an error event) instead of holding the client until ``total_s``.
    inter_token_s: float = Field(30.0, gt=0)
    # While another backend remains to fall back to, a first token later than this and
    # than 8x the predicted TTFT (``openai.generation.GIVE_UP_FACTOR``) is given up on.
    give_up_floor_s: float = Field(10.0, gt=0)


class CapacityPrior(_Strict):
    """What one instance of the backend is expected to sustain before measurements exist.

    Operators type these from memory or a datasheet: routing corrects them by measurement.
    """

    output_tokens_per_s: float = Field(1000.0, gt=0)
    ttft_s: float = Field(0.5, gt=0)
    tpot_s: float = Field(0.03, gt=0)
    max_concurrency: int = Field(64, ge=1)


_DISCOVERY = re.compile(r"dns://[^/:]+:\d+|k8s://[a-z0-9-]+/[a-z0-9-]+")


class PoolSettings(_Strict):
    """How a backend's instances are paid for and scaled: what its marginal token costs.

    ``reserved``: ``instances`` committed or always-on instances, paid whether used or not.
    ``elastic``: an autoscaled pool between ``min_instances`` (kept warm, so also paid whether
    used or not) and ``max_instances``; Tollgate exports how many instances it wants
    (``tollgate.pool.desired_instances``) for the autoscaler to track. Per-token backends
    ignore this block.
    """

    billing: Literal["reserved", "elastic"] = "reserved"
    instances: int = Field(1, ge=1)  # reserved: how many are paid for
    min_instances: int = Field(0, ge=0)  # elastic: the warm floor
    max_instances: int = Field(1, ge=1)  # elastic: the ceiling
    scale_up_s: float = Field(60.0, ge=0)  # from asking for an instance to its first request
    scale_down_s: float = Field(300.0, ge=0)  # a surplus instance stays up (and paid) this long
    # Share of slots the pool is sized to fill; unset: sized by its load (``PoolState.fill``).
    target_utilisation: float | None = Field(None, gt=0, le=1)
    # Where the pool's instances are listed: "dns://name:port" (one address per instance) or
    # "k8s://namespace/service" (its EndpointSlices); None: counted from config and metrics.
    discovery: str | None = None

    @model_validator(mode="after")
    def _bounds(self) -> PoolSettings:
        if self.billing == "elastic" and self.min_instances > self.max_instances:
            raise ValueError("min_instances must not exceed max_instances")
        if self.discovery is not None and not _DISCOVERY.fullmatch(self.discovery):
            raise ValueError("discovery: use dns://name:port or k8s://namespace/service")
        return self

    @property
    def sunk_instances(self) -> int:
        """Instances paid whether used or not: the reserved ones, or the pool's warm floor."""
        return self.instances if self.billing == "reserved" else self.min_instances

    @property
    def ceiling(self) -> int:
        """The most instances that can be up."""
        return self.instances if self.billing == "reserved" else self.max_instances


# Keys that once lived in ``simulate:`` and describe how the pool is paid and scaled: a fleet
# file that still has them there gets them moved into ``pool:`` (production reads that).
_LEGACY_POOL_KEYS = ("always_on", "min_instances", "max_instances", "scale_up_s",
                     "scale_down_idle_s", "target_utilisation")


def _lift_legacy_pool(data: dict[str, Any]) -> dict[str, Any]:
    sim = data.get("simulate")
    if not isinstance(sim, dict) or not any(k in sim for k in _LEGACY_POOL_KEYS):
        return data
    sim = dict(sim)
    old = {k: sim.pop(k) for k in _LEGACY_POOL_KEYS if k in sim}
    data = {**data, "simulate": sim}
    if "pool" in data:
        return data  # the production block wins; the old keys are dropped
    pool: dict[str, Any] = {}
    if old.get("always_on", True):
        pool = {"billing": "reserved", "instances": old.get("max_instances", 1)}
    else:
        pool = {"billing": "elastic", "min_instances": old.get("min_instances", 1),
                "max_instances": old.get("max_instances", 1)}
    renames = {"scale_up_s": "scale_up_s", "scale_down_idle_s": "scale_down_s",
               "target_utilisation": "target_utilisation"}
    pool.update({new: old[k] for k, new in renames.items() if k in old})
    return {**data, "pool": pool}


class SimulateSettings(_Strict):
    """A backend's true behaviour in the fleet simulator (``tollgate bench fleet``).

    How it is paid and scaled comes from the backend's ``pool`` block, as in production.
    """

    slots: int = Field(ge=1)  # decode slots per instance
    prefill_tokens_per_s: float = Field(gt=0)
    decode_step_s: dict[int, float]  # batch size -> seconds per decode step (interpolated)
    list_price_usd_per_mtok: float | None = None  # what an operator types into a peer gateway
    max_queue: int = Field(256, ge=0)  # waiting requests per instance before it answers Overloaded
    ttft_overhead_s: float = Field(0.0, ge=0)  # network and scheduling before prefill starts


class EngineSettings(_Strict):
    """Options of the embedded engine (kind ``embedded``)."""

    model_path: str | None = None  # None: the Gemma 3 270M GGUF from PyPI
    weight_format: Literal["f32", "bf16", "int8"] = "int8"
    decode_slots: int = Field(16, ge=1)
    max_context: int = Field(2048, ge=16)
    max_queue: int = Field(64, ge=1)


class BackendSettings(_Strict):
    """One inference server: its protocol, address, models and price."""

    name: str
    kind: Literal["vllm", "tgi", "triton", "jetstream", "embedded"]
    url: str | None = None
    models: dict[str, str]  # client-facing model id -> upstream model name
    price: Price
    timeouts: TimeoutSettings = TimeoutSettings()
    metrics_url: str | None = None
    api_key_env: str | None = None  # name of the env var holding a bearer token
    tls_ca_file: str | None = None
    tls_insecure: bool = False
    capacity: CapacityPrior = CapacityPrior()  # per instance
    pool: PoolSettings = PoolSettings()
    engine: EngineSettings | None = None
    simulate: SimulateSettings | None = None
    options: dict[str, Any] = {}  # adapter-specific knobs

    @model_validator(mode="before")
    @classmethod
    def _legacy(cls, data: Any) -> Any:
        return _lift_legacy_pool(data) if isinstance(data, dict) else data

    @model_validator(mode="after")
    def _address(self) -> BackendSettings:
        if self.kind != "embedded" and not self.url:
            raise ValueError(f"backend kind {self.kind!r} needs a url")
        if not self.models:
            raise ValueError("a backend must serve at least one model")
        return self

    def api_key(self) -> str | None:
        """The bearer credential from the environment, never from the file itself."""
        return os.environ.get(self.api_key_env) if self.api_key_env else None


class RoutingSettings(_Strict):
    """Default policy, latency objectives and how much retrying is allowed."""

    default_policy: Policy = "cost"
    max_ttft_ms: float | None = Field(None, gt=0)
    max_tpot_ms: float | None = Field(None, gt=0)
    retry_budget_ratio: float = Field(0.2, ge=0, le=1)  # retries per first attempt, fleet-wide
    max_attempts: int = Field(3, ge=1)
    probe_interval_s: float = Field(5.0, gt=0)
    explore_share: float = Field(0.02, ge=0, le=0.1)  # requests that re-measure stale backends
    # Prompt blocks (256 characters each) remembered per backend for prefix-aware routing:
    # about its KV cache's size; 0 turns prefix affinity off.
    prefix_blocks: int = Field(8192, ge=0)
    breaker_failures: int = Field(5, ge=1)
    breaker_cooldown_s: float = Field(10.0, gt=0)


class MeteringSettings(_Strict):
    """Cost model parameters."""

    window_s: float = Field(60.0, gt=0)
    prefill_weight: float = Field(0.125, ge=0)


class TenantSeed(_Strict):
    """A tenant created at start-up if it does not exist yet."""

    id: str
    requests_per_minute: int | None = Field(None, ge=1)
    tokens_per_minute: int | None = Field(None, ge=1)
    max_concurrent: int | None = Field(None, ge=1)
    monthly_budget_usd: float | None = Field(None, ge=0)
    allowed_models: tuple[str, ...] | None = None
    policy: Policy | None = None
    dev_key: bool = False  # issue a key at start-up and print a ready-to-paste curl line

    @field_validator("id")
    @classmethod
    def _tenant_id(cls, value: str) -> str:
        if not TENANT_ID.fullmatch(value):
            raise ValueError("tenant ids are [a-z0-9][a-z0-9-]{0,62}")
        return value


class TenantSettings(_Strict):
    """Default limits for new tenants, and tenants to seed."""

    defaults: TenantSeed = TenantSeed(id="default")
    seed: tuple[TenantSeed, ...] = ()


class TelemetrySettings(_Strict):
    """OpenTelemetry: exporters come from the standard OTEL_* variables."""

    service_name: str = "tollgate"
    record_content: bool = False  # prompt and completion text in spans: operator opt-in
    prometheus: bool = True


class Settings(_Strict):
    """The whole configuration file."""

    server: ServerSettings = ServerSettings()
    store: StoreSettings = StoreSettings()
    models: tuple[ModelSettings, ...] = ()
    backends: tuple[BackendSettings, ...] = ()
    routing: RoutingSettings = RoutingSettings()
    metering: MeteringSettings = MeteringSettings()
    tenants: TenantSettings = TenantSettings()
    telemetry: TelemetrySettings = TelemetrySettings()
    admin_key: str | None = None  # from TOLLGATE_ADMIN_KEY only; never put it in the file

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        names = [b.name for b in self.backends]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise ValueError(f"backend names must be unique: {sorted(dupes)}")
        known: set[str] = set()
        for model in self.models:
            for name in (model.id, *model.aliases):
                if name in known:
                    raise ValueError(f"model id or alias {name!r} is defined twice")
                known.add(name)
        for backend in self.backends:
            for model_id in backend.models:
                if model_id not in known:
                    raise ValueError(
                        f"backend {backend.name!r} serves {model_id!r}, which is not in models"
                    )
        return self


def parse_settings(data: Mapping[str, Any], env: Mapping[str, str] | None = None) -> Settings:
    """Validate a config mapping and apply the environment overrides."""
    env = os.environ if env is None else env
    merged = dict(data)
    if env.get("TOLLGATE_REDIS_URL"):
        merged["store"] = {
            **dict(merged.get("store") or {}),
            "redis_url": env["TOLLGATE_REDIS_URL"],
        }
    if env.get("TOLLGATE_ADMIN_KEY"):
        merged["admin_key"] = env["TOLLGATE_ADMIN_KEY"]
    return Settings.model_validate(merged)


def read_config(path: str | Path | None = None) -> dict[str, Any]:
    """The YAML mapping at ``path`` (or ``TOLLGATE_CONFIG``, or the default file)."""
    chosen = Path(path or os.environ.get("TOLLGATE_CONFIG") or DEFAULT_CONFIG)
    data = yaml.safe_load(chosen.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{chosen}: the top level must be a mapping")
    return data


def load_settings(path: str | Path | None = None) -> Settings:
    """Read, validate and apply env overrides; raises ``pydantic.ValidationError``."""
    return parse_settings(read_config(path))
