"""The decode line: fitted on measured (batch, TPOT) samples, anchored by the prior."""

from __future__ import annotations

import pytest

from gateway.routing.decode import DecodeLine
from gateway.settings import CapacityPrior

pytestmark = pytest.mark.timeout(10)


def test_before_any_answer_the_line_is_the_priors() -> None:
    line = DecodeLine(CapacityPrior(tpot_s=0.01, output_tokens_per_s=4000, max_concurrency=128))
    assert line.tpot(1) == pytest.approx(0.01)
    assert line.tpot(128) == pytest.approx(128 / 4000)


def test_a_prior_wrong_in_height_and_slope_is_corrected_in_both() -> None:
    # The operator typed a fast line (10 ms alone, 20 ms full); the truth is 20 ms + 0.1 ms
    # per slot. Answers at many batches pull both ends to the truth.
    line = DecodeLine(CapacityPrior(tpot_s=0.01, output_tokens_per_s=12800, max_concurrency=256))
    for i in range(300):
        batch = 1 + (i * 37) % 256
        line.observe(batch, 0.02 + 0.0001 * (batch - 1))
    assert line.tpot(1) == pytest.approx(0.02, rel=0.05)
    assert line.tpot(200) == pytest.approx(0.02 + 0.0001 * 199, rel=0.05)
    assert line.batch_within(0.03) == pytest.approx(101, rel=0.1)


def test_its_reach_is_the_largest_batch_an_answer_was_measured_at() -> None:
    line = DecodeLine(CapacityPrior(tpot_s=0.01, output_tokens_per_s=4000, max_concurrency=128))
    assert line.reach == 0.0  # the prior's line only
    for batch in (4.0, 22.5, 9.0):
        line.observe(batch, 0.02)
    assert line.reach == 22.5
