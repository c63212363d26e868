"""Budget periods: the UTC month a time falls in, across month and year boundaries."""

from __future__ import annotations

import calendar

import pytest

from gateway.tenancy.limits import month_of


@pytest.mark.parametrize(
    ("moment", "month"),
    [
        ((2025, 12, 31, 23, 59, 59), "2025-12"),
        ((2026, 1, 1, 0, 0, 0), "2026-01"),
        ((2024, 2, 29, 23, 59, 59), "2024-02"),
        ((2024, 3, 1, 0, 0, 0), "2024-03"),
        ((2023, 7, 15, 12, 0, 0), "2023-07"),  # back in time after the cache moved on
    ],
)
def test_month_of_follows_utc_calendar_months(moment: tuple[int, ...], month: str) -> None:
    assert month_of(calendar.timegm(moment)) == month


def test_month_of_just_before_a_month_ends() -> None:
    end = calendar.timegm((2026, 11, 1, 0, 0, 0))
    assert month_of(end - 0.001) == "2026-10"
    assert month_of(end) == "2026-11"
