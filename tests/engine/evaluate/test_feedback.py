"""``mmpp eval --feedback DB``: ratings per style and configuration from a database the test builds.

The database gets the bot's real migrations (applied with plain sqlite3) and
hand-written rows, read back through ``bot.storage.read_feedback_rows`` as
``mmpp eval`` does; the means and 95 % t-intervals below are worked out by
hand from those rows (t quantiles to 5 decimals, as ``mmpp.stats`` computes them).
"""

from __future__ import annotations

import asyncio
import csv
import json
import sqlite3
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from bot.core.ratings import feedback_report
from bot.storage import Storage, read_feedback_rows
from engine.evaluate.feedback import read_feedback
from mmpp.cli import main as mmpp_main
from mmpp.stats import mean_interval

MIGRATIONS = Path(__file__).resolve().parents[3] / "migrations"
NOW = "2026-11-25T12:00:00+00:00"
PNG = b"\x89PNG"


def main(argv: list[str]) -> int:
    """``mmpp eval ARGV`` through the real dispatcher, which hands the engine the bot's read-only reader."""
    return mmpp_main(["eval", *argv])


def meta(style_scale: float, *, mode: str = "fast", tiny: bool = False) -> str:
    return json.dumps(
        {
            "mode": mode,
            "steps": 6,
            "guidance": 1.5,
            "scales": {"style_lora": style_scale, "portrait_lora": 0.4, "ip_adapter": 0.6, "lcm_lora": 1.0},
            "timings": {"total": 1.0},
            "model": "tiny",
            "test_sized_model": tiny,
        }
    )


def database_rows() -> list[tuple[str, list[tuple[object, ...]]]]:
    """The rows of the ``database`` fixture as (SQL, rows) in the portable SQL both engines read: jobs 1-2
    anime (style scales 0.8 and 1.0; job 2 its variant more-likeness), job 3 watercolor, job 4 watercolor
    unrated and queued; scores: job 1 pictures 5, 4 (picture 1 by raters 2 and 3) and 3; job 2: 2; job 3:
    5 and 5."""
    jobs = [
        (1, "anime", "fast", "done", meta(0.8), "base"),
        (2, "anime", None, "done", meta(1.0), "more-likeness"),
        (3, "watercolor", "fast", "done", meta(0.7), "base"),
        (4, "watercolor", None, "queued", None, "base"),
    ]
    ratings = [(1, 2, 5), (1, 3, 4), (2, 2, 3), (3, 2, 2), (4, 2, 5), (5, 3, 5)]
    return [
        (
            "INSERT INTO users (id, platform, platform_user_id, display_name, created_at) VALUES (?, ?, ?, ?, ?)",
            [
                (1, "console", "asker", "Asker", NOW),
                (2, "discord", "r1", "Rater 1", NOW),
                (3, "telegram", "r2", "R2", NOW),
            ],
        ),
        (
            "INSERT INTO jobs (id, task_id, user_id, platform, event_key, chat_id, style, mode, picture_count, state, "
            "result_meta, created_at, variant) VALUES (?, ?, 1, 'console', ?, 'chat', ?, ?, 2, ?, ?, ?, ?)",
            [
                (job, f"task-{job}", f"event-{job}", style, mode, state, result, NOW, variant)
                for job, style, mode, state, result, variant in jobs
            ],
        ),
        (
            "INSERT INTO pictures (id, job_id, position, seed, png) VALUES (?, ?, ?, 1, ?)",
            [(1, 1, 0, PNG), (2, 1, 1, PNG), (3, 2, 0, PNG), (4, 3, 0, PNG), (5, 3, 1, PNG)],
        ),
        (
            "INSERT INTO ratings (picture_id, rater_id, score, source, created_at, updated_at) "
            "VALUES (?, ?, ?, 'reaction', ?, ?)",
            [(picture, rater, score, NOW, NOW) for picture, rater, score in ratings],
        ),
    ]


@pytest.fixture
def database(tmp_path: Path) -> Path:
    """Jobs 1-2 anime (style scales 0.8 and 1.0; job 2 its variant more-likeness), job 3 watercolor, job 4
    watercolor unrated and queued.

    Scores: job 1 pictures 5, 4 (picture 1 by raters 2 and 3) and 3; job 2: 2; job 3: 5 and 5.
    """
    path = tmp_path / "mmpp.sqlite3"
    connection = sqlite3.connect(path)
    for migration in sorted(MIGRATIONS.glob("[0-9][0-9][0-9][0-9]_*.sql")):
        connection.executescript(migration.read_text())
    for sql, rows in database_rows():
        connection.executemany(sql, rows)
    connection.commit()
    connection.close()
    return path


def test_mean_interval_matches_hand_computation() -> None:
    # 5, 4, 3: mean 4, s = 1, t(2) = 4.30265 → 4 ± 4.30265 / √3 = 4 ± 2.48414.
    mean, low, high = mean_interval([5, 4, 3])
    assert mean == 4.0 and low == pytest.approx(1.51586, abs=1e-5) and high == pytest.approx(6.48414, abs=1e-5)
    assert mean_interval([]) == (None, None, None)
    assert mean_interval([3]) == (3.0, None, None)


def test_feedback_per_style_and_configuration(database: Path) -> None:
    before = database.read_bytes()
    feedback = read_feedback(database, read_feedback_rows)
    assert database.read_bytes() == before  # opened read-only
    assert feedback["ratings"] == 6 and feedback["test_sized_model"] is False
    anime, watercolor = feedback["by_style"]
    # anime: 5, 4, 3, 2 → mean 3.5, s = √(5/3) = 1.29099, t(3) = 3.18245 → ± 3.18245 · 1.29099 / 2 = ± 2.05426.
    assert anime["style"] == "anime" and anime["jobs"] == 2 and anime["pictures_rated"] == 3
    assert anime["ratings"] == 4 and anime["mean"] == 3.5
    assert anime["ci95_low"] == pytest.approx(1.44574, abs=1e-4) and anime["ci95_high"] == pytest.approx(
        5.55426, abs=1e-4
    )
    assert anime["positive_share"] == 0.5
    # watercolor: 5, 5 → mean 5, s = 0 → [5, 5]; job 4 counts as a job but has no ratings.
    assert watercolor["jobs"] == 2 and watercolor["ratings"] == 2
    assert (watercolor["mean"], watercolor["ci95_low"], watercolor["ci95_high"]) == (5.0, 5.0, 5.0)
    assert watercolor["positive_share"] == 1.0

    configs = {(c["style"], c["style_scale"]): c for c in feedback["by_configuration"]}
    assert set(configs) == {("anime", 0.8), ("anime", 1.0), ("watercolor", 0.7)}
    first = configs[("anime", 0.8)]
    assert first["mode"] == "fast" and first["portrait_scale"] == 0.4 and first["ip_adapter_scale"] == 0.6
    assert first["ratings"] == 3 and first["mean"] == 4.0
    assert first["ci95_low"] == pytest.approx(1.51586, abs=1e-4) and first["ci95_high"] == pytest.approx(
        6.48414, abs=1e-4
    )
    assert first["positive_share"] == pytest.approx(0.6667, abs=1e-4)
    lone = configs[("anime", 1.0)]
    assert lone["mode"] == "fast"  # from result_meta, although the job row left the mode to the style
    assert (lone["ratings"], lone["mean"], lone["ci95_low"], lone["positive_share"]) == (1, 2.0, None, 0.0)
    assert (first["variant"], lone["variant"]) == ("base", "more-likeness")
    variants = {(row["style"], row["variant"]): (row["ratings"], row["mean"]) for row in feedback["by_variant"]}
    assert variants == {
        ("anime", "base"): (3, 4.0),
        ("anime", "more-likeness"): (1, 2.0),
        ("watercolor", "base"): (2, 5.0),
    }


def test_a_database_from_before_variants_reads_as_all_base(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    connection = sqlite3.connect(path)
    for migration in sorted(MIGRATIONS.glob("000[1-4]_*.sql")):
        connection.executescript(migration.read_text())
    connection.execute(
        "INSERT INTO users (id, platform, platform_user_id, created_at) VALUES (1, 'console', 'a', ?)", (NOW,)
    )
    connection.execute(
        "INSERT INTO jobs (id, task_id, user_id, platform, event_key, chat_id, style, picture_count, state, "
        "created_at) VALUES (1, 't', 1, 'console', 'e', 'c', 'anime', 1, 'done', ?)",
        (NOW,),
    )
    connection.execute("INSERT INTO pictures (id, job_id, position, seed, png) VALUES (1, 1, 0, 1, x'00')")
    connection.execute(
        "INSERT INTO ratings (picture_id, rater_id, score, source, created_at, updated_at) VALUES (1, 1, 4, 'r', ?, ?)",
        (NOW, NOW),
    )
    connection.commit()
    connection.close()
    feedback = read_feedback(path, read_feedback_rows)
    assert [(row["style"], row["variant"], row["ratings"]) for row in feedback["by_variant"]] == [("anime", "base", 1)]


def test_feedback_command_prints_a_table_and_writes_the_report(
    database: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report"
    assert main(["--feedback", str(database), "--report", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "per style" in printed and "per configuration" in printed
    anime_line = next(line for line in printed.splitlines() if line.startswith("anime ") and " 2 " in line)
    assert "3.50" in anime_line and "1.45" in anime_line and "5.55" in anime_line and "0.50" in anime_line
    saved = json.loads((out / "feedback.json").read_text())
    assert saved["by_style"][0]["mean"] == 3.5
    with (out / "feedback.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["group"] for row in rows] == ["style"] * 2 + ["variant"] * 3 + ["configuration"] * 3
    assert "per variant" in printed and "more-likeness" in printed
    page = (out / "index.html").read_text()
    assert 'id="feedback"' in page and "anime" in page and "3.5" in page
    assert "test-sized model" not in page


def test_feedback_only_prints_without_report(database: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--feedback", str(database)]) == 0
    assert "ratings in" in capsys.readouterr().out


def test_feedback_refuses_what_is_not_the_bots_database(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--feedback", str(tmp_path / "missing.sqlite3")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error[INVALID_REQUEST]: the feedback database") and err.count("\n") == 1
    other = tmp_path / "other.sqlite3"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.commit()
    assert main(["--feedback", str(other)]) == 2
    assert "not the bot's database" in capsys.readouterr().err
    text = tmp_path / "text.sqlite3"
    text.write_text("hello, not a database at all" * 10)
    assert main(["--feedback", str(text)]) == 2
    assert "not an SQLite database" in capsys.readouterr().err


def test_ratings_of_tiny_model_pictures_are_labelled(database: Path, tmp_path: Path) -> None:
    connection = sqlite3.connect(database)
    connection.execute("UPDATE jobs SET result_meta = ? WHERE id = 3", (meta(0.7, tiny=True),))
    connection.commit()
    connection.close()
    assert main(["--feedback", str(database), "--report", str(tmp_path / "out")]) == 0
    assert (
        "test-sized model: pictures are noise, figures are meaningless" in (tmp_path / "out" / "index.html").read_text()
    )


def test_mmpp_feedback_and_mmpp_eval_report_the_same_figures(database: Path) -> None:
    """One implementation (mmpp.feedback): the bot's per-style figures, rounded as the engine prints them,
    are the engine's."""

    async def bot_report() -> list[dict]:
        storage = await Storage.open_read_only(database)
        try:
            return await feedback_report(storage)
        finally:
            await storage.close()

    bot = {row["style"]: row for row in asyncio.run(bot_report())}
    engine = {row["style"]: row for row in read_feedback(database, read_feedback_rows)["by_style"]}
    assert set(bot) == set(engine) == {"anime", "watercolor"}
    for style, row in bot.items():
        for key in ("jobs", "ratings", "mean", "ci95_low", "ci95_high", "positive_share"):
            assert engine[style][key] == (None if row[key] is None else round(row[key], 4)), (style, key)
    assert bot["anime"]["pictures"] == 3 and bot["watercolor"]["pictures"] == 2  # every stored picture


async def fill(location: str) -> None:
    """The ``database`` fixture's rows in a bot database made as the bot makes it (``Storage.open``: the
    numbered migrations, on either engine)."""
    storage = await Storage.open(location)
    try:
        async with storage.write() as transaction:
            for sql, rows in database_rows():
                for row in rows:
                    await transaction.execute(sql, row)
    finally:
        await storage.close()


def with_password(url: str, password: str) -> str:
    """The URL with a password the trust-auth test server ignores, to see that no report prints it."""
    parts = urlsplit(url)
    user = parts.username or "postgres"
    return urlunsplit(parts._replace(netloc=f"{user}:{password}@{parts.hostname}:{parts.port or 5432}"))


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
async def test_feedback_reads_sqlite_or_postgresql_through_the_bots_storage(
    engine: str,
    postgres_url: str,
    database: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``mmpp eval --feedback URL`` and ``--feedback`` alone (the bot's own MMPP_DATABASE_URL, else
    MMPP_DATABASE) read the same figures as the plain SQLite file, and the report never shows a password."""
    location = str(tmp_path / "bot.sqlite3") if engine == "sqlite" else with_password(postgres_url, "s3cret-pw")
    await fill(location)
    expected = await asyncio.to_thread(read_feedback, database, read_feedback_rows)
    figures = ("ratings", "by_style", "by_configuration", "by_variant")

    given = tmp_path / "given"
    assert await asyncio.to_thread(main, ["--feedback", location, "--report", str(given)]) == 0
    saved = json.loads((given / "feedback.json").read_text())
    assert {key: saved[key] for key in figures} == {key: expected[key] for key in figures}
    assert saved["by_style"][0]["mean"] == 3.5 and saved["ratings"] == 6

    if engine == "sqlite":
        monkeypatch.setenv("MMPP_DATABASE", location)
        monkeypatch.setenv("MMPP_DATABASE_URL", "")
    else:
        monkeypatch.setenv("MMPP_DATABASE", str(tmp_path / "not-this.sqlite3"))
        monkeypatch.setenv("MMPP_DATABASE_URL", location)
    configured = tmp_path / "configured"
    assert await asyncio.to_thread(main, ["--feedback", "--report", str(configured)]) == 0
    saved = json.loads((configured / "feedback.json").read_text())
    assert {key: saved[key] for key in figures} == {key: expected[key] for key in figures}
    assert not (tmp_path / "not-this.sqlite3").exists()

    printed = capsys.readouterr()
    everything = (
        printed.out + printed.err + "".join(path.read_text() for path in [*given.iterdir(), *configured.iterdir()])
    )
    assert "s3cret-pw" not in everything
    if engine == "postgresql":
        assert saved["database"].startswith("postgresql://") and "search_path=" in saved["database"]


async def test_feedback_refuses_a_postgresql_database_that_is_not_the_bots(
    postgres_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await asyncio.to_thread(main, ["--feedback", postgres_url]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error[INVALID_REQUEST]: ") and "is not the bot's database" in err and err.count("\n") == 1
