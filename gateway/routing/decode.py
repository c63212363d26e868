"""A backend's decode line: seconds per output token as a function of the batch it runs at.

Fitted by weighted least squares on (batch, TPOT) samples from finished answers, the older
ones fading, and anchored by the operator's prior (its TPOT alone and its full-batch TPOT)
as two light pseudo-samples. A prior that misstates the line's height and slope separately
(a fast batch-1 figure, a slow full one) is corrected in both, where one ratio cannot.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.settings import CapacityPrior

FADE = 0.98  # each new sample weighs this much more than the one before (about fifty count)
PRIOR_WEIGHT = 1.0  # each of the prior's two points, against up to ~50 of measured samples
MIN_TPOT_S = 1e-4


@dataclass(slots=True)
class DecodeLine:
    """TPOT(batch) = ``alone`` + ``per_slot`` x (batch - 1), refitted on every sample."""

    prior: CapacityPrior
    alone: float = 0.0
    per_slot: float = 0.0
    reach: float = 0.0  # the largest batch an answer has been measured at (0: none yet)
    _sums: list[float] = field(default_factory=lambda: [0.0] * 5)  # w, wb, wt, wbb, wbt

    def __post_init__(self) -> None:
        self._fit()

    def observe(self, batch: float, tpot_s: float) -> None:
        """An answer decoded at a mean per-instance ``batch`` took ``tpot_s`` per token."""
        b = max(1.0, batch)
        self.reach = max(self.reach, b)
        s = self._sums
        for i, value in enumerate((1.0, b, tpot_s, b * b, b * tpot_s)):
            s[i] = s[i] * FADE + value
        self._fit()

    def tpot(self, batch: float) -> float:
        """Seconds per output token at a per-instance ``batch``."""
        return max(MIN_TPOT_S, self.alone + self.per_slot * (max(batch, 1.0) - 1.0))

    def batch_within(self, tpot_s: float) -> float:
        """The largest batch whose TPOT stays within ``tpot_s`` (1 if not even alone)."""
        if tpot_s <= self.alone:
            return 1.0
        if self.per_slot <= 0:
            return float("inf")
        return 1.0 + (tpot_s - self.alone) / self.per_slot

    def _fit(self) -> None:
        p = self.prior
        full_b = float(max(2, p.max_concurrency))
        full_t = max(p.tpot_s, p.max_concurrency / p.output_tokens_per_s)
        w, wb, wt, wbb, wbt = self._sums
        for b, t in ((1.0, p.tpot_s), (full_b, full_t)):
            w, wb, wt = w + PRIOR_WEIGHT, wb + PRIOR_WEIGHT * b, wt + PRIOR_WEIGHT * t
            wbb, wbt = wbb + PRIOR_WEIGHT * b * b, wbt + PRIOR_WEIGHT * b * t
        spread = w * wbb - wb * wb
        slope = (w * wbt - wb * wt) / spread if spread > 1e-12 else 0.0
        slope = max(0.0, slope)  # a batch never decodes faster per token than a smaller one
        height = (wt - slope * wb) / w  # the fit at batch 0
        self.per_slot = slope
        self.alone = max(MIN_TPOT_S, height + slope)
