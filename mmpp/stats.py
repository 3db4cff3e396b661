"""The one statistics helper both sides report with.

Here, beside the dispatcher, because the bot's ``mmpp feedback`` and the
engine's ``mmpp eval --feedback`` must print the same interval for the same
ratings, and neither side may import the other.
"""

from __future__ import annotations

import math
import statistics

#: Two-sided 95 % quantiles of Student's t for 1-30 degrees of freedom; 1.96 beyond.
T95 = [
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
    2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
]  # fmt: skip


def mean_interval(scores: list[int]) -> tuple[float | None, float | None, float | None]:
    """Mean and 95 % t-interval ``mean ± t(n-1) · s / √n``; ``None`` where too few scores make it meaningless."""
    if not scores:
        return None, None, None
    mean = statistics.fmean(scores)
    if len(scores) < 2:
        return mean, None, None
    degrees = len(scores) - 1
    quantile = T95[degrees - 1] if degrees <= len(T95) else 1.96
    half_width = quantile * statistics.stdev(scores) / math.sqrt(len(scores))
    return mean, mean - half_width, mean + half_width
