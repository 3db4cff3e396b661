"""The database: migrations, concurrency, integrity, read-only reading, and the one place with SQL."""

from __future__ import annotations

import asyncio
import re
import sqlite3
from pathlib import Path

import pytest

from bot.storage import MIGRATIONS, Storage, read_feedback_rows
from mmpp.errors import ErrorCode, MmppError

REPO = Path(__file__).resolve().parents[2]


async def test_migrations_apply_once_and_record_the_version(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    storage = await Storage.open(path)
    newest = max(int(file.name[:4]) for file in MIGRATIONS.glob("*.sql"))
    assert await storage.schema_version() == newest
    assert await storage.migrate() == []  # nothing left to apply
    await storage.close()
    reopened = await Storage.open(path)
    assert await reopened.schema_version() == newest
    await reopened.close()


def test_every_migration_starts_with_a_reason_line() -> None:
    for path in sorted(MIGRATIONS.glob("*.sql")):
        assert path.read_text(encoding="utf-8").startswith("-- reason: "), path.name


async def test_a_failing_migration_leaves_nothing_behind(tmp_path: Path) -> None:
    folder = tmp_path / "migrations"
    folder.mkdir()
    (folder / "0001_ok.sql").write_text("-- reason: test\nCREATE TABLE first (x INTEGER);\n")
    (folder / "0002_broken.sql").write_text("-- reason: test\nCREATE TABLE second (x INTEGER);\nNOT SQL AT ALL;\n")
    with pytest.raises(RuntimeError, match=r"0002_broken\.sql"):
        await Storage.open(tmp_path / "db.sqlite3", migrations=folder)
    storage = Storage.__new__(Storage)
    import aiosqlite

    async with aiosqlite.connect(tmp_path / "db.sqlite3") as connection:
        tables = {row[0] for row in await connection.execute_fetchall("SELECT name FROM sqlite_master")}
        versions = [row[0] for row in await connection.execute_fetchall("SELECT version FROM schema_migrations")]
    assert "first" in tables and "second" not in tables and versions == [1]
    del storage


async def test_two_hundred_concurrent_ratings_are_all_stored(tmp_path: Path) -> None:
    storage = await Storage.open(tmp_path / "db.sqlite3")
    owner = await storage.ensure_user("test", "owner")
    job, _ = await storage.create_job(
        task_id="t", user_id=owner, platform="test", event_key="e", chat_id="c", style="anime", prompt="",
        mode=None, picture_count=1, seed=1, selfie=b"x", reply_context={},
    )  # fmt: skip
    (picture,) = await storage.store_pictures(job.id, [(1, b"png")])
    # A second connection writes at the same time, as a second bot process would.
    other = await Storage.open(tmp_path / "db.sqlite3")

    async def rate(index: int) -> None:
        target = storage if index % 2 else other
        rater = await target.ensure_user("test", f"rater-{index}")
        await target.set_rating(picture.id, rater, 1 + index % 5, "reaction")

    await asyncio.gather(*(rate(index) for index in range(200)))
    assert await storage.count("ratings") == 200
    assert await storage.integrity_check() == "ok"
    await other.close()
    await storage.close()


async def test_ensure_user_creates_once_and_find_user_never_creates(tmp_path: Path) -> None:
    storage = await Storage.open(tmp_path / "db.sqlite3")
    assert await storage.find_user("test", "alice") is None and await storage.count("users") == 0
    first = await storage.ensure_user("test", "alice", "Alice")
    assert await storage.ensure_user("test", "alice") == first and await storage.find_user("test", "alice") == first
    assert await storage.count("users") == 1
    await storage.close()


async def test_the_read_only_opener_never_writes_and_refuses_what_is_not_the_bots(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    storage = await Storage.open(path)
    owner = await storage.ensure_user("test", "owner")
    job, _ = await storage.create_job(
        task_id="t", user_id=owner, platform="test", event_key="e", chat_id="c", style="anime", prompt="",
        mode=None, picture_count=1, seed=1, selfie=b"x", reply_context={},
    )  # fmt: skip
    (picture,) = await storage.store_pictures(job.id, [(1, b"png")])
    await storage.set_rating(picture.id, owner, 5, "button")
    await storage.close()

    reader = await Storage.open_read_only(path)
    rows = await reader.feedback_rows()
    assert rows.jobs_per_style == {"anime": 1} and rows.pictures_per_style == {"anime": 1}
    assert [(rating.style, rating.score) for rating in rows.ratings] == [("anime", 5)]
    with pytest.raises(Exception, match="readonly"):
        await reader.ensure_user("test", "intruder")
    await reader.close()

    (tmp_path / "notes.txt").write_text("not a database " * 50)
    sqlite3.connect(tmp_path / "other.sqlite3").execute("CREATE TABLE t (x)").connection.commit()
    for name, words in (
        ("missing.sqlite3", "does not exist"),
        ("notes.txt", "is not an SQLite database"),
        ("other.sqlite3", "is not the bot's database: it has no jobs, pictures, ratings table"),
    ):
        with pytest.raises(MmppError) as refused:
            await Storage.open_read_only(tmp_path / name)
        assert refused.value.code is ErrorCode.INVALID_REQUEST and words in refused.value.message


def test_read_feedback_rows_is_for_callers_without_an_event_loop(tmp_path: Path) -> None:
    with pytest.raises(MmppError) as missing:
        read_feedback_rows(tmp_path / "missing.sqlite3")
    assert missing.value.message == f"the feedback database {tmp_path / 'missing.sqlite3'} does not exist"


def test_sql_lives_in_bot_storage_alone() -> None:
    """Every query of the bot's database is in bot/storage.py: no other module of bot/ (nor the engine's
    feedback report, which reads the same database) opens SQLite or holds SQL."""
    sql = re.compile(
        r"\b(SELECT|INSERT INTO|DELETE FROM|CREATE TABLE|PRAGMA)\b|\bUPDATE \w+ SET\b|import (sqlite3|aiosqlite)"
    )
    files = [*(REPO / "bot").rglob("*.py"), REPO / "engine" / "evaluate" / "feedback.py", REPO / "mmpp" / "feedback.py"]
    offenders = [
        str(path.relative_to(REPO)) for path in files
        if path.name != "storage.py" and sql.search(path.read_text(encoding="utf-8"))
    ]  # fmt: skip
    assert sql.search((REPO / "bot" / "storage.py").read_text(encoding="utf-8"))  # the check sees SQL
    assert offenders == []
