"""The database: migrations, concurrency, integrity."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bot.storage import MIGRATIONS, Storage


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
    owner = await storage.user_id("test", "owner")
    job, _ = await storage.create_job(
        task_id="t", user_id=owner, platform="test", event_key="e", chat_id="c", style="anime", prompt="",
        mode=None, picture_count=1, seed=1, selfie=b"x", reply_context={},
    )  # fmt: skip
    (picture,) = await storage.store_pictures(job.id, [(1, b"png")])
    # A second connection writes at the same time, as a second bot process would.
    other = await Storage.open(tmp_path / "db.sqlite3")

    async def rate(index: int) -> None:
        target = storage if index % 2 else other
        rater = await target.user_id("test", f"rater-{index}")
        await target.set_rating(picture.id, rater, 1 + index % 5, "reaction")

    await asyncio.gather(*(rate(index) for index in range(200)))
    assert await storage.count("ratings") == 200
    assert await storage.integrity_check() == "ok"
    await other.close()
    await storage.close()
