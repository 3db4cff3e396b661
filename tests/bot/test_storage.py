"""The database: migrations, concurrency, integrity, read-only reading, and the one place with SQL.

Each test that touches the database runs on both engines (``location``): a fresh SQLite file, and a fresh
schema of the test PostgreSQL.  "Two processes" are two ``Storage`` instances: two SQLite connections to one
file, or two PostgreSQL connection pools."""

from __future__ import annotations

import asyncio
import re
import sqlite3
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from bot.database import migration_files, numbered_placeholders, postgres_migration
from bot.storage import MIGRATIONS, Job, JobLimits, QuotaRefused, Storage, StoredPicture, read_feedback_rows
from mmpp.errors import ErrorCode, MmppError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["sqlite", "postgresql"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> Path | str:
    """Where a fresh bot database is, on each engine in turn."""
    if request.param == "sqlite":
        return tmp_path / "db.sqlite3"
    return str(request.getfixturevalue("postgres_url"))


async def test_migrations_apply_once_and_record_the_version(location: Path | str) -> None:
    path = location
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


async def test_a_failing_migration_leaves_nothing_behind(location: Path | str, tmp_path: Path) -> None:
    folder = tmp_path / "migrations"
    folder.mkdir()
    (folder / "0001_ok.sql").write_text("-- reason: test\nCREATE TABLE first (x INTEGER);\n")
    (folder / "0002_broken.sql").write_text("-- reason: test\nCREATE TABLE second (x INTEGER);\nNOT SQL AT ALL;\n")
    with pytest.raises(RuntimeError, match=r"0002_broken\.sql"):
        await Storage.open(location, migrations=folder)
    (folder / "0002_broken.sql").unlink()
    storage = await Storage.open(location, migrations=folder)  # reopens: the first is there, recorded once
    assert await storage.schema_version() == 1 and await storage.migrate(folder) == []
    async with storage.write() as db:
        await db.execute("INSERT INTO first (x) VALUES (?)", (1,))
        with pytest.raises(Exception, match="second"):
            await db.fetch_all("SELECT * FROM second")
    await storage.close()


async def test_postgresql_gets_the_same_migrations_with_its_own_types(postgres_url: str) -> None:
    """SQLite's row ids, 64-bit integers and blobs, rewritten: ids numbered by the engine, a seed or a platform
    id past 2**31 stored, a picture's bytes read back as bytes; and the text columns the same Python types."""
    storage = await Storage.open(postgres_url)
    owner = await storage.ensure_user("test", "owner")
    job, _ = await storage.create_job(
        task_id="t", user_id=owner, platform="test", event_key="e", chat_id="c", style="anime", prompt="",
        mode=None, picture_count=1, seed=2**40, selfie=b"\x00\xff", reply_context={"a": 1},
    )  # fmt: skip
    (picture,) = await storage.store_pictures(job.id, [(2**40 + 1, b"\x89PNG\x00")])
    assert (job.id, picture.id, job.seed, picture.seed) == (1, 1, 2**40, 2**40 + 1)
    assert picture.png == b"\x89PNG\x00" and await storage.selfie(job.id) == b"\x00\xff"
    assert isinstance(job.created_at, str) and job.reply_context == {"a": 1}
    assert storage.dialect == "postgresql" and await storage.integrity_check() == "ok"
    await storage.close()


async def test_two_hundred_concurrent_ratings_are_all_stored(location: Path | str) -> None:
    storage = await Storage.open(location)
    picture = await one_picture(storage)
    # A second connection writes at the same time, as a second bot process would.
    other = await Storage.open(location)

    async def rate(index: int) -> None:
        target = storage if index % 2 else other
        rater = await target.ensure_user("test", f"rater-{index}")
        await target.set_rating(picture.id, rater, 1 + index % 5, "reaction")

    await asyncio.gather(*(rate(index) for index in range(200)))
    assert await storage.count("ratings") == 200
    assert await storage.integrity_check() == "ok"
    await other.close()
    await storage.close()


async def test_ensure_user_creates_once_and_find_user_never_creates(location: Path | str) -> None:
    storage = await Storage.open(location)
    assert await storage.find_user("test", "alice") is None and await storage.count("users") == 0
    first = await storage.ensure_user("test", "alice", "Alice")
    assert await storage.ensure_user("test", "alice") == first and await storage.find_user("test", "alice") == first
    assert await storage.count("users") == 1
    await storage.close()


async def test_the_read_only_opener_never_writes_and_refuses_what_is_not_the_bots(
    location: Path | str, tmp_path: Path
) -> None:
    path = location
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
    with pytest.raises(Exception, match=r"readonly|read-only"):
        await reader.ensure_user("test", "intruder")
    await reader.close()
    if isinstance(location, str):  # PostgreSQL: an empty schema is not the bot's database
        empty = location.rsplit("=", 1)[0] + "=public_nothing_here"
        with pytest.raises(MmppError) as refused:
            await Storage.open_read_only(empty)
        assert "is not the bot's database: it has no jobs, pictures, ratings table" in refused.value.message
        return

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
    feedback report, which reads the same database) opens a database or holds SQL; the storage layer is
    bot/storage.py (the queries) and bot/database.py (the two engines' drivers)."""
    sql = re.compile(
        r"\b(SELECT|INSERT INTO|DELETE FROM|CREATE TABLE|PRAGMA)\b|\bUPDATE \w+ SET\b"
        r"|import (sqlite3|aiosqlite|asyncpg)"
    )
    files = [*(REPO / "bot").rglob("*.py"), REPO / "engine" / "evaluate" / "feedback.py", REPO / "mmpp" / "feedback.py"]
    offenders = [
        str(path.relative_to(REPO)) for path in files
        if path.name not in {"storage.py", "database.py"} and sql.search(path.read_text(encoding="utf-8"))
    ]  # fmt: skip
    assert sql.search((REPO / "bot" / "storage.py").read_text(encoding="utf-8"))  # the check sees SQL
    assert offenders == []


# ---------------------------------------------------------------------------------------------------- two processes


async def two_storages(location: Path | str) -> tuple[Storage, Storage]:
    """Two bot processes on one database: two SQLite connections to the file, or two PostgreSQL pools."""
    first = await Storage.open(location)
    return first, await Storage.open(location)


async def new_job(storage: Storage, user_id: int, event_key: str, **options: Any) -> tuple[Job, bool]:
    """A job as the core writes one: a fresh task id in each process, the platform's event key shared."""
    return await storage.create_job(
        task_id=str(uuid.uuid4()), user_id=user_id, platform="test", event_key=event_key, chat_id="chat",
        style="anime", prompt="", mode=None, picture_count=options.pop("picture_count", 1), seed=1, selfie=b"x",
        reply_context={}, queue="mmpp", **options,
    )  # fmt: skip


async def one_picture(storage: Storage) -> StoredPicture:
    """A delivered job's one picture, for the tests of what happens to its ratings."""
    owner = await storage.ensure_user("test", "owner")
    job, _ = await new_job(storage, owner, "e")
    (picture,) = await storage.store_pictures(job.id, [(1, b"png")])
    return picture


async def test_a_job_is_claimed_by_exactly_one_of_two_processes_asking_at_once(location: Path | str) -> None:
    first, second = await two_storages(location)
    owner = await first.ensure_user("test", "owner")
    jobs = [(await new_job(first, owner, f"event-{index}"))[0] for index in range(30)]
    now = datetime.now(UTC)
    stale_before = now - timedelta(minutes=30)
    answers = await asyncio.gather(
        *(
            storage.claim_delivery(job.id, name, now, stale_before)
            for job in jobs
            for storage, name in ((first, "process-a"), (second, "process-b"))
        )
    )
    for index, job in enumerate(jobs):
        won = answers[2 * index : 2 * index + 2]
        assert won.count(True) == 1, (job.id, won)
        assert await first.delivery_claimant(job.id) == ("process-a" if won[0] else "process-b")
    await first.close()
    await second.close()


async def test_one_event_handed_to_two_processes_makes_one_job(location: Path | str) -> None:
    first, second = await two_storages(location)
    owner = await first.ensure_user("test", "owner")
    results = await asyncio.gather(
        *(new_job(storage, owner, f"event-{index}") for index in range(20) for storage in (first, second)),
        return_exceptions=True,
    )
    assert not [result for result in results if isinstance(result, BaseException)]
    created = [result for result in results if not isinstance(result, BaseException) and result[1]]
    assert len(created) == 20 and await first.count("jobs") == 20 and await first.count("selfies") == 20
    await first.close()
    await second.close()


async def test_ratings_from_two_processes_at_once_are_never_lost_or_doubled(location: Path | str) -> None:
    """200 people rate one picture, half through each process, and 50 of them change their minds at the same
    moment through the other process: one row per person, holding one of the two scores they gave."""
    first, second = await two_storages(location)
    owner = await first.ensure_user("test", "owner")
    job, _ = await new_job(first, owner, "event")
    (picture,) = await first.store_pictures(job.id, [(1, b"png")])
    raters = [await first.ensure_user("test", f"rater-{index}") for index in range(200)]

    async def rate(index: int) -> None:
        storage, other = (first, second) if index % 2 else (second, first)
        if index < 50:
            await asyncio.gather(
                storage.set_rating(picture.id, raters[index], 1, "reaction"),
                other.set_rating(picture.id, raters[index], 5, "button"),
            )
        else:
            await storage.set_rating(picture.id, raters[index], 1 + index % 5, "reaction")

    await asyncio.gather(*(rate(index) for index in range(200)))
    assert await first.count("ratings") == 200
    scores = [await second.rating(picture.id, rater) for rater in raters]
    assert all(score in (1, 5) for score in scores[:50])
    assert scores[50:] == [1 + index % 5 for index in range(50, 200)]
    await first.close()
    await second.close()


async def test_quotas_hold_for_orders_through_two_processes_at_once(location: Path | str) -> None:
    first, second = await two_storages(location)
    alice = await first.ensure_user("test", "alice")
    bob = await first.ensure_user("test", "bob")
    day_start = datetime.now(UTC) - timedelta(hours=1)
    one_pending = JobLimits(max_pending=1, daily_pictures=100, chat_daily_pictures=1000, day_start=day_start)
    five_a_day = JobLimits(max_pending=100, daily_pictures=5, chat_daily_pictures=1000, day_start=day_start)

    async def order(storage: Storage, user: int, event: str, limits: JobLimits) -> bool:
        try:
            return (await new_job(storage, user, event, limits=limits))[1]
        except QuotaRefused:
            return False

    pending = await asyncio.gather(
        *(order((first, second)[index % 2], alice, f"a-{index}", one_pending) for index in range(10))
    )
    daily = await asyncio.gather(
        *(order((first, second)[index % 2], bob, f"b-{index}", five_a_day) for index in range(12))
    )
    assert pending.count(True) == 1 and await first.pending_jobs(alice) == 1
    assert daily.count(True) == 5 and await first.pictures_requested_since(bob, day_start) == 5
    with pytest.raises(QuotaRefused) as refused:
        await new_job(second, bob, "b-late", limits=five_a_day)
    assert (refused.value.limit, refused.value.used) == ("daily", 5)
    await first.close()
    await second.close()


async def test_two_processes_feeding_the_broker_at_once_hand_out_each_place_once(location: Path | str) -> None:
    first, second = await two_storages(location)
    owner = await first.ensure_user("test", "owner")
    for index in range(12):
        await new_job(first, owner, f"event-{index}")
    rounds = await asyncio.gather(
        *(storage.admit_waiting(["test"], 4, 2**30, lambda size: size) for storage in (first, second) * 3)
    )
    admitted = [job_id for ids in rounds for job_id in ids]
    assert len(admitted) == 4 and len(set(admitted)) == 4
    assert await first.broker_load() == {"mmpp": (4, 8)}
    await first.close()
    await second.close()


async def test_two_ratings_promoting_at_once_promote_once(location: Path | str) -> None:
    first, second = await two_storages(location)
    promotions = await asyncio.gather(
        *(
            storage.promote_variant("anime", variant, "ratings", {"n": index}, only_if_none=True)
            for index, (storage, variant) in enumerate([(first, "a"), (second, "b")] * 5)
        )
    )
    assert len([promotion for promotion in promotions if promotion is not None]) == 1
    assert len(await first.promotions("anime")) == 1
    await first.close()
    await second.close()


async def test_two_processes_starting_at_once_apply_each_migration_once(location: Path | str) -> None:
    """Twenty times over (on SQLite the race is in switching a new file to WAL and in reading which migrations
    are applied before taking the write lock; one start in twelve met it before either was handled)."""
    for attempt in range(20 if isinstance(location, Path) else 3):
        where = location.with_name(f"db-{attempt}.sqlite3") if isinstance(location, Path) else location
        first, second = await asyncio.gather(Storage.open(where), Storage.open(where))
        newest = max(int(file.name[:4]) for file in MIGRATIONS.glob("*.sql"))
        assert await first.schema_version() == await second.schema_version() == newest
        await first.close()
        await second.close()


def test_postgresql_reads_the_sqlite_migrations_through_a_small_rewrite(tmp_path: Path) -> None:
    plain = tmp_path / "0001_plain.sql"
    plain.write_text("CREATE TABLE t (id INTEGER PRIMARY KEY, n INTEGER NOT NULL, data BLOB, note TEXT);\n")
    assert postgres_migration(plain) == (
        "CREATE TABLE t (id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, n BIGINT NOT NULL, data BYTEA, "
        "note TEXT);\n"
    )
    twin = tmp_path / "0001_plain.postgres.sql"
    twin.write_text("CREATE TABLE t (id BIGSERIAL PRIMARY KEY);\n")
    assert postgres_migration(plain) == twin.read_text() and migration_files(tmp_path) == [(1, plain)]


async def test_a_migrations_postgresql_twin_is_what_postgresql_applies(location: Path | str, tmp_path: Path) -> None:
    """A migration PostgreSQL cannot read as SQLite writes it ships its own text; SQLite never sees that."""
    folder = tmp_path / "migrations"
    folder.mkdir()
    (folder / "0001_dialects.sql").write_text("-- reason: test\nCREATE TABLE spoken (dialect TEXT DEFAULT 'sqlite');\n")
    (folder / "0001_dialects.postgres.sql").write_text(
        "-- reason: test\nCREATE TABLE spoken (dialect TEXT DEFAULT 'postgresql');\n"
    )
    storage = await Storage.open(location, migrations=folder)
    async with storage.write() as db:
        await db.execute("INSERT INTO spoken DEFAULT VALUES")
        rows = await db.fetch_all("SELECT dialect FROM spoken")
    assert [row[0] for row in rows] == [storage.dialect] and await storage.schema_version() == 1
    await storage.close()


def test_placeholders_are_numbered_outside_quoted_text() -> None:
    assert numbered_placeholders("SELECT ? FROM t WHERE a = '?' AND b IN (?, ?)") == (
        "SELECT $1 FROM t WHERE a = '?' AND b IN ($2, $3)"
    )


TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00")


async def every_answer(storage: Storage) -> list[Any]:
    """Each query of the storage once, on a small story, with what it answered (timestamps masked)."""
    answers: list[Any] = []
    now = datetime.now(UTC)
    alice = await storage.ensure_user("telegram", "1", "Alice")
    bob = await storage.ensure_user("telegram", "2")
    answers += [alice, bob, await storage.find_user("telegram", "2"), await storage.find_user("telegram", "3")]
    job, created = await storage.create_job(
        task_id="task-1", user_id=alice, platform="telegram", event_key="update-1", chat_id="chat", style="anime",
        prompt="a hat", mode="fast", picture_count=2, seed=2**33, selfie=b"\x00selfie", reply_context={"chat": 7},
        queue="mmpp.fast", variant="base",
    )  # fmt: skip
    answers += [job, created, await storage.job_by_event("telegram", "update-1")]
    answers += [await storage.admit_waiting(["telegram"], 4, 2**20, lambda size: size), await storage.broker_load()]
    await storage.update_job(job.id, state="running", progress_done=1, progress_total=4, enqueued_at="x")
    answers += [await storage.unfinished_jobs(), await storage.admitted_unsent(["telegram"])]
    answers += [await storage.jobs_without_queue(["telegram"]), await storage.pending_jobs(alice)]
    answers += [await storage.pictures_requested_since(alice, now - timedelta(hours=1))]
    answers += [await storage.pictures_requested_in_chat_since("telegram", "chat", now - timedelta(hours=1))]
    pictures = await storage.store_pictures(job.id, [(5, b"png-1"), (6, b"png-2")])
    await storage.set_picture_message(pictures[0].id, "message-1")
    answers += [pictures, await storage.picture_by_message("telegram", "message-1"), await storage.picture(99)]
    for picture, rater, score in ((pictures[0], bob, 4), (pictures[1], bob, 2), (pictures[1], alice, 5)):
        await storage.set_rating(picture.id, rater, score, "button")
        await asyncio.sleep(0.005)  # ratings are ordered by when they were given (to the millisecond)
    answers += [await storage.rating(pictures[0].id, bob), await storage.rating(pictures[0].id, alice)]
    answers += [await storage.ratings_export(), await storage.feedback_rows()]
    answers += [await storage.variant_observations("anime"), await storage.variant_cells("anime")]
    await storage.update_job(job.id, state="done", finished_at=storage_time(now), result_meta={"steps": 4})
    answers += [await storage.claim_delivery(job.id, "a", now, now - timedelta(minutes=5))]
    answers += [await storage.delivery_claimant(job.id), await storage.undelivered_jobs(["telegram"])]
    answers += [await storage.take_privacy_notice(alice), await storage.take_privacy_notice(alice)]
    answers += [await storage.chat_notice_given("telegram", "chat", "reactions")]
    answers += [await storage.take_chat_notice("telegram", "chat", "reactions")]
    answers += [await storage.take_chat_notice("telegram", "chat", "reactions")]
    answers += [await storage.job_counts_by_state(), await storage.recent_jobs(alice)]
    answers += [await storage.selfie(job.id)]
    await storage.release_selfie(job.id, timedelta(hours=1), now=now)
    answers += [await storage.selfie(job.id, now), await storage.purge_expired_selfies(now + timedelta(hours=2))]
    answers += [
        await storage.save_person_settings(alice, style="anime", mode="fast", picture_count=3, prompt_suffix="")
    ]
    answers += [await storage.person_settings(alice), await storage.person_settings_of("telegram", "1")]
    answers += [await storage.clear_person_settings(alice), await storage.clear_person_settings(alice)]
    await storage.set_variant_paused("anime", "bold", True)
    await storage.set_variant_ineligible("anime", "soft", "identity 0.2 < 0.3")
    answers += [await storage.variant_controls(), await storage.variant_controls("other")]
    answers += [await storage.promote_variant("anime", "soft", "operator", {"by": "test"})]
    answers += [await storage.promote_variant("anime", "bold", "ratings", {}, only_if_none=True)]
    answers += [await storage.current_promotion("anime"), await storage.roll_back_promotion("anime")]
    answers += [await storage.promotions(), await storage.promotions("anime")]
    answers += [await storage.forget_user(alice), await storage.count("jobs"), await storage.count("ratings")]
    answers += [await storage.count("users", "platform_user_id = ?", ("2",)), await storage.integrity_check()]
    answers += [await storage.book_identify_slot(3, 1_800_000_000.5, 5.0)]
    answers += [await storage.book_identify_slot(3, 1_800_000_001.0, 5.0)]
    return answers


def storage_time(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds")


async def test_both_engines_answer_every_query_alike_with_the_same_types(tmp_path: Path, postgres_url: str) -> None:
    """The same story on SQLite and PostgreSQL: every answer equal, down to its Python types (``repr`` tells
    ``3`` from ``Decimal('3')`` and ``b''`` from a ``memoryview``); only the moments differ."""
    answers = {}
    for location in (tmp_path / "db.sqlite3", postgres_url):
        storage = await Storage.open(location)
        answers[storage.dialect] = TIMESTAMP.sub("<time>", repr(await every_answer(storage)))
        await storage.close()
    assert answers["sqlite"] == answers["postgresql"]
    assert "Decimal" not in answers["postgresql"] and "<time>" in answers["sqlite"]


async def test_a_removed_reaction_withdraws_the_rating_only_while_it_is_the_score_in_force(
    location: Path | str,
) -> None:
    """One statement decides: a person who rated 1, then 3, and whose removal of the 1 is handled last keeps 3."""
    storage = await Storage.open(location)
    picture = await one_picture(storage)
    rater = await storage.ensure_user("test", "rater")
    await storage.set_rating(picture.id, rater, 3, "reaction")
    assert await storage.withdraw_rating(picture.id, rater, 1) is False
    assert await storage.rating(picture.id, rater) == 3
    assert await storage.withdraw_rating(picture.id, rater, 3) is True
    assert await storage.rating(picture.id, rater) is None
    assert await storage.withdraw_rating(picture.id, rater, 3) is False
    await storage.close()


async def test_writes_cancelled_at_any_moment_leave_the_database_usable_and_closable(location: Path | str) -> None:
    """A bot stopping cancels its tasks wherever they are, also between BEGIN and the first statement: every
    connection goes back (PostgreSQL: the pool would otherwise run dry and never close), nothing half-written
    stays open, and the next writes go through."""
    storage = await Storage.open(location)

    async def keep_writing(index: int) -> None:
        while True:
            await storage.ensure_user("test", f"person-{index}")

    for round_number in range(30):
        tasks = [asyncio.create_task(keep_writing(index)) for index in range(12)]
        await asyncio.sleep(0.001 * (round_number % 10))
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    ids = await asyncio.wait_for(asyncio.gather(*(storage.ensure_user("test", f"after-{n}") for n in range(30))), 20)
    assert len(set(ids)) == 30 and await storage.count("users", "platform_user_id LIKE ?", ("after-%",)) == 30
    await asyncio.wait_for(storage.close(), 20)


async def test_identify_slots_booked_by_two_processes_at_once_are_an_interval_apart_per_bucket(
    location: Path | str,
) -> None:
    """Discord's one IDENTIFY per 5 s per bucket across processes: ten bookings racing from two ``Storage``
    instances get ten distinct slots 5 s apart; another bucket keeps its own; a bucket idle past its last slot
    starts again at the caller's now.  Seconds since 1970 with a fraction: the column keeps them exactly."""
    first, second = await Storage.open(location), await Storage.open(location)
    now = 1_800_000_000.25
    try:
        slots = await asyncio.gather(
            *(storage.book_identify_slot(0, now, 5.0) for storage in (first, second) for _ in range(5))
        )
        assert sorted(slots) == pytest.approx([now + 5.0 * index for index in range(10)], abs=1e-6)
        assert await second.book_identify_slot(1, now + 1, 5.0) == pytest.approx(now + 1, abs=1e-6)
        assert await first.book_identify_slot(1, now + 2, 5.0) == pytest.approx(now + 6, abs=1e-6)
        assert await first.book_identify_slot(0, now + 2, 5.0) == pytest.approx(now + 50, abs=1e-6)
        later = now + 100
        assert await second.book_identify_slot(0, later, 5.0) == pytest.approx(later, abs=1e-6)
    finally:
        await first.close()
        await second.close()


async def test_an_order_whose_commit_was_lost_is_created_once_not_refused(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL restarting as a job's transaction commits: the COMMIT went through but its answer was lost.
    The write runs again, finds its own row (its task id) and answers "created", so the person gets the job
    rather than "out of reach"; one job and one selfie exist."""
    from asyncpg.transaction import Transaction

    storage = await Storage.open(postgres_url)
    try:
        user = await storage.ensure_user("telegram", "1")
        real_commit = Transaction.commit
        lost = []

        async def commit_then_lose_the_answer(self: Transaction) -> None:
            await real_commit(self)
            if not lost:
                lost.append(True)
                raise ConnectionResetError("connection reset by peer")

        monkeypatch.setattr(Transaction, "commit", commit_then_lose_the_answer)
        job, created = await storage.create_job(
            task_id="task-1", user_id=user, platform="telegram", event_key="update-1", chat_id="chat",
            style="anime", prompt="", mode="fast", picture_count=1, seed=1, selfie=b"selfie", reply_context={},
            queue="mmpp.fast", variant="base", limits=JobLimits(10, 10, 10, datetime.now(UTC) - timedelta(days=1)),
        )  # fmt: skip
        assert lost and created and job.task_id == "task-1"
        assert await storage.count("jobs") == 1 and await storage.count("selfies") == 1
        # Another delivery of the same event (another task id) is still a duplicate.
        again, created_again = await storage.create_job(
            task_id="task-2", user_id=user, platform="telegram", event_key="update-1", chat_id="chat",
            style="anime", prompt="", mode="fast", picture_count=1, seed=1, selfie=b"selfie", reply_context={},
            queue="mmpp.fast", variant="base",
        )  # fmt: skip
        assert again.id == job.id and not created_again
    finally:
        await storage.close()
