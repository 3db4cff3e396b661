"""The assignment and promotion rules of mmpp/variants.py, on a controllable random source."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace
from random import Random

import pytest

from mmpp.variants import (
    Observation,
    Rules,
    Tally,
    choose_variant,
    decide_promotion,
    posterior,
    summarise,
)


def ratings(
    true_means: dict[str, float], raters: int, per_rater: int, seed: int, spread: float = 0.7
) -> list[Observation]:
    """People with their own offsets, each rating ``per_rater`` pictures of variants drawn at random."""
    random = Random(seed)
    observations = []
    names = sorted(true_means)
    for person in range(raters):
        offset = random.gauss(0.0, spread)
        for _ in range(per_rater):
            variant = random.choice(names)
            score = min(5, max(1, round(true_means[variant] + offset + random.gauss(0.0, 1.0))))
            observations.append(Observation(variant, f"person-{person}", score))
    return observations


def traffic(active: list[str], observations: list[Observation], rules: Rules, jobs: int, seed: int) -> Counter[str]:
    random = Random(seed)
    return Counter(choose_variant(active, observations, random, rules) for _ in range(jobs))


@pytest.mark.parametrize("challenger_share", [0.0, Rules().challenger_share])
def test_a_better_variant_gets_more_traffic(challenger_share: float) -> None:
    observations = ratings({"good": 3.9, "poor": 3.4}, raters=20, per_rater=4, seed=1)
    rules = Rules(exploration_floor=10, challenger_share=challenger_share)
    served = traffic(["poor", "good"], observations, rules, jobs=400, seed=2)
    assert served["good"] > 1.5 * served["poor"], served
    assert served["poor"] > 0  # still explored: the posterior is not certain yet


def test_plain_thompson_sampling_serves_each_variant_as_often_as_it_is_likely_best() -> None:
    observations = ratings({"one": 3.5, "two": 3.55, "three": 3.6}, raters=40, per_rater=4, seed=3)
    rules = Rules(exploration_floor=10, challenger_share=0.0)
    active = ["one", "two", "three"]
    likely = {
        summary.variant: summary.probability_best for summary in summarise(active, observations, Random(1), rules)
    }
    served = traffic(active, observations, rules, jobs=1000, seed=4)
    assert max(likely.values()) < 0.9  # a real contest: every variant gets some traffic
    for variant in active:
        assert served[variant] / 1000 == pytest.approx(likely[variant], abs=0.05), (served, likely)


def test_the_challenger_share_goes_to_the_runner_up() -> None:
    observations = ratings({"good": 3.9, "poor": 3.4}, raters=20, per_rater=4, seed=1)
    plain = traffic(["poor", "good"], observations, Rules(exploration_floor=10, challenger_share=0.0), 400, seed=2)
    top_two = traffic(["poor", "good"], observations, Rules(exploration_floor=10, challenger_share=0.5), 400, seed=2)
    assert top_two["poor"] > plain["poor"] + 40, (plain, top_two)


def test_a_variant_under_the_floor_is_served_first() -> None:
    observations = ratings({"good": 4.2, "poor": 3.0}, raters=30, per_rater=4, seed=5)
    observations += [Observation("new", "person-1", 1), Observation("new", "person-2", 2)]
    rules = Rules(exploration_floor=5)
    assert traffic(["good", "poor", "new"], observations, rules, jobs=50, seed=6) == {"new": 50}
    # Past the floor, the poor new variant gets hardly anything.
    grown = observations + [Observation("new", f"person-{index}", 1) for index in range(3, 10)]
    assert traffic(["good", "poor", "new"], grown, rules, jobs=200, seed=6)["new"] < 20


def test_under_the_floor_the_one_with_fewest_ratings_goes_first() -> None:
    observations = [Observation("a", "p", 3)] * 3 + [Observation("b", "q", 3)] + [Observation("c", "r", 3)] * 30
    assert traffic(["a", "b", "c"], observations, Rules(exploration_floor=10), jobs=20, seed=7) == {"b": 20}
    # A variant never rated at all counts as under the floor too.
    assert traffic(["a", "b", "c", "d"], observations, Rules(exploration_floor=10), jobs=5, seed=7) == {"d": 5}


def test_one_variant_is_always_served_and_never_promoted() -> None:
    observations = ratings({"base": 4.5}, raters=50, per_rater=4, seed=8)
    assert traffic(["base"], observations, Rules(), jobs=10, seed=9) == {"base": 10}
    assert decide_promotion(["base"], observations, Random(1)) is None
    assert summarise(["base"], observations, Random(1))[0].probability_best == 1.0


def clear_winner(winner_ratings: int) -> list[Observation]:
    """A variant rated 4-5 by people who rate the other 2-3, and ``winner_ratings`` of the winner."""
    observations = []
    for index in range(winner_ratings):
        observations.append(Observation("winner", f"person-{index % 15}", 4 + index % 2))
    for index in range(40):
        observations.append(Observation("other", f"person-{index % 15}", 2 + index % 2))
    return observations


def test_no_promotion_below_min_ratings_then_promotion_at_it() -> None:
    rules = Rules(exploration_floor=10, min_ratings=30)
    assert decide_promotion(["winner", "other"], clear_winner(29), Random(1), rules) is None
    promotion = decide_promotion(["winner", "other"], clear_winner(30), Random(1), rules)
    assert promotion is not None and promotion.variant == "winner" and promotion.ratings == 30
    assert promotion.probability_best >= 0.95


def test_no_promotion_while_a_variant_is_under_the_floor() -> None:
    observations, active = clear_winner(60), ["winner", "other"]
    assert decide_promotion(active, observations, Random(1), Rules(exploration_floor=41, min_ratings=60)) is None
    assert decide_promotion(active, observations, Random(1), Rules(exploration_floor=40, min_ratings=60)) is not None


def close_contest() -> list[Observation]:
    """Two variants close enough that the probability of the leader being best is well inside (0.5, 1)."""
    return ratings({"ahead": 3.65, "behind": 3.5}, raters=60, per_rater=5, seed=11)


def test_promotion_exactly_at_the_probability_threshold() -> None:
    observations = close_contest()
    rules = Rules(exploration_floor=10, min_ratings=10)
    summaries = {summary.variant: summary for summary in summarise(["ahead", "behind"], observations, Random(5), rules)}
    leader = max(summaries.values(), key=lambda summary: summary.probability_best)
    assert 0.6 < leader.probability_best < 0.99, summaries
    at = decide_promotion(
        ["ahead", "behind"], observations, Random(5), replace(rules, promote_probability=leader.probability_best)
    )
    assert at is not None and at.variant == leader.variant and at.probability_best == leader.probability_best
    above = replace(rules, promote_probability=min(1.0, leader.probability_best + 0.01))
    assert decide_promotion(["ahead", "behind"], observations, Random(5), above) is None
    # The default 0.95 is not reached by this contest.
    assert decide_promotion(["ahead", "behind"], observations, Random(5), rules) is None


def test_promotion_exactly_at_the_threshold_among_three_variants() -> None:
    observations = ratings({"ahead": 3.75, "middle": 3.5, "behind": 3.3}, raters=60, per_rater=5, seed=19)
    active = ["behind", "middle", "ahead"]
    rules = Rules(exploration_floor=10, min_ratings=10)
    leader = max(summarise(active, observations, Random(5), rules), key=lambda summary: summary.probability_best)
    assert 0.6 < leader.probability_best < 0.995
    at = decide_promotion(active, observations, Random(5), replace(rules, promote_probability=leader.probability_best))
    assert at is not None and at.variant == leader.variant == "ahead"
    above = replace(rules, promote_probability=min(1.0, leader.probability_best + 0.005))
    assert decide_promotion(active, observations, Random(5), above) is None


def enthusiast_among(seed: int) -> list[Observation]:
    """Two equally good variants; one person rates thirty pictures of 'b' 5 stars each."""
    observations = ratings({"a": 3.4, "b": 3.4}, raters=60, per_rater=3, seed=seed)
    observations += [Observation("b", "enthusiast", 5)] * 30
    return observations


@pytest.mark.parametrize("seed", [12, 13, 14])
def test_a_rater_who_gives_everything_five_does_not_make_their_variant_win(seed: int) -> None:
    observations = enthusiast_among(seed)
    rules = Rules(exploration_floor=10, min_ratings=10)
    summaries = {summary.variant: summary for summary in summarise(["a", "b"], observations, Random(1), rules)}
    assert summaries["b"].raw_mean is not None and summaries["a"].raw_mean is not None
    assert summaries["b"].raw_mean - summaries["a"].raw_mean > 0.25  # the plain mean is fooled
    assert summaries["b"].probability_best < 0.9, summaries
    assert decide_promotion(["a", "b"], observations, Random(1), rules) is None
    # What the offset model buys: without it, the enthusiast does make 'b' win.
    naive = replace(rules, model_rater_offsets=False)
    assert decide_promotion(["a", "b"], observations, Random(1), naive) is not None


def test_an_enthusiast_raises_their_offset_not_the_variant() -> None:
    observations = enthusiast_among(12)
    with_enthusiast = posterior(["a", "b"], observations)
    without = posterior(["a", "b"], [observation for observation in observations if observation.rater != "enthusiast"])
    assert abs(with_enthusiast.means[1] - without.means[1]) < 0.15
    naive = posterior(["a", "b"], observations, Rules(model_rater_offsets=False))
    assert naive.means[1] - without.means[1] > 0.25


def test_the_same_seed_gives_the_same_decisions() -> None:
    observations = close_contest()
    first = [choose_variant(["ahead", "behind"], observations, random) for random in [Random(21)] for _ in range(50)]
    again = [choose_variant(["ahead", "behind"], observations, random) for random in [Random(21)] for _ in range(50)]
    assert first == again and len(set(first)) == 2
    contest = ["ahead", "behind"]
    assert summarise(contest, observations, Random(3)) == summarise(contest, observations, Random(3))


def test_a_tally_grown_one_rating_at_a_time_matches_one_built_at_once() -> None:
    observations = ratings({"a": 3.0, "b": 3.5, "c": 4.0}, raters=30, per_rater=6, seed=15)
    grown = Tally()
    for observation in observations:
        grown.add(observation)
    at_once, incremental = posterior("abc", observations), posterior("abc", grown)
    assert at_once.ratings == incremental.ratings
    assert at_once.means == pytest.approx(incremental.means, abs=1e-9)
    assert at_once.rater_sd == pytest.approx(incremental.rater_sd, abs=1e-9)


def test_a_tally_from_summed_cells_matches_one_from_the_ratings() -> None:
    """What the bot reads from the database (one row per rater and variant) gives the same posterior."""
    observations = ratings({"a": 3.0, "b": 3.5, "c": 4.0}, raters=30, per_rater=6, seed=18)
    cells: dict[tuple[str, str], list[float]] = {}
    for observation in observations:
        cell = cells.setdefault((observation.rater, observation.variant), [0.0, 0.0])
        cell[0] += 1
        cell[1] += observation.score
    squares = sum(observation.score**2 for observation in observations)
    summed = Tally.from_cells(
        [(rater, variant, count, total) for (rater, variant), (count, total) in cells.items()], squares
    )
    summed.add(Observation("a", "newcomer", 5))  # and it grows like any other
    direct = posterior("abc", [*observations, Observation("a", "newcomer", 5)])
    from_cells = posterior("abc", summed)
    assert from_cells.ratings == direct.ratings
    assert from_cells.means == pytest.approx(direct.means, abs=1e-9)
    assert (from_cells.noise_sd, from_cells.rater_sd) == pytest.approx((direct.noise_sd, direct.rater_sd), abs=1e-9)


def test_the_spreads_are_estimated_from_the_ratings() -> None:
    observations = ratings({"a": 3.0, "b": 3.5}, raters=300, per_rater=8, seed=16, spread=0.7)
    estimate = posterior(["a", "b"], observations)
    assert 0.85 < estimate.noise_sd < 1.15  # noise 1, plus rounding to stars
    assert 0.55 < estimate.rater_sd < 0.85
    quiet = posterior(["a", "b"], ratings({"a": 3.0, "b": 3.5}, raters=300, per_rater=8, seed=16, spread=0.05))
    assert quiet.rater_sd < 0.3


def test_ratings_of_a_paused_variant_still_inform_the_offsets() -> None:
    observations = ratings({"a": 3.2, "b": 3.6, "paused": 2.0}, raters=40, per_rater=5, seed=17)
    estimate = posterior(["a", "b"], observations)
    assert estimate.variants == ("a", "b") and len(estimate.covariance) == 2
    assert choose_variant(["a", "b"], observations, Random(1)) in {"a", "b"}


def test_the_evidence_is_json_and_names_every_variant() -> None:
    promotion = decide_promotion(
        ["winner", "other"], clear_winner(60), Random(1), Rules(exploration_floor=10, min_ratings=60)
    )
    assert promotion is not None
    evidence = json.loads(json.dumps(promotion.evidence()))
    assert evidence["variant"] == "winner" and evidence["ratings"] == 60
    assert evidence["probability_best"] >= 0.95
    assert {entry["variant"] for entry in evidence["variants"]} == {"winner", "other"}
    assert evidence["rules"]["promote_probability"] == 0.95
    assert all(0 < entry["adjusted_spread"] < 0.5 for entry in evidence["variants"])


def test_the_adjusted_spread_narrows_with_more_ratings() -> None:
    few = summarise(["a", "b"], ratings({"a": 3.0, "b": 3.5}, raters=10, per_rater=4, seed=20), Random(1))
    many = summarise(["a", "b"], ratings({"a": 3.0, "b": 3.5}, raters=100, per_rater=4, seed=20), Random(1))
    for small, large in zip(few, many, strict=True):
        assert small.adjusted_spread is not None and large.adjusted_spread is not None
        assert large.adjusted_spread < 0.5 * small.adjusted_spread
    assert summarise(["a", "b", "unrated"], [], Random(1))[2].adjusted_spread is None


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="no active variant"):
        choose_variant([], [], Random(1))
    with pytest.raises(ValueError, match="between 1 and 5"):
        Tally([Observation("a", "p", 6)])
    with pytest.raises(ValueError, match="between 1 and 5"):
        Tally().add(Observation("a", "p", 0))
    with pytest.raises(ValueError):
        Rules(promote_probability=1.5)
