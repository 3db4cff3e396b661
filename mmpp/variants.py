"""Which variant of a style serves the next job, and when one variant has earned being the style's default.

A style may carry variants (other scales, steps, prompts); live traffic is the experiment that compares
them.  This module is the whole decision, in the torch-free kernel because the bot runs it on the command
path of every order and ``mmpp bench feedback`` must run the very same code in its simulation.

The model.  A rating is ``variant mean + rater offset + noise``: people differ in how they rate (some give
everything 5), and one job's pictures all come from one variant (the engine renders a job in one batched
call), so a rater's ratings cannot be compared inside a job.  Instead each rater's offset is modelled as a
random effect (normal, spread ``tau``) beside rating noise (spread ``sigma``).  The two spreads are
estimated from the ratings themselves (ratings of the same rater on the same variant give the noise; how
far each rater's mean lies from what the variants predict gives the offsets), starting from the guesses
in :class:`Rules`, in a few alternating passes.  Given them, the variant means have an exact Gaussian
posterior (generalised least squares with a weak prior), which needs only per-rater counts and sums: a
K x K system for K variants, whatever the number of ratings.  An enthusiast who gives everything 5 then
raises their own offset, not the variant they happened to be served.

Assignment is top-two Thompson sampling on that posterior: draw the means, serve the best draw; with
probability ``challenger_share`` serve instead the best of a fresh draw that is *not* that variant.
Plain Thompson sampling starves the runner-up once the leader is ahead, and the runner-up's ratings are
exactly what tells whether the leader is truly better: in the simulation, with a runner-up 0.2 stars
behind, a quarter of the jobs for the challenger promote a worse variant 1 % of the time against 4.5 %
for plain sampling, for about 10 % more ratings and regret where the gap is wide (docs/variants.md).
Before that, every active variant under ``exploration_floor`` ratings is served first (the one with
fewest), so none starves.

Promotion: the variant most likely best, once every active variant is past the floor, it has
``min_ratings`` ratings and its posterior probability of being best (Monte Carlo over ``draws`` draws)
is at least ``promote_probability``.  That probability is exact for two variants; for more it is
estimated from ``draws`` draws and never above an exact bound (the smallest of its probabilities of
beating each rival alone), and that bound, under the threshold, rules out most calls without drawing.

Everything is deterministic given the :class:`random.Random` passed in, and uses only the standard
library: the bot imports it.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from random import Random
from typing import Any

#: Ratings are stars.
LOWEST_SCORE = 1.0
HIGHEST_SCORE = 5.0
#: Spreads never estimated below these: a handful of identical ratings must not make the posterior certain.
_SMALLEST_NOISE_SD = 0.2
_SMALLEST_RATER_SD = 0.05
#: Alternating passes between the variant means and the two spreads; the estimate settles within three.
_PASSES = 3
#: Fresh draws tried for a challenger before serving the leader after all.
_CHALLENGER_TRIES = 50


@dataclass(frozen=True)
class Observation:
    """One rating: which variant made the picture, who rated it (a stable id), and the stars (1-5)."""

    variant: str
    rater: str
    score: float


@dataclass(frozen=True)
class Rules:
    """The knobs of assignment and promotion; the defaults are tuned by ``mmpp bench feedback`` (docs/variants.md)."""

    #: Every active variant is served first until it has this many ratings.
    exploration_floor: int = 20
    #: A variant needs at least this many ratings to be promoted.
    min_ratings: int = 100
    #: Posterior probability of being best that a promotion needs.
    promote_probability: float = 0.95
    #: Monte Carlo draws for the probability of being best.
    draws: int = 2000
    #: Share of jobs served to the challenger (top-two Thompson sampling); 0 is plain Thompson sampling.
    challenger_share: float = 0.25
    #: Prior of each variant's mean rating: centre and spread (weak: a star either way).
    prior_mean: float = 3.0
    prior_spread: float = 1.0
    #: Starting guesses for rating noise and rater offsets, each worth ``guess_weight`` ratings or raters.
    noise_guess: float = 1.0
    rater_spread_guess: float = 0.7
    guess_weight: float = 5.0
    #: Off only to show what the rater model buys (the simulation's comparison, a test that breaks on purpose).
    model_rater_offsets: bool = True

    def __post_init__(self) -> None:
        if self.exploration_floor < 0 or self.min_ratings < 0 or self.draws < 1:
            raise ValueError("exploration_floor and min_ratings must be >= 0 and draws >= 1")
        if not 0.5 <= self.promote_probability <= 1.0:
            raise ValueError("promote_probability must lie between 0.5 and 1")
        if not 0.0 <= self.challenger_share < 1.0:
            raise ValueError("challenger_share must lie in [0, 1)")
        if min(self.prior_spread, self.noise_guess, self.rater_spread_guess, self.guess_weight) <= 0:
            raise ValueError("prior_spread, noise_guess, rater_spread_guess and guess_weight must be positive")


@dataclass(frozen=True)
class VariantSummary:
    """One variant's figures: ratings, plain mean, mean with rater offsets removed, probability of being best.

    ``adjusted_spread`` is the posterior standard deviation of ``adjusted_mean`` (how sure it is).
    """

    variant: str
    ratings: int
    raw_mean: float | None
    adjusted_mean: float | None
    probability_best: float
    adjusted_spread: float | None = None


@dataclass(frozen=True)
class Promotion:
    """A variant that has earned being the style's default, with what showed it."""

    variant: str
    probability_best: float
    ratings: int
    summaries: tuple[VariantSummary, ...]
    rules: Rules = Rules()
    noise_sd: float = 0.0
    rater_sd: float = 0.0

    def evidence(self) -> dict[str, Any]:
        """JSON-safe record stored with the promotion: enough to recheck the decision later."""
        return {
            "variant": self.variant,
            "probability_best": round(self.probability_best, 4),
            "ratings": self.ratings,
            "noise_sd": round(self.noise_sd, 4),
            "rater_sd": round(self.rater_sd, 4),
            "rules": asdict(self.rules),
            "variants": [
                {
                    "variant": summary.variant,
                    "ratings": summary.ratings,
                    "raw_mean": None if summary.raw_mean is None else round(summary.raw_mean, 4),
                    "adjusted_mean": None if summary.adjusted_mean is None else round(summary.adjusted_mean, 4),
                    "adjusted_spread": None if summary.adjusted_spread is None else round(summary.adjusted_spread, 4),
                    "probability_best": round(summary.probability_best, 4),
                }
                for summary in self.summaries
            ],
        }


class _Group:
    """The raters with the same number of ratings, summed: how many, ``sum c c'``, ``sum c S`` and ``sum S^2``.

    The posterior needs each rater only through their counts per variant ``c`` and total ``S``, and it
    weighs a rater by their number of ratings ``n`` alone; summing raters of equal ``n`` makes one
    posterior cost a few dozen groups instead of thousands of raters.
    """

    __slots__ = ("count_by_total", "cross", "raters", "total_squares")

    def __init__(self) -> None:
        self.raters = 0
        self.cross: dict[tuple[str, str], float] = {}
        self.count_by_total: dict[str, float] = {}
        self.total_squares = 0.0

    def change(self, counts: dict[str, float], total: float, sign: float) -> None:
        self.raters += int(sign)
        for first, first_count in counts.items():
            self.count_by_total[first] = self.count_by_total.get(first, 0.0) + sign * first_count * total
            for second, second_count in counts.items():
                key = (first, second)
                self.cross[key] = self.cross.get(key, 0.0) + sign * first_count * second_count
        self.total_squares += sign * total * total


class _Rater:
    """One rater's counts per variant and totals (their sums per variant are the tally's ``cell_sums``)."""

    __slots__ = ("counts", "ratings", "total")

    def __init__(self) -> None:
        self.counts: dict[str, float] = {}
        self.ratings = 0
        self.total = 0.0


class Tally:
    """The ratings reduced to what the model needs, kept up to date one rating at a time.

    Built from a list of observations, or grown with ``add`` (how the simulation avoids re-reading
    thousands of ratings on every job); both give the same figures.  Per rater it keeps counts and
    sums per variant; per number of ratings, the summed rater statistics (:class:`_Group`); overall,
    the sums the noise estimate needs.
    """

    def __init__(self, observations: Iterable[Observation] = ()) -> None:
        self.raters: dict[str, _Rater] = {}
        self.groups: dict[int, _Group] = {}
        self.counts: dict[str, int] = {}
        self.sums: dict[str, float] = {}
        self.squares = 0.0  # sum of every score squared
        self.cell_squares = 0.0  # sum over (rater, variant) cells of (cell sum)^2 / cell count
        self.cells = 0
        self.cell_sums: dict[tuple[str, str], float] = {}  # (rater, variant) -> sum of scores
        # Gathered per (rater, variant) cell first, in the tightest loop this module has (it reads every
        # rating of a style on every order); then one group update per rater, not per rating.
        cells: dict[tuple[str, str], list[float]] = {}
        squares = 0.0
        for observation in observations:
            score = float(observation.score)
            if not LOWEST_SCORE <= score <= HIGHEST_SCORE:
                _checked(score)  # raises
            key = (observation.rater, observation.variant)
            cell = cells.get(key)
            if cell is None:
                cells[key] = [1.0, score]
            else:
                cell[0] += 1.0
                cell[1] += score
            squares += score * score
        self._fill(cells, squares)

    @classmethod
    def from_cells(cls, cells: Iterable[tuple[str, str, float, float]], squares: float) -> Tally:
        """A tally from ratings already summed per (rater, variant) cell, as ``(rater, variant, count, sum)``,
        and the sum of every score squared: what a database can hand over in one grouped query, which is
        how the bot reads thousands of ratings on the command path without building one object per rating."""
        tally = cls()
        tally._fill({(rater, variant): [float(count), float(total)] for rater, variant, count, total in cells}, squares)
        return tally

    def _fill(self, cells: dict[tuple[str, str], list[float]], squares: float) -> None:
        self.squares = squares
        raters = self.raters
        cell_sums = self.cell_sums
        for key, (count, total) in cells.items():
            name, variant = key
            rater = raters.get(name)
            if rater is None:
                rater = raters[name] = _Rater()
            rater.counts[variant] = count
            cell_sums[key] = total
            rater.ratings += int(count)
            rater.total += total
            self.counts[variant] = self.counts.get(variant, 0) + int(count)
            self.sums[variant] = self.sums.get(variant, 0.0) + total
            self.cell_squares += total * total / count
        self.cells = len(cells)
        groups = self.groups
        for rater in raters.values():
            group = groups.get(rater.ratings)
            if group is None:
                group = groups[rater.ratings] = _Group()
            if len(rater.counts) == 1:  # most raters have rated one variant: the same sums, without the loops
                ((variant, count),) = rater.counts.items()
                total = rater.total
                group.raters += 1
                group.count_by_total[variant] = group.count_by_total.get(variant, 0.0) + count * total
                group.cross[variant, variant] = group.cross.get((variant, variant), 0.0) + count * count
                group.total_squares += total * total
            else:
                group.change(rater.counts, rater.total, 1.0)

    def add(self, observation: Observation) -> None:
        score = _checked(observation.score)
        variant = observation.variant
        rater = self.raters.get(observation.rater)
        if rater is None:
            rater = self.raters[observation.rater] = _Rater()
        if rater.ratings:
            self._leave(rater.ratings, rater)
        key = (observation.rater, variant)
        old_count, old_sum = rater.counts.get(variant, 0.0), self.cell_sums.get(key, 0.0)
        if old_count:
            self.cell_squares -= old_sum * old_sum / old_count
        else:
            self.cells += 1
        rater.counts[variant] = old_count + 1.0
        self.cell_sums[key] = old_sum + score
        rater.ratings += 1
        rater.total += score
        self.cell_squares += (old_sum + score) ** 2 / (old_count + 1.0)
        self._group(rater.ratings).change(rater.counts, rater.total, 1.0)
        self.counts[variant] = self.counts.get(variant, 0) + 1
        self.sums[variant] = self.sums.get(variant, 0.0) + score
        self.squares += score * score

    def ratings(self, variant: str) -> int:
        return self.counts.get(variant, 0)

    def _group(self, ratings: int) -> _Group:
        group = self.groups.get(ratings)
        if group is None:
            group = self.groups[ratings] = _Group()
        return group

    def _leave(self, ratings: int, rater: _Rater) -> None:
        group = self.groups[ratings]
        group.change(rater.counts, rater.total, -1.0)
        if not group.raters:
            del self.groups[ratings]


def _checked(score: float) -> float:
    value = float(score)
    if not LOWEST_SCORE <= value <= HIGHEST_SCORE:
        raise ValueError(f"a rating must lie between 1 and 5, not {score!r}")
    return value


@dataclass(frozen=True)
class Posterior:
    """The joint Gaussian posterior of the active variants' mean ratings (rater offsets removed)."""

    variants: tuple[str, ...]
    means: tuple[float, ...]
    covariance: tuple[tuple[float, ...], ...]
    ratings: tuple[int, ...]
    raw_means: tuple[float | None, ...]
    noise_sd: float
    rater_sd: float

    def draw(self, random: Random) -> list[float]:
        """One draw of the means: ``means + L z`` with ``L`` the covariance's Cholesky factor."""
        factor = _cholesky(self.covariance)
        normals = [random.gauss(0.0, 1.0) for _ in self.variants]
        return [
            mean + sum(factor[row][column] * normals[column] for column in range(row + 1))
            for row, mean in enumerate(self.means)
        ]

    def probability_best(self, random: Random, draws: int) -> tuple[float, ...]:
        """Each variant's posterior probability of having the highest mean.

        Exact for two variants (a normal difference); for more, the share of ``draws`` posterior draws
        in which it is highest, cut to the exact bound of :meth:`beats_every_rival_bound` (which it
        cannot truly exceed).  The cut matters: promotion may skip the draws where the bound is under the
        threshold, and a Monte Carlo estimate a little above its bound would then be promoted or not
        depending on whether the draws were made.
        """
        if len(self.variants) == 1:
            return (1.0,)
        if len(self.variants) == 2:
            first = self.beats_every_rival_bound(0)
            return (first, 1.0 - first)
        factor = _cholesky(self.covariance)
        rows = [(mean, factor[row][: row + 1]) for row, mean in enumerate(self.means)]
        size = len(rows)
        wins = [0] * size
        gauss = random.gauss
        for _ in range(draws):
            normals = [gauss(0.0, 1.0) for _ in range(size)]
            values = [mean + sum(map(operator.mul, weights, normals)) for mean, weights in rows]
            wins[values.index(max(values))] += 1
        return tuple(min(count / draws, self.beats_every_rival_bound(index)) for index, count in enumerate(wins))

    def beats_every_rival_bound(self, index: int) -> float:
        """The smallest of ``P(mean[index] > mean[j])`` over rivals: an upper bound of its probability of being best."""
        bound = 1.0
        for rival in range(len(self.variants)):
            if rival == index:
                continue
            spread = self.covariance[index][index] + self.covariance[rival][rival] - 2 * self.covariance[index][rival]
            gap = self.means[index] - self.means[rival]
            bound = min(bound, _normal_cdf(gap / math.sqrt(max(spread, 1e-12))))
        return bound


def posterior(active: Sequence[str], observations: Sequence[Observation] | Tally, rules: Rules = Rules()) -> Posterior:
    """The posterior of the ``active`` variants' means; ratings of other variants still inform rater offsets."""
    names = _distinct(active)
    tally = observations if isinstance(observations, Tally) else Tally(observations)
    modelled = list(names) + sorted(set(tally.counts) - set(names))
    total_ratings = sum(tally.counts.values())
    guess_weight = rules.guess_weight
    if rules.model_rater_offsets:
        # Ratings of one rater on one variant differ by noise alone: their pooled spread estimates sigma^2.
        within_squares = tally.squares - tally.cell_squares
        within_freedom = total_ratings - tally.cells
        noise_guess = rules.noise_guess**2
    else:
        # Without offsets every rating's spread around its variant's mean is noise, offsets included.
        within_squares = tally.squares - sum(tally.sums[name] ** 2 / count for name, count in tally.counts.items())
        within_freedom = total_ratings - len(tally.counts)
        noise_guess = rules.noise_guess**2 + rules.rater_spread_guess**2
    noise_variance = max(
        (within_squares + guess_weight * noise_guess) / (within_freedom + guess_weight),
        _SMALLEST_NOISE_SD**2,
    )
    rater_variance = rules.rater_spread_guess**2 if rules.model_rater_offsets else 0.0
    means: list[float] = []
    covariance: list[list[float]] = []
    raters = sum(group.raters for group in tally.groups.values())
    for completed in range(_PASSES):
        means, covariance = _generalised_least_squares(tally, modelled, noise_variance, rater_variance, rules)
        if not rules.model_rater_offsets or completed == _PASSES - 1:
            break
        # Each rater's mean residual r spreads by tau^2 + sigma^2 / n around zero: a moment estimate of tau^2,
        # with r^2 = (S - c.mu)^2 / n^2 summed per group from its sums of S^2, c S and c c'.
        mean_of = dict(zip(modelled, means, strict=True))
        excess = 0.0
        for ratings, group in tally.groups.items():
            linear = sum(mean_of[variant] * value for variant, value in group.count_by_total.items())
            quadratic = sum(mean_of[first] * mean_of[second] * value for (first, second), value in group.cross.items())
            excess += (group.total_squares - 2.0 * linear + quadratic) / ratings**2
            excess -= group.raters * noise_variance / ratings
        rater_variance = max(
            (excess + guess_weight * rules.rater_spread_guess**2) / (raters + guess_weight),
            _SMALLEST_RATER_SD**2,
        )
    shown = len(names)
    return Posterior(
        variants=names,
        means=tuple(means[:shown]),
        covariance=tuple(tuple(row[:shown]) for row in covariance[:shown]),
        ratings=tuple(tally.ratings(name) for name in names),
        raw_means=tuple(tally.sums[name] / tally.counts[name] if tally.ratings(name) else None for name in names),
        noise_sd=math.sqrt(noise_variance),
        rater_sd=math.sqrt(rater_variance),
    )


def choose_from(posterior: Posterior, random: Random, rules: Rules = Rules()) -> str:
    """The variant for the next job, given the posterior (see the module's docstring for the rule)."""
    names = posterior.variants
    if len(names) == 1:
        return names[0]
    starving = [index for index, count in enumerate(posterior.ratings) if count < rules.exploration_floor]
    if starving:
        fewest = min(posterior.ratings[index] for index in starving)
        return names[random.choice([index for index in starving if posterior.ratings[index] == fewest])]
    leader = _best_index(posterior.draw(random))
    if rules.challenger_share > 0 and random.random() < rules.challenger_share:
        for _ in range(_CHALLENGER_TRIES):
            challenger = _best_index(posterior.draw(random))
            if challenger != leader:
                return names[challenger]
    return names[leader]


def summaries_from(posterior: Posterior, random: Random, rules: Rules = Rules()) -> tuple[VariantSummary, ...]:
    probabilities = posterior.probability_best(random, rules.draws)
    return tuple(
        VariantSummary(
            variant=name,
            ratings=posterior.ratings[index],
            raw_mean=posterior.raw_means[index],
            adjusted_mean=posterior.means[index] if posterior.ratings[index] else None,
            probability_best=probabilities[index],
            adjusted_spread=math.sqrt(posterior.covariance[index][index]) if posterior.ratings[index] else None,
        )
        for index, name in enumerate(posterior.variants)
    )


def promotion_from(posterior: Posterior, random: Random, rules: Rules = Rules()) -> Promotion | None:
    """The promotion the posterior supports, or ``None`` (the rule is in the module's docstring)."""
    if len(posterior.variants) < 2 or min(posterior.ratings) < rules.exploration_floor:
        return None
    leader = max(range(len(posterior.variants)), key=lambda index: posterior.means[index])
    if posterior.ratings[leader] < rules.min_ratings:
        return None
    if posterior.beats_every_rival_bound(leader) < rules.promote_probability:
        return None  # its probability of being best is at most this bound: no need to draw
    summaries = summaries_from(posterior, random, rules)
    best = max(summaries, key=lambda summary: summary.probability_best)
    if best.probability_best < rules.promote_probability or best.ratings < rules.min_ratings:
        return None
    return Promotion(
        variant=best.variant,
        probability_best=best.probability_best,
        ratings=best.ratings,
        summaries=summaries,
        rules=rules,
        noise_sd=posterior.noise_sd,
        rater_sd=posterior.rater_sd,
    )


def choose_variant(
    active: Sequence[str], observations: Sequence[Observation] | Tally, random: Random, rules: Rules = Rules()
) -> str:
    """The variant that serves the next job of a style, among ``active`` (paused or ineligible ones left out)."""
    names = _distinct(active)
    if len(names) == 1:
        return names[0]
    return choose_from(posterior(names, observations, rules), random, rules)


def summarise(
    active: Sequence[str], observations: Sequence[Observation] | Tally, random: Random, rules: Rules = Rules()
) -> tuple[VariantSummary, ...]:
    """Each active variant's ratings, raw and adjusted mean and probability of being best (for reports)."""
    return summaries_from(posterior(active, observations, rules), random, rules)


def decide_promotion(
    active: Sequence[str], observations: Sequence[Observation] | Tally, random: Random, rules: Rules = Rules()
) -> Promotion | None:
    """The variant to promote to the style's default now, or ``None``; one active variant is never promoted."""
    names = _distinct(active)
    if len(names) < 2:
        return None
    return promotion_from(posterior(names, observations, rules), random, rules)


# --------------------------------------------------------------------------- arithmetic


def _distinct(active: Sequence[str]) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(active))
    if not names:
        raise ValueError("no active variant to choose from")
    return names


def _best_index(values: Sequence[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)


def _normal_cdf(value: float) -> float:
    return 0.5 * math.erfc(-value / math.sqrt(2.0))


def _generalised_least_squares(
    tally: Tally, modelled: list[str], noise_variance: float, rater_variance: float, rules: Rules
) -> tuple[list[float], list[list[float]]]:
    """Posterior mean and covariance of the variant means, rater offsets integrated out.

    One rater's ratings share their offset, so their covariance is ``sigma^2 I + tau^2 11'``, whose
    inverse is ``(I - g 11') / sigma^2`` with ``g = tau^2 / (sigma^2 + n tau^2)``.  Summed over raters
    that gives the precision ``sum (diag(c) - g c c') / sigma^2`` and the right-hand side
    ``sum (s - g c S) / sigma^2`` from each rater's per-variant counts ``c``, sums ``s`` and total ``S``;
    ``g`` depends on ``n`` alone, so the sums over raters come per group of equal ``n``.
    """
    size = len(modelled)
    position = {name: index for index, name in enumerate(modelled)}
    prior_precision = 1.0 / rules.prior_spread**2
    precision = [[prior_precision if row == column else 0.0 for column in range(size)] for row in range(size)]
    right = [rules.prior_mean * prior_precision] * size
    for variant, count in tally.counts.items():
        precision[position[variant]][position[variant]] += count / noise_variance
        right[position[variant]] += tally.sums[variant] / noise_variance
    for ratings, group in tally.groups.items():
        share = rater_variance / (noise_variance + ratings * rater_variance) / noise_variance
        for (first, second), value in group.cross.items():
            precision[position[first]][position[second]] -= share * value
        for variant, value in group.count_by_total.items():
            right[position[variant]] -= share * value
    covariance = _inverse(precision)
    means = [sum(covariance[row][column] * right[column] for column in range(size)) for row in range(size)]
    return means, covariance


def _inverse(matrix: list[list[float]]) -> list[list[float]]:
    """Gauss-Jordan inverse with partial pivoting of a small symmetric positive definite matrix."""
    size = len(matrix)
    work = [list(row) + [1.0 if row_index == column else 0.0 for column in range(size)]
            for row_index, row in enumerate(matrix)]  # fmt: skip
    for column in range(size):
        pivot = max(range(column, size), key=lambda row: abs(work[row][column]))
        work[column], work[pivot] = work[pivot], work[column]
        divisor = work[column][column]
        work[column] = [value / divisor for value in work[column]]
        for row in range(size):
            if row != column and work[row][column]:
                factor = work[row][column]
                work[row] = [
                    value - factor * pivot_value for value, pivot_value in zip(work[row], work[column], strict=True)
                ]
    return [row[size:] for row in work]


def _cholesky(matrix: Sequence[Sequence[float]]) -> list[list[float]]:
    """Lower-triangular ``L`` with ``L L' = matrix``; a tiny jitter keeps rounding from breaking it."""
    size = len(matrix)
    factor = [[0.0] * size for _ in range(size)]
    for row in range(size):
        for column in range(row + 1):
            value = matrix[row][column] - sum(factor[row][k] * factor[column][k] for k in range(column))
            if row == column:
                factor[row][row] = math.sqrt(max(value, 1e-12))
            else:
                factor[row][column] = value / factor[column][column]
    return factor
