"""The one statistics helper both sides report with.

In the kernel because the bot's ``mmpp feedback`` and the engine's ``mmpp eval
--feedback`` must print the same interval for the same ratings, and neither
side may import the other.  Student's t quantile is computed exactly (to
about 1e-10) rather than read from a table: a table that stops at 30 degrees
of freedom and then uses 1.96 makes the intervals of 30-120 ratings up to 4 %
too narrow, and the kernel must not pull in SciPy for one function.
"""

from __future__ import annotations

import math
import statistics

#: Bisection steps for the quantile; each halves an interval that starts below 2**10 wide.
_BISECTION_STEPS = 200


def _continued_fraction(a: float, b: float, x: float) -> float:
    """Lentz's evaluation of the continued fraction of the incomplete beta function."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, 500):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            result *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return result


def regularized_incomplete_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b), the distribution function behind Student's t."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _continued_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _continued_fraction(b, a, 1.0 - x) / b


def student_t_cdf(t: float, degrees: float) -> float:
    tail = 0.5 * regularized_incomplete_beta(degrees / 2.0, 0.5, degrees / (degrees + t * t))
    return 1.0 - tail if t >= 0 else tail


def student_t_quantile(probability: float, degrees: float) -> float:
    """The t with ``P(T <= t) = probability`` for ``degrees`` degrees of freedom."""
    if not 0.0 < probability < 1.0 or degrees <= 0:
        raise ValueError("probability must lie strictly between 0 and 1 and degrees must be positive")
    if probability < 0.5:
        return -student_t_quantile(1.0 - probability, degrees)
    low, high = 0.0, 1024.0
    for _ in range(_BISECTION_STEPS):
        middle = (low + high) / 2.0
        if student_t_cdf(middle, degrees) < probability:
            low = middle
        else:
            high = middle
        if high - low < 1e-12:
            break
    return (low + high) / 2.0


def mean_interval(scores: list[int]) -> tuple[float | None, float | None, float | None]:
    """Mean and 95 % t-interval ``mean ± t(0.975, n-1) · s / √n``; ``None`` where too few scores make it meaningless."""
    if not scores:
        return None, None, None
    mean = statistics.fmean(scores)
    if len(scores) < 2:
        return mean, None, None
    quantile = student_t_quantile(0.975, len(scores) - 1)
    half_width = quantile * statistics.stdev(scores) / math.sqrt(len(scores))
    return mean, mean - half_width, mean + half_width
