"""``mmpp bench feedback``: the simulation runs through the CLI entry point and reports its figures."""

from __future__ import annotations

import json
from random import Random

import pytest

from bench import feedback
from mmpp.cli import main as mmpp_main
from mmpp.variants import Rules


def test_a_small_run_through_mmpp_prints_the_figures_as_json(capsys: pytest.CaptureFixture[str]) -> None:
    status = mmpp_main(
        ["bench", "feedback", "--experiments", "12", "--seed", "3", "--json", "--command-path-orders", "0"]
    )
    result = json.loads(capsys.readouterr().out)
    assert status == (0 if result["pass"] else 3)
    assert result["experiments"] == 12 and result["seed"] == 3
    adaptive = result["adaptive"]
    for rate in ("best_promoted_rate", "worse_promoted_rate", "undecided_rate"):
        assert 0.0 <= adaptive[rate] <= 1.0
    assert adaptive["best_promoted_rate"] + adaptive["worse_promoted_rate"] + adaptive["undecided_rate"] == (
        pytest.approx(1.0)
    )
    assert adaptive["median_ratings_to_promotion"] > 0 and adaptive["mean_regret"] > 0
    # The bot's code finds the best variant, and serves it more than an equal split would.
    assert adaptive["best_promoted_rate"] >= 0.9
    assert adaptive["served_share"]["sharper"] > 0.45 > adaptive["served_share"]["base"]
    assert result["equal_split_at_targets"]["ratings"] > 0
    assert {target["name"] for target in result["targets"]} == {
        "best variant promoted",
        "worse variant promoted",
        "median ratings to promotion / equal split",
        "regret / equal split",
    }
    assert result["rules"] == json.loads(json.dumps(Rules().__dict__))


def test_the_table_names_every_target_with_its_verdict(capsys: pytest.CaptureFixture[str]) -> None:
    status = mmpp_main(["bench", "feedback", "--experiments", "6", "--command-path-orders", "4"])
    out = capsys.readouterr().out
    assert status in (0, 3)
    assert "command path at 5000 stored ratings: an order" in out
    for name in ("best variant promoted", "worse variant promoted", "median ratings", "regret / equal split",
                 "order with variants / without"):  # fmt: skip
        verdicts = [line for line in out.splitlines() if line.startswith(("PASS", "FAIL")) and name in line]
        assert len(verdicts) == 1, out


def test_the_same_seed_gives_the_same_figures() -> None:
    world = feedback.World()
    first = feedback.simulate(4, 9, Rules(), world)
    again = feedback.simulate(4, 9, Rules(), world)
    for key in ("adaptive", "equal_split_at_targets", "ratings_ratio", "regret_ratio"):
        assert first[key] == again[key]


def test_both_designs_see_the_same_orders() -> None:
    orders = feedback.Orders(feedback.World(), Random(1))
    first = [job for job, _ in zip(orders.replay(), range(30), strict=False)]
    again = [job for job, _ in zip(orders.replay(), range(60), strict=False)]
    assert again[:30] == first and len(set(again)) > 30  # replayed, then drawn further, not restarted


def test_the_t_test_promotes_only_a_clear_leader() -> None:
    names = ["a", "b", "c"]
    clear = feedback._t_test_decision(names, [100, 100, 100], [300.0, 320.0, 400.0], [1000.0, 1124.0, 1700.0])
    assert clear == "c"
    close = feedback._t_test_decision(names, [100, 100, 100], [300.0, 390.0, 400.0], [1000.0, 1620.0, 1700.0])
    assert close is None


def test_bad_options_are_refused_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert mmpp_main(["bench", "feedback", "--experiments", "0"]) == 2
    assert mmpp_main(["bench", "feedback", "--challenger-share", "1"]) == 2
    assert mmpp_main(["bench", "feedback", "--means", "3.2,six"]) == 2
    assert mmpp_main(["bench", "feedback", "--means", "3.2"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 4 and all(line.startswith("error[INVALID_REQUEST]: mmpp bench feedback:") for line in lines)


def test_other_true_means_and_a_tie_for_best(capsys: pytest.CaptureFixture[str]) -> None:
    """Two variants tied for best: promoting either is right, so nothing counts as a worse promotion."""
    mmpp_main(["bench", "feedback", "--experiments", "5", "--means", "3.9,3.0,3.9,3.0", "--json"])
    result = json.loads(capsys.readouterr().out)
    assert result["true_means"] == {"base": 3.9, "variant-2": 3.0, "variant-3": 3.9, "variant-4": 3.0}
    assert result["adaptive"]["worse_promoted_rate"] == 0.0
    assert result["adaptive"]["best_promoted_rate"] + result["adaptive"]["undecided_rate"] == pytest.approx(1.0)


async def test_the_command_path_figures_come_from_real_orders_of_both_styles() -> None:
    """Not a timing test: it checks what ``bench/assignment.py`` measures is what it says (orders of a style with
    variants, whose jobs got variants, against a style without), not how fast."""
    from bench.assignment import measure

    result = await measure(ratings=300, orders=3)
    assert result["stored_ratings"] == 300 and result["orders_per_style"] == 3
    for key in ("order_ms_with_variants_p50", "order_ms_without_variants_p50", "assignment_ms_p50",
                "ratings_read_ms_p50"):  # fmt: skip
        assert result[key] > 0
    assert result["ratio"] == pytest.approx(
        result["order_ms_with_variants_p50"] / result["order_ms_without_variants_p50"], rel=0.02
    )
    assert result["variants_served"] and set(result["variants_served"]) <= {"base", "more-likeness"}
