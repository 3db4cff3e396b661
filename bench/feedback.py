"""``mmpp bench feedback``: does adaptive assignment find the best variant sooner, and cheaper, than an A/B test?

A simulation, not a timed test.  Each experiment is one style with three variants whose true mean
ratings are known (3.2, 3.5 and 3.9 stars by default) and a population of simulated people: each
person has their own rating offset (normal, spread 0.7) and rates with noise (spread 1); a rating is
``true mean + offset + noise`` rounded to whole stars and clipped to 1..5, as people rate.  Jobs arrive
one after another, each from a person drawn at random, with 1-4 pictures (mostly 1 or 2), all from one
variant (the engine renders a job in one call), and the person rates each picture with probability 0.9.
``--enthusiasts`` makes a share of the people give everything 5 stars, whatever they are served.

The adaptive side runs *the bot's code*: :func:`mmpp.variants.choose_from` picks each job's variant
from :func:`mmpp.variants.posterior`, and :func:`mmpp.variants.promotion_from` is asked after every
job's ratings arrive; the experiment ends at the first promotion (or, undecided, at ``--max-ratings``).
Ratings arrive late, as in the bot: a job's ratings are seen only after ``--rating-delay`` later jobs
have been assigned (default 5), so assignment works on stale figures and the floor overshoots as it
would live.  The :class:`~mmpp.variants.Tally` grows one rating at a time (the bot rebuilds it from the
database per order; a test checks both give the same posterior).

The comparison is a fixed equal-split A/B test on *the same people and the same orders* (each job's
person and pictures are drawn once per experiment and replayed; only the rating noise differs, as the
variants served differ): variants take turns job by job, and after ``N`` ratings the variant with
the highest mean is promoted when a one-sided Welch t-test at 0.05 finds it above each other
variant.  ``N`` is the smallest (on a grid of 15 ratings) at which, over the same experiments, the
A/B test promotes the best variant at least 0.95 of the time and a worse one at most 0.05: the
targets' error rates, which the adaptive run must meet too.  Where the adaptive run does better than
the targets this favours the A/B test; the A/B test at the adaptive run's own measured rates (more
ratings, and a noisy figure when that rate is near 1) is printed beside it.

Figures: how often the truly best variant is promoted (target >= 0.95) and a worse one (<= 0.05);
median ratings until promotion against the A/B test's ``N`` (<= 0.6x); regret, the true mean rating
lost on every picture served during the experiment against always serving the best, summed per
experiment and averaged, against the A/B test's over its ``N`` ratings (<= 0.5x).  Exit status
(``mmpp.commandline``'s table): 0 when every target is met, 3 when one is missed, 2 for bad options.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import sys
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from random import Random
from typing import Any

from bench.cli import at_least, parse_options
from bench.machine import cpu_name
from mmpp.commandline import EXIT_OK, EXIT_TARGET_MISSED, OneLineParser, run_reporting_errors
from mmpp.stats import student_t_cdf
from mmpp.variants import Observation, Rules, Tally, choose_from, posterior, promotion_from

logger = logging.getLogger("bench.feedback")

#: The variants' true mean ratings by default (``--means``); the last is the best.  "base" is the style
#: as written in styles.toml.
TRUE_MEANS = {"base": 3.2, "warmer": 3.5, "sharper": 3.9}
#: How many pictures a job has, and how often (people mostly order one or two).
PICTURE_WEIGHTS = {1: 0.5, 2: 0.3, 3: 0.1, 4: 0.1}
#: The A/B test's one-sided significance level for each comparison of the leader with another variant.
T_TEST_LEVEL = 0.05
#: An enthusiast's offset: every rating 5 stars whatever the variant and the noise (within 1e-9).
ENTHUSIAST_OFFSET = 10.0
TARGET_BEST = 0.95
TARGET_WORSE = 0.05
TARGET_RATINGS_RATIO = 0.6
TARGET_REGRET_RATIO = 0.5


@dataclass(frozen=True)
class World:
    """What the simulated people are like (the same for every experiment; each draws its own people)."""

    people: int = 200
    rater_spread: float = 0.7
    noise: float = 1.0
    rated_share: float = 0.9
    max_ratings: int = 3000
    step: int = 15
    rating_delay: int = 5  # later jobs assigned before a job's ratings are seen
    true_means: tuple[float, ...] = tuple(TRUE_MEANS.values())
    enthusiasts: float = 0.0  # share of people who give everything 5 (their offset is +5)

    def variants(self) -> dict[str, float]:
        """The variants' names and true means: the default names for three, ``variant-N`` otherwise."""
        names = list(TRUE_MEANS) if len(self.true_means) == len(TRUE_MEANS) else [
            "base", *(f"variant-{index}" for index in range(2, len(self.true_means) + 1))
        ]  # fmt: skip
        return dict(zip(names, self.true_means, strict=True))


@dataclass(frozen=True)
class Job:
    person: int
    rated: tuple[bool, ...]  # one per picture: does the person rate it


def stars(true_mean: float, offset: float, noise: float, random: Random) -> int:
    return min(5, max(1, round(true_mean + offset + random.gauss(0.0, noise))))


def orders(world: World, random: Random) -> Iterator[Job]:
    """The experiment's endless stream of jobs: who orders, how many pictures, which get rated."""
    sizes, weights = list(PICTURE_WEIGHTS), list(PICTURE_WEIGHTS.values())
    while True:
        pictures = random.choices(sizes, weights)[0]
        yield Job(random.randrange(world.people), tuple(random.random() < world.rated_share for _ in range(pictures)))


@dataclass(frozen=True)
class AdaptiveRun:
    promoted: str | None
    ratings: int
    regret: float
    pictures: int
    served: dict[str, int]


def run_adaptive(world: World, rules: Rules, offsets: list[float], jobs: Orders, seed: str) -> AdaptiveRun:
    """One experiment through the bot's assignment and promotion code (``jobs`` grows as it is consumed)."""
    true_means = world.variants()
    names = list(true_means)
    best = max(true_means.values())
    chooser, rater = Random(f"{seed}-choose"), Random(f"{seed}-adaptive-ratings")
    tally = Tally()
    state = posterior(names, tally, rules)
    ratings, pictures, regret = 0, 0, 0.0
    served = dict.fromkeys(names, 0)
    in_flight: deque[list[Observation]] = deque()  # the ratings of the last jobs, not yet given
    for job in jobs.replay():
        variant = choose_from(state, chooser, rules)
        served[variant] += len(job.rated)
        given = []
        for rated in job.rated:
            pictures += 1
            regret += best - true_means[variant]
            if rated:
                score = stars(true_means[variant], offsets[job.person], world.noise, rater)
                given.append(Observation(variant, f"person-{job.person}", score))
        in_flight.append(given)
        if len(in_flight) <= world.rating_delay:
            continue
        arrived = in_flight.popleft()
        for observation in arrived:
            tally.add(observation)
        ratings += len(arrived)
        if arrived:
            state = posterior(names, tally, rules)  # also the posterior the next job is chosen from
            promotion = promotion_from(state, chooser, rules)
            if promotion is not None:
                return AdaptiveRun(promotion.variant, ratings, regret, pictures, served)
        if ratings >= world.max_ratings:
            break
    return AdaptiveRun(None, ratings, regret, pictures, served)


def run_equal_split(
    world: World, offsets: list[float], jobs: Orders, seed: str
) -> tuple[list[str | None], list[float]]:
    """The A/B test on the same people and orders: its decision and regret at every ``step`` of ratings."""
    true_means = world.variants()
    names = list(true_means)
    best = max(true_means.values())
    rater = Random(f"{seed}-equal-ratings")
    counts, sums, squares = [0] * len(names), [0.0] * len(names), [0.0] * len(names)
    decisions: list[str | None] = []
    regrets: list[float] = []
    ratings, regret = 0, 0.0
    for turn, job in enumerate(jobs.replay()):
        index = turn % len(names)  # variants take turns job by job
        for rated in job.rated:
            regret += best - true_means[names[index]]
            if rated:
                score = stars(true_means[names[index]], offsets[job.person], world.noise, rater)
                counts[index] += 1
                sums[index] += score
                squares[index] += score * score
                ratings += 1
        while ratings >= world.step * (len(decisions) + 1) and len(decisions) < world.max_ratings // world.step:
            decisions.append(_t_test_decision(names, counts, sums, squares))
            regrets.append(regret)
        if len(decisions) >= world.max_ratings // world.step:
            break
    return decisions, regrets


class Orders:
    """The experiment's orders, the same for both designs: drawn once, as far as either needs, then replayed."""

    def __init__(self, world: World, random: Random) -> None:
        self._stream = orders(world, random)
        self._drawn: list[Job] = []

    def replay(self) -> Iterator[Job]:
        index = 0
        while True:
            if index == len(self._drawn):
                self._drawn.append(next(self._stream))
            yield self._drawn[index]
            index += 1


def _t_test_decision(names: list[str], counts: list[int], sums: list[float], squares: list[float]) -> str | None:
    """The leader by mean, if a one-sided Welch t-test at ``T_TEST_LEVEL`` puts it above every other variant."""
    if min(counts) < 2:
        return None
    means = [total / count for total, count in zip(sums, counts, strict=True)]
    variances = [
        max((square - count * mean * mean) / (count - 1), 1e-9)
        for square, count, mean in zip(squares, counts, means, strict=True)
    ]
    leader = max(range(len(names)), key=means.__getitem__)
    for other in range(len(names)):
        if other == leader:
            continue
        first, second = variances[leader] / counts[leader], variances[other] / counts[other]
        statistic = (means[leader] - means[other]) / math.sqrt(first + second)
        freedom = (first + second) ** 2 / (first**2 / (counts[leader] - 1) + second**2 / (counts[other] - 1))
        if 1.0 - student_t_cdf(statistic, freedom) >= T_TEST_LEVEL:
            return None
    return names[leader]


def simulate(experiments: int, seed: int, rules: Rules, world: World, say: Any = None) -> dict[str, Any]:
    started = time.monotonic()
    true_means = world.variants()
    best_names = {name for name, mean in true_means.items() if mean == max(true_means.values())}
    adaptive: list[AdaptiveRun] = []
    split_decisions: list[list[str | None]] = []
    split_regrets: list[list[float]] = []
    for experiment in range(experiments):
        experiment_seed = f"{seed}-{experiment}"
        people = Random(f"{experiment_seed}-people")
        offsets = [people.gauss(0.0, world.rater_spread) for _ in range(world.people)]
        enthusiasts = Random(f"{experiment_seed}-enthusiasts")
        offsets = [ENTHUSIAST_OFFSET if enthusiasts.random() < world.enthusiasts else offset for offset in offsets]
        jobs = Orders(world, Random(f"{experiment_seed}-orders"))
        adaptive.append(run_adaptive(world, rules, offsets, jobs, experiment_seed))
        decisions, regrets = run_equal_split(world, offsets, jobs, experiment_seed)
        split_decisions.append(decisions)
        split_regrets.append(regrets)
        if say is not None and (experiment + 1) % 50 == 0:
            say(f"{experiment + 1}/{experiments} experiments, {time.monotonic() - started:.0f} s")

    best_rate = sum(run.promoted in best_names for run in adaptive) / experiments
    worse_rate = sum(run.promoted not in (None, *best_names) for run in adaptive) / experiments
    undecided_rate = sum(run.promoted is None for run in adaptive) / experiments
    to_promotion = sorted(run.ratings if run.promoted is not None else math.inf for run in adaptive)
    median_ratings = statistics.median(to_promotion)
    adaptive_regret = statistics.fmean(run.regret for run in adaptive)
    served_total = sum(sum(run.served.values()) for run in adaptive)
    served_share = {name: round(sum(run.served[name] for run in adaptive) / served_total, 4) for name in true_means}

    checkpoints = min(len(decisions) for decisions in split_decisions)

    def equal_split_at(required_best: float, allowed_worse: float) -> dict[str, Any] | None:
        for checkpoint in range(checkpoints):
            right = sum(decisions[checkpoint] in best_names for decisions in split_decisions) / experiments
            wrong = sum(decisions[checkpoint] not in (None, *best_names) for decisions in split_decisions) / experiments
            if right >= required_best and wrong <= allowed_worse:
                return {
                    "ratings": (checkpoint + 1) * world.step,
                    "best_promoted_rate": right,
                    "worse_promoted_rate": wrong,
                    "mean_regret": round(statistics.fmean(regrets[checkpoint] for regrets in split_regrets), 3),
                }
        return None

    matched = equal_split_at(best_rate, worse_rate)
    at_targets = equal_split_at(TARGET_BEST, TARGET_WORSE)
    # The ratios are taken against the A/B test at the targets' error rates: where the adaptive run does
    # better than the targets, that holds the A/B test to a weaker standard (fewer ratings), so the
    # ratios err against the adaptive side; the A/B test at the adaptive run's own rates is printed too
    # (it needs more ratings, but matching a rate near 1 over a few hundred experiments is noisy).
    ratings_ratio = median_ratings / at_targets["ratings"] if at_targets else math.nan
    regret_ratio = adaptive_regret / at_targets["mean_regret"] if at_targets else math.nan
    targets = [
        _target("best variant promoted", best_rate, ">=", TARGET_BEST),
        _target("worse variant promoted", worse_rate, "<=", TARGET_WORSE),
        _target("median ratings to promotion / equal split", ratings_ratio, "<=", TARGET_RATINGS_RATIO),
        _target("regret / equal split", regret_ratio, "<=", TARGET_REGRET_RATIO),
    ]
    return {
        "experiments": experiments,
        "seed": seed,
        "true_means": true_means,
        "world": asdict(world),
        "rules": asdict(rules),
        "adaptive": {
            "best_promoted_rate": best_rate,
            "worse_promoted_rate": worse_rate,
            "undecided_rate": undecided_rate,
            "median_ratings_to_promotion": median_ratings if math.isfinite(median_ratings) else None,
            "quartiles_ratings_to_promotion": _quartiles(to_promotion),
            "mean_regret": round(adaptive_regret, 3),
            "regret_per_picture": round(adaptive_regret / statistics.fmean(run.pictures for run in adaptive), 4),
            "served_share": served_share,
        },
        "equal_split_same_error_rates": matched,
        "equal_split_at_targets": at_targets,
        "ratings_ratio": _rounded(ratings_ratio),
        "regret_ratio": _rounded(regret_ratio),
        "targets": targets,
        "pass": all(target["pass"] for target in targets),
        "seconds": round(time.monotonic() - started, 1),
        "cpu": cpu_name(),
    }


def _target(name: str, value: float, relation: str, bound: float) -> dict[str, Any]:
    met = math.isfinite(value) and (value >= bound if relation == ">=" else value <= bound)
    return {"name": name, "value": _rounded(value), "target": f"{relation} {bound}", "pass": met}


def _rounded(value: float) -> float | None:
    return round(value, 4) if math.isfinite(value) else None


def _quartiles(values: list[float]) -> list[float | None]:
    cut = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else values * 3
    return [round(value, 1) if math.isfinite(value) else None for value in cut]


def render_table(result: dict[str, Any]) -> str:
    adaptive = result["adaptive"]
    lines = [
        f"mmpp bench feedback: {result['experiments']} experiments, seed {result['seed']}, "
        f"true means {result['true_means']}, {result['seconds']} s on {result['cpu']}",
        f"adaptive: best promoted {adaptive['best_promoted_rate']:.3f}, worse promoted "
        f"{adaptive['worse_promoted_rate']:.3f}, undecided {adaptive['undecided_rate']:.3f}; median ratings to "
        f"promotion {adaptive['median_ratings_to_promotion']} "
        f"(quartiles {adaptive['quartiles_ratings_to_promotion']}), "
        f"mean regret {adaptive['mean_regret']} stars ({adaptive['regret_per_picture']} a picture); "
        f"served {adaptive['served_share']}",
    ]
    for label, key in (("same error rates", "equal_split_same_error_rates"), ("0.95/0.05", "equal_split_at_targets")):
        split = result[key]
        if split is None:
            lines.append(f"equal split at {label}: not reached within {result['world']['max_ratings']} ratings")
        else:
            lines.append(
                f"equal split at {label}: {split['ratings']} ratings, best promoted {split['best_promoted_rate']:.3f}, "
                f"worse promoted {split['worse_promoted_rate']:.3f}, mean regret {split['mean_regret']} stars"
            )
    cost = result.get("command_path")
    if cost:
        with_variants, without = cost["order_ms_with_variants_p50"], cost["order_ms_without_variants_p50"]
        lines.append(
            f"command path at {cost['stored_ratings']} stored ratings: an order {with_variants} ms with variants, "
            f"{without} ms without (p50 of {cost['orders_per_style']}); the assignment {cost['assignment_ms_p50']} "
            f"ms, reading the ratings {cost['ratings_read_ms_p50']} ms once per {cost['ratings_fresh_seconds']:g} s"
        )
    for target in result["targets"]:
        lines.append(
            f"{'PASS' if target['pass'] else 'FAIL'}  {target['name']}: {target['value']} ({target['target']})"
        )
    return "\n".join(lines)


def _means(text: str) -> tuple[float, ...]:
    try:
        means = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of numbers: {text[:40]!r}") from None
    if len(means) < 2 or not all(1.0 <= mean <= 5.0 for mean in means):
        raise argparse.ArgumentTypeError("give two or more true means between 1 and 5, e.g. 3.2,3.5,3.9")
    return means


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1], not {text}")
    return value


def _share(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1), not {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    defaults = Rules()
    parser = OneLineParser(
        prog="mmpp bench feedback",
        description=(
            "Simulate experiments with three variants of known quality and people with their own rating offsets, "
            "run them through the bot's assignment and promotion code and through a fixed equal-split A/B test, "
            "and print how often the best and a worse variant are promoted, the ratings until promotion and "
            f"the regret against the A/B test. Exit status {EXIT_TARGET_MISSED} when a target is missed."
        ),
    )
    parser.add_argument("--experiments", type=at_least(1, int), default=200, help="experiments (default 200)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the whole simulation (default 1)")
    parser.add_argument(
        "--means", type=_means, default=World.true_means,
        help="the variants' true mean ratings, comma-separated (default 3.2,3.5,3.9)",
    )  # fmt: skip
    parser.add_argument(
        "--enthusiasts", type=_fraction, default=World.enthusiasts,
        help="share of people who give everything 5 stars (default 0)",
    )  # fmt: skip
    parser.add_argument("--people", type=at_least(1, int), default=World.people, help="people per experiment")
    parser.add_argument(
        "--max-ratings", type=at_least(30, int), default=World.max_ratings,
        help=f"ratings after which an experiment is undecided (default {World.max_ratings})",
    )  # fmt: skip
    parser.add_argument(
        "--rating-delay", type=at_least(0, int), default=World.rating_delay,
        help=f"jobs assigned before a job's ratings arrive (default {World.rating_delay})",
    )  # fmt: skip
    parser.add_argument("--exploration-floor", type=at_least(0, int), default=defaults.exploration_floor)
    parser.add_argument("--min-ratings", type=at_least(0, int), default=defaults.min_ratings)
    parser.add_argument("--draws", type=at_least(1, int), default=defaults.draws)
    parser.add_argument(
        "--challenger-share", type=_share, default=defaults.challenger_share,
        help="share of jobs for the challenger (0: plain Thompson sampling)",
    )  # fmt: skip
    parser.add_argument(
        "--no-rater-offsets", action="store_true", help="leave rater offsets out of the model (for comparison)"
    )
    parser.add_argument(
        "--command-path-orders", type=at_least(0, int), default=40,
        help="orders per style timed for the assignment's cost on the command path (0: skip; bench/assignment.py)",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    parser.add_argument("-v", "--verbose", action="store_true", help="progress to stderr")
    return parser


def main(argv: list[str] | None = None) -> int:
    """``mmpp bench feedback [options]`` (``argv``: the options); returns the exit status."""
    parser = build_parser()
    arguments = parse_options(parser, list(sys.argv[1:] if argv is None else argv))
    if isinstance(arguments, int):
        return arguments
    rules = Rules(
        exploration_floor=arguments.exploration_floor,
        min_ratings=arguments.min_ratings,
        draws=arguments.draws,
        challenger_share=arguments.challenger_share,
        model_rater_offsets=not arguments.no_rater_offsets,
    )
    world = World(
        people=arguments.people,
        max_ratings=arguments.max_ratings,
        rating_delay=arguments.rating_delay,
        true_means=arguments.means,
        enthusiasts=arguments.enthusiasts,
    )
    started = time.monotonic()

    def say(message: str) -> None:
        if arguments.verbose:
            print(f"[feedback {time.monotonic() - started:6.1f}s] {message}", file=sys.stderr, flush=True)

    def body() -> int:
        result = simulate(arguments.experiments, arguments.seed, rules, world, say)
        if arguments.command_path_orders:
            from bench.assignment import COST_TARGET, measure_blocking

            say("timing orders with and without variants (the command path)")
            cost = result["command_path"] = measure_blocking(orders=arguments.command_path_orders)
            result["targets"].append(_target("order with variants / without (command path)", cost["ratio"], "<=",
                                             COST_TARGET))  # fmt: skip
            result["pass"] = all(target["pass"] for target in result["targets"])
        print(json.dumps(result, indent=2) if arguments.json else render_table(result))
        return EXIT_OK if result["pass"] else EXIT_TARGET_MISSED

    return run_reporting_errors(body, logger)
