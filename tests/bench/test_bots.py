"""``mmpp bench bots``: the load harness runs end to end and its figures add up.

No timing thresholds here: the machine is shared and the figures are the
benchmark's to report.  What is checked is that every figure is there and
consistent with the others (jobs == commands, one delivery per picture, no
duplicates, positive latencies), on both platforms, through the real
``main`` with ``--json``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import sys
from typing import Any

import pytest
from PIL import Image

import bench.bots as bench
from mmpp.cli import main as mmpp_main
from mmpp.contract import GenerateResult
from mmpp.errors import ErrorCode
from tests.conftest import POSTGRES_URL

RUNS = {
    "discord": ["--users", "10", "--seconds", "5", "--json"],
    "telegram": ["--platform", "telegram", "--users", "5", "--seconds", "3", "--json"],
    # One channel / one group with everyone at once, Telegram's flood limits enforced by the fake.
    "discord-busy": ["--busy", "--users", "12", "--json"],
    "telegram-busy": ["--platform", "telegram", "--busy", "--users", "4", "--json"],
}


@pytest.fixture(scope="module", params=sorted(RUNS))
def result(request: pytest.FixtureRequest) -> dict[str, Any]:
    """One run per platform, shared by the tests below (each takes a few seconds)."""
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        status = bench.main(RUNS[request.param])
    report = json.loads(output.getvalue())
    assert status == (0 if report["pass"] else bench.EXIT_TARGET_MISSED)
    return report


def test_the_report_names_the_run_and_the_machine(result: dict[str, Any]) -> None:
    assert result["benchmark"] == "bots" and result["platform"] in bench.PLATFORMS
    assert (result["store"], result["processes"]) == ("sqlite", 1)  # the default: one process on SQLite
    assert [entry["jobs_sent"] for entry in result["cpu"]["processes"]] == [result["jobs"]["commands"]]
    assert result["machine"]["cpu"] and result["machine"]["cores"] >= 1
    assert result["date"][:4].isdigit()
    assert "InstantWorkerQueue" in result["worker"]
    expected = {"first_reply_p99", "nothing_lost_or_duplicated", "no_errors"}
    if result["busy"]:
        expected.add("no_picture_behind_other_jobs")
        if result["platform"] == "telegram":  # the group's 20-a-minute rule queues replies: reported only
            expected.remove("first_reply_p99")
    assert set(result["targets"]) == expected
    assert result["pass"] == all(target["pass"] for target in result["targets"].values())


def test_every_command_made_exactly_one_job_and_one_delivery(result: dict[str, Any]) -> None:
    jobs, deliveries = result["jobs"], result["deliveries"]
    assert jobs["commands"] > 0
    assert jobs["rows"] == jobs["commands"]
    assert jobs["lost"] == jobs["duplicated"] == jobs["enqueued_more_than_once"] == jobs["undelivered"] == 0
    assert deliveries["posted"] == deliveries["expected"] == jobs["commands"]
    assert deliveries["lost"] == deliveries["duplicated"] == 0
    assert result["errors"]["total"] == 0, result["errors"]["first"]


def test_latencies_are_measured_for_every_command(result: dict[str, Any]) -> None:
    first, pictures = result["first_reply_ms"], result["pictures_ms"]
    assert first["count"] == pictures["count"] == result["jobs"]["commands"]
    assert 0 < first["p50"] <= first["p90"] <= first["p99"] <= first["max"]
    assert 0 < pictures["p50"] <= pictures["p99"]
    if "first_reply_p99" in result["targets"]:
        assert result["first_reply_ms"]["p99"] == result["targets"]["first_reply_p99"]["value_ms"]
    after = result["pictures_after_ready_ms"]
    assert after["count"] == result["jobs"]["commands"] and 0 <= after["p50"] <= after["p99"] <= pictures["p99"]
    assert result["commands_per_second"] > 0 and result["rating_writes_per_second"] >= 0


def test_ratings_are_counted_without_duplicates(result: dict[str, Any]) -> None:
    ratings = result["ratings"]
    assert ratings["reactions"] == result["jobs"]["commands"]  # everyone who got a picture rated it
    assert ratings["duplicated"] == ratings["wrong_score"] == 0
    assert ratings["rows"] + ratings["lost"] == ratings["reactions"]


def test_every_reaction_becomes_a_rating(result: dict[str, Any]) -> None:
    ratings = result["ratings"]
    assert ratings["rows"] == ratings["reactions"] and ratings["lost"] == 0


def test_the_instant_worker_answers_a_valid_result_with_pngs() -> None:
    async def ask() -> GenerateResult:
        queue = bench.InstantWorkerQueue()
        assert (await queue.status("unknown")).state == "PENDING"
        await queue.submit("task", {"count": 3, "style": "anime", "seed": 7}, "mmpp")
        status = await queue.status("task")
        assert status.ready and status.state == "SUCCESS" and status.result is not None
        return GenerateResult.from_payload(status.result)

    result = asyncio.run(ask())
    assert result.ok and [picture.seed for picture in result.pictures] == [7, 8, 9]
    assert Image.open(io.BytesIO(result.pictures[0].png)).format == "PNG"
    assert base64.b64decode(base64.b64encode(bench.tiny_png())) == result.pictures[0].png


def test_mmpp_bench_bots_is_routed_to_the_bot_side(capsys: pytest.CaptureFixture[str]) -> None:
    assert mmpp_main(["bench", "bots", "--help"]) == 0
    assert "--users" in capsys.readouterr().out
    assert mmpp_main(["bench", "bots", "--users", "0"]) == bench.EXIT_BAD_INPUT
    assert "error[INVALID_REQUEST]" in capsys.readouterr().err
    assert bench.main(["engine"]) == bench.EXIT_BAD_INPUT


def test_outside_a_checkout_the_fakes_are_missing_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tests.fakes.telegram_api", None)  # what an import finds when there is none
    with pytest.raises(bench.BenchError) as refused:
        bench.make_platform("telegram")
    assert refused.value.code is ErrorCode.NOT_FOUND
    assert "checkout" in refused.value.as_line() and "\n" not in refused.value.as_line()


def test_a_busy_run_puts_everyone_in_one_chat_under_the_platform_limits(result: dict[str, Any]) -> None:
    if not result["busy"]:
        pytest.skip("the busy runs only")
    assert result["chats"] == 1  # everyone in the one channel or group
    assert result["pictures_behind_other_jobs"]["count"] == 0
    assert result["targets"]["no_picture_behind_other_jobs"]["pass"]


class _Spending(bench.Platform):
    """A platform whose bot spent the shared budget at given moments on given messages."""

    def __init__(self, spent: list[tuple[float, str]]) -> None:
        self.spent = spent

    def budget_spenders(self) -> list[tuple[float, str]]:
        return self.spent

    def own_refs(self, job: Any, pictures: list[Any]) -> set[str]:
        return {f"own-{job.id}"}


class _NoPictures:
    async def pictures(self, job_id: int) -> list[Any]:
        return []


@pytest.mark.parametrize(
    ("spent", "behind"),
    [
        ([], 0),
        ([(15.0, "other-job-status")], 1),  # another job's edit while this picture waited
        ([(15.0, "own-1")], 0),  # its own status edit does not count
        ([(5.0, "other-job-status"), (25.0, "other-job-status")], 0),  # before the result, after the picture
    ],
)
def test_a_picture_waits_behind_others_only_for_their_spending_while_it_waited(
    spent: list[tuple[float, str]], behind: int
) -> None:
    from types import SimpleNamespace

    queue = bench.InstantWorkerQueue()
    queue.ready_at["task-1"] = 10.0
    cycle = bench.Cycle(0, "person", picture_at=20.0)
    job = SimpleNamespace(id=1, task_id="task-1")
    waits, counted = asyncio.run(
        bench._waits_after_ready(_Spending(spent), _NoPictures(), queue, None, [(cycle, job)])  # type: ignore[arg-type]
    )
    assert waits == [10.0] and counted == behind


@pytest.fixture(scope="module")
def stores() -> dict[str, Any]:
    """One run of every store configuration: SQLite, PostgreSQL, and two bot processes sharing PostgreSQL."""
    arguments = ["--store", "both", "--processes", "2", "--users", "6", "--seconds", "3", "--json"]
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        status = bench.main([*arguments, "--database-url", POSTGRES_URL])
    report = json.loads(output.getvalue())
    assert status == (0 if report["pass"] else bench.EXIT_TARGET_MISSED)
    return report


def test_each_store_and_two_processes_run_and_lose_or_double_nothing(stores: dict[str, Any]) -> None:
    runs = stores["configurations"]
    assert [(run["store"], run["processes"]) for run in runs] == [("sqlite", 1), ("postgresql", 1), ("postgresql", 2)]
    for run in runs:
        jobs, deliveries, ratings = run["jobs"], run["deliveries"], run["ratings"]
        assert jobs["commands"] > 0 and jobs["rows"] == jobs["commands"], run["store"]
        assert jobs["lost"] == jobs["duplicated"] == jobs["enqueued_more_than_once"] == jobs["undelivered"] == 0
        assert deliveries["posted"] == deliveries["expected"] == jobs["commands"]
        assert deliveries["lost"] == deliveries["duplicated"] == 0
        assert ratings["rows"] == ratings["reactions"] and ratings["lost"] == ratings["duplicated"] == 0
        assert run["errors"]["total"] == 0, run["errors"]["first"]
        assert run["first_reply_ms"]["count"] == jobs["commands"] and run["rating_writes_per_second"] > 0
    two = runs[2]["cpu"]["processes"]
    # Both processes did work: each sent (and so delivered) the jobs of its shard's server, half the people each.
    assert len(two) == 2 and all(entry["cpu_seconds"] > 0 and entry["jobs_sent"] > 0 for entry in two)
    assert sum(entry["jobs_sent"] for entry in two) == runs[2]["jobs"]["commands"]


def test_the_stores_are_compared_side_by_side(stores: dict[str, Any]) -> None:
    compared = stores["comparison"]
    assert [(row["store"], row["processes"], row["lost"], row["duplicated"]) for row in compared["rows"]] == [
        ("sqlite", 1, 0, 0), ("postgresql", 1, 0, 0), ("postgresql", 2, 0, 0),
    ]  # fmt: skip
    verdict = compared["two_processes_not_slower"]
    assert set(verdict) == {"commands_per_second", "rating_writes_per_second", "first_reply_p99", "pass"}
    assert stores["pass"] == (all(run["pass"] for run in stores["configurations"]) and verdict["pass"])


def test_with_the_bots_apart_this_process_holds_only_the_fake_and_the_people() -> None:
    """``--bots-apart``: two bot processes (shards 0 and 1 of 2) on PostgreSQL and none in the benchmark's process,
    which then sends no job; nothing lost or doubled, and each process's CPU reported."""
    arguments = ["--store", "postgresql", "--processes", "2", "--bots-apart", "--users", "6", "--seconds", "3"]
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        bench.main([*arguments, "--json", "--database-url", POSTGRES_URL])
    run = json.loads(output.getvalue())
    assert run["bots_apart"] is True and run["errors"]["total"] == 0, run["errors"]["first"]
    jobs, deliveries, ratings = run["jobs"], run["deliveries"], run["ratings"]
    assert jobs["commands"] > 0 and jobs["lost"] == jobs["duplicated"] == jobs["undelivered"] == 0
    assert deliveries["posted"] == jobs["commands"] and ratings["lost"] == ratings["duplicated"] == 0
    benchmark, *bots = run["cpu"]["processes"]
    assert benchmark["process"] == "benchmark: fake and people" and benchmark["jobs_sent"] == 0
    assert [bot["process"] for bot in bots] == ["bot process 0 (shard 0 of 2)", "bot process 1 (shard 1 of 2)"]
    assert all(bot["cpu_seconds"] > 0 and bot["jobs_sent"] > 0 for bot in bots)
    assert sum(bot["jobs_sent"] for bot in bots) == jobs["commands"]


def test_with_the_bot_apart_on_sqlite_it_shares_the_benchmarks_database() -> None:
    """One bot process apart on the SQLite default: it must write the file the benchmark checks."""
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        bench.main(["--bots-apart", "--users", "4", "--seconds", "2", "--json"])
    run = json.loads(output.getvalue())
    jobs, ratings = run["jobs"], run["ratings"]
    assert jobs["commands"] > 0 and jobs["rows"] == jobs["commands"] and jobs["lost"] == 0
    assert ratings["rows"] == ratings["reactions"] > 0
    assert [entry["process"] for entry in run["cpu"]["processes"]] == ["benchmark: fake and people", "bot process 0"]


@pytest.mark.parametrize(
    ("arguments", "words"),
    [
        (["--processes", "2"], "--processes 2 shares a PostgreSQL database"),
        (["--processes", "2", "--store", "postgresql", "--platform", "telegram"], "Telegram serves one bot token"),
        (["--processes", "2", "--store", "both", "--busy"], "--busy puts them in one channel"),
        (["--bots-apart", "--platform", "telegram"], "--bots-apart runs Discord bot processes"),
        (["--store", "postgresql", "--database-url", "postgresql://nobody:secret@127.0.0.1:1/x"], "not reachable"),
    ],
)
def test_options_that_cannot_run_are_refused_in_one_line(
    arguments: list[str], words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert bench.main(arguments) == bench.EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.startswith("error[INVALID_REQUEST]: mmpp bench bots: ") and words in err and err.count("\n") == 1
    assert "secret" not in err
