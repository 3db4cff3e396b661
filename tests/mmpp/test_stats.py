"""The t quantile behind every rating interval, against published values."""

from __future__ import annotations

import math

import pytest

from mmpp.stats import mean_interval, student_t_cdf, student_t_quantile

#: (degrees of freedom, two-sided 95 % quantile t(0.975, df)), from standard tables (SciPy's ``t.ppf``).
KNOWN_975 = [
    (1, 12.706204736),
    (2, 4.302652730),
    (5, 2.570581836),
    (10, 2.228138852),
    (29, 2.045229642),
    (30, 2.042272456),
    (40, 2.021075390),
    (60, 2.000297822),
    (100, 1.983971519),
    (120, 1.979930405),
    (1000, 1.962339081),
]


@pytest.mark.parametrize(("degrees", "expected"), KNOWN_975)
def test_quantile_matches_published_values(degrees: int, expected: float) -> None:
    assert student_t_quantile(0.975, degrees) == pytest.approx(expected, abs=1e-7)


def test_other_probabilities_and_symmetry() -> None:
    assert student_t_quantile(0.95, 10) == pytest.approx(1.812461123, abs=1e-7)
    assert student_t_quantile(0.995, 60) == pytest.approx(2.660283029, abs=1e-7)
    assert student_t_quantile(0.025, 30) == pytest.approx(-2.042272456, abs=1e-7)
    assert student_t_cdf(0.0, 7) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        student_t_quantile(1.0, 5)


def test_interval_between_30_and_120_ratings_is_not_the_normal_one() -> None:
    """The old table used 1.96 past 30 degrees: 2 % too narrow at n = 40; the exact quantile is used now."""
    scores = [1, 2, 3, 4, 5] * 8  # n = 40
    mean, low, high = mean_interval(scores)
    stdev = math.sqrt(sum((s - 3) ** 2 for s in scores) / 39)
    assert mean == 3.0
    assert high - mean == pytest.approx(2.022690920 * stdev / math.sqrt(40), rel=1e-8)
    assert low == pytest.approx(2 * mean - high)
