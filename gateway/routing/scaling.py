"""The autoscaling signal: how many instances each pool should have for the demand routing sees.

The demand (output tokens per second the work on a model's backends asks for) is met the
cheapest way the fleet allows, the way the cost policy routes it: capacity paid whether used
or not first (reserved instances, warm floors), then elastic pools in order of their price per
token at the target fill, each up to its ceiling, then per-token APIs. A pool's last, partly
filled instance is added only while the tokens it would take cost more at the API than the
instance does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

SWITCH_GAIN = 0.8  # a pool this much cheaper than one that is up is worth booting instead
ARRIVAL_WINDOW_S = 15.0  # the time constant of the arrival rate the demand leads with
PRIOR_SPREAD = 2.0  # a typed speed not yet measured is believed within this factor either way
REACH = 2.0  # instances are shed down to at most this many times the batch measured so far


class ArrivalRate:
    """What arrives per second for a model, exponentially decayed over a short window: requests,
    or any amount they bring (the output tokens each was planned for).

    The work in flight (Little's law) lags a rise in load by a whole answer's decode: tens of
    seconds in which the cheap pools are not yet asked to boot. The tokens planned for the
    arrivals, as they arrive, are the demand before it runs.
    """

    __slots__ = ("_at", "_count", "_since")

    def __init__(self) -> None:
        self._count = 0.0
        self._at = 0.0
        self._since: float | None = None  # the first arrival

    def add(self, now: float, amount: float = 1.0) -> None:
        """One request arrived at ``now``, bringing ``amount``."""
        if self._since is None:
            self._since = now
        self._count = self._count * math.exp((self._at - now) / ARRIVAL_WINDOW_S) + amount
        self._at = now

    def per_s(self, now: float) -> float:
        """The decayed arrival rate at ``now``.

        Over the first window the weights seen so far are less than a whole window's: the
        count is divided by them, so a load that starts at full rate reads as that rate
        within seconds rather than one time constant later.
        """
        if self._since is None:
            return 0.0
        seen = ARRIVAL_WINDOW_S * -math.expm1((self._since - now) / ARRIVAL_WINDOW_S)
        return self._count * math.exp((self._at - now) / ARRIVAL_WINDOW_S) / max(seen, 1.0)


@dataclass(frozen=True, slots=True)
class Offer:
    """What one backend offers the allocation, as measured now."""

    name: str
    per_token: bool  # priced per token, no capacity limit to plan
    usd_per_token: float  # per-token price, or an elastic instance's price at the target fill
    tokens_per_s: float = 0.0  # one instance at the target fill (instance-priced backends)
    kept_tokens_per_s: float = math.inf  # ... at a batch within ``REACH`` of those measured
    usd_per_instance_s: float = 0.0
    sunk_instances: int = 0  # paid whether used or not: reserved, or the warm floor
    max_instances: int = 0
    up_instances: int = 0  # up now (booting included)
    elastic: bool = False
    measured: bool = True  # its speed is measured, or soon will be (an instance is serving)
    boot_s: float = 0.0  # from asking for an instance to its first request
    scale_down_s: float = 0.0  # how long a surplus instance stays up (and paid)
    sizing: float = 1.0  # share of tokens_per_s an instance counts for when sizing the pool


def allocate(demand_tokens_per_s: float, offers: Sequence[Offer]) -> Mapping[str, int]:
    """Instances wanted per instance-priced backend to serve ``demand_tokens_per_s``.

    Instances already up are kept first (``_keep``): their boot is paid, and trading them
    for another pool's costs a boot there and a scale-down wait here, which only a clearly
    cheaper pool (``SWITCH_GAIN``) is worth. New instances go to the cheapest pool; a pool
    not yet measured is sized for the slow end of its prior as far as that pays (``hedged``).
    """
    remaining = demand_tokens_per_s
    wanted: dict[str, int] = {}
    api = min((o.usd_per_token for o in offers if o.per_token), default=math.inf)
    offers = [hedged(o, api) for o in offers]
    for o in offers:
        if not o.per_token:
            wanted[o.name] = o.sunk_instances
            remaining -= o.sunk_instances * o.tokens_per_s
    pools = sorted((o for o in offers if o.elastic and not o.per_token and o.usd_per_token < api),
                   key=lambda o: o.usd_per_token)
    if not pools:
        return wanted
    remaining = _keep(pools, remaining, wanted)
    for i, o in enumerate(pools):  # then new instances, cheapest pool first
        later = pools[i + 1:]

        def elsewhere(rest: float, later: Sequence[Offer] = later) -> float:
            """$/s of serving ``rest`` tokens/s on the dearer pools, or at the API."""
            fits = [math.ceil(rest / max(p.tokens_per_s, 1e-9)) * p.usd_per_instance_s
                    for p in later if rest <= (p.max_instances - wanted[p.name]) * p.tokens_per_s]
            return min([rest * api, *fits])

        remaining = _add(o, o.max_instances - wanted[o.name], remaining, elsewhere, wanted)
    return wanted


def hedged(o: Offer, fallback_usd_per_token: float) -> Offer:
    """``o`` with its instances counted at the speed worth planning for while it is unmeasured.

    An elastic pool's first instances are booted on the typed prior, which may be off by
    ``PRIOR_SPREAD`` either way and is corrected only once they serve. Too few, and the
    shortfall goes to the fallback (the API) until more boot: (fallback / pool price - 1)
    instance-prices for ``boot_s`` per instance short. Too many, and each surplus one is paid
    through its boot and the scale-down wait. The count worth booting is the newsvendor's:
    the quantile ``short / (short + over)`` of the instances the demand may need, with the
    true speed log-uniform within the spread. A dear API makes it plan near the slow end; a
    fallback barely dearer than the pool, or a boot that takes no time, plans on the prior
    (never above it: a faster pool than typed is found out by serving).
    """
    if o.measured or o.per_token or not o.elastic or o.boot_s <= 0:
        return o
    ratio = fallback_usd_per_token / max(o.usd_per_token, 1e-18)
    if ratio <= 1.0:
        return o
    short = (ratio - 1.0) * o.boot_s
    quantile = 1.0 if math.isinf(short) else short / (short + o.boot_s + o.scale_down_s)
    return replace(o, sizing=min(1.0, PRIOR_SPREAD ** (1.0 - 2.0 * quantile)))


def _keep(pools: Sequence[Offer], remaining: float, wanted: dict[str, int]) -> float:
    """Keep the instances up on pools not far dearer than the best (``pools`` cheapest first).

    When they carry more than the demand, every one of them sheds the same share: their
    measured prices differ by less than the switch is worth and move from one minute to the
    next, so shedding the dearer one first would shed a different pool each time the order
    flips, and an autoscaler that adds at once and removes only after a quiet spell would
    keep all of them up. Each instance counts for what it can be trusted to carry: no more
    than at twice the batch its pool's answers were measured at (``REACH``: past it the
    decode line may still be the prior's), and the hedge's share while unmeasured.
    """
    best = pools[0].usd_per_token
    held = [(o, n) for o in pools if o.usd_per_token * SWITCH_GAIN <= best
            and (n := min(o.up_instances, o.max_instances) - o.sunk_instances) > 0]
    carried = sum(n * min(o.tokens_per_s, o.kept_tokens_per_s) * o.sizing for o, n in held)
    if carried <= 0 or remaining <= 0:
        return remaining
    share = min(1.0, remaining / carried)
    for o, n in held:
        keep = min(n, math.ceil(n * share - 1e-9))
        wanted[o.name] += keep
        remaining -= keep * o.tokens_per_s
    return remaining


def _add(o: Offer, room: int, remaining: float, elsewhere: Callable[[float], float],
         wanted: dict[str, int]) -> float:
    """Give ``o`` up to ``room`` more instances for ``remaining`` tokens/s; what is left.

    ``elsewhere(rest)``: what serving ``rest`` tokens/s would cost another way ($/s). A
    partly filled last instance is added only when it costs no more than that: the pool
    cheapest when full is not the cheapest way to serve a remainder much smaller than one
    of its instances.
    """
    if remaining <= 0 or room <= 0:
        return remaining
    cap = max(o.tokens_per_s * o.sizing, 1e-9)
    extra = min(room, math.floor(remaining / cap))
    rest = remaining - extra * cap
    if extra < room and rest > 0 and elsewhere(rest) >= o.usd_per_instance_s:
        extra += 1
    wanted[o.name] += extra
    return remaining - extra * o.tokens_per_s
