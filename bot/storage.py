"""The one place with queries: the bot's database, SQLite (the embedded default) or PostgreSQL (shared).

Every query is written here once, in SQL both engines read alike; :mod:`bot.database` holds the two
drivers and what differs between the engines (placeholders, transactions and locks, the migrations'
types).  ``Storage.open`` picks the engine from where the database is: a ``postgresql://`` URL
(``MMPP_DATABASE_URL``) or an SQLite file (``MMPP_DATABASE``).

On SQLite every write is the file's only writer (``BEGIN IMMEDIATE``).  On PostgreSQL writers run side by
side, so a transaction that reads before it writes says which advisory locks it needs (``transaction.lock``):
two bot processes then serialise on the same person's quota or the same style's promotion, and on nothing
else.  Single-statement writes (upserts on a unique key) need no lock: the unique index decides.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bot.database import (
    Database,
    PostgresDatabase,
    Row,
    SqliteDatabase,
    Transaction,
    is_postgres_url,
    redacted,
    retried_when_connection_lost,
)
from mmpp.errors import ErrorCode, MmppError
from mmpp.feedback import FeedbackRows, Rating

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
#: The tables a reader of someone else's database (``mmpp eval --feedback``) checks for.
BOT_TABLES = ("jobs", "pictures", "ratings")


def _placeholders(values: Sequence[Any]) -> str:
    """``?,?,?`` for an ``IN (...)`` list: values always travel as parameters, never inside the SQL text."""
    return ",".join("?" for _ in values)


def utc_now() -> datetime:
    return datetime.now(UTC)


def timestamp(moment: datetime | None = None) -> str:
    return (moment or utc_now()).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class Job:
    id: int
    task_id: str
    user_id: int
    platform: str
    event_key: str
    chat_id: str
    style: str
    prompt: str
    mode: str | None
    picture_count: int
    seed: int | None
    parent_job_id: int | None
    state: str
    progress_done: int
    progress_total: int
    error_code: str | None
    error_message: str | None
    reply_context: dict[str, Any]
    status_message_id: str | None
    result_meta: dict[str, Any] | None
    created_at: str
    enqueued_at: str | None
    finished_at: str | None
    delivered_at: str | None
    #: The Celery queue it goes to; ``None`` only for rows older than migration 0004 (filled in at start).
    queue: str | None = None
    #: When it was given one of its queue's places in the broker (``enqueued_at``: when the broker took it).
    admitted_at: str | None = None
    #: The variant of its style it renders (``base``: the style as written); all its pictures share it.
    variant: str = "base"
    #: The engine family it was sent for (its variant's ``family``); "" for the family of the bot's own queue.
    family: str = ""
    #: For an upscale job, the picture it paints again at twice the size (``None`` for every other job).
    #: Its input travels as its "selfie" row: the picture's PNG, sent in the job's payload and deleted when done.
    upscale_of_picture_id: int | None = None

    @property
    def is_upscale(self) -> bool:
        """Whether this job upscales a picture: it is delivered as a file, and offers no further upscale."""
        return self.upscale_of_picture_id is not None

    @classmethod
    def from_row(cls, row: Row) -> Job:
        data = dict(row)
        data["reply_context"] = json.loads(data["reply_context"] or "{}")
        data["result_meta"] = json.loads(data["result_meta"]) if data["result_meta"] else None
        return cls(**data)


@dataclass(frozen=True)
class UnfinishedJobs:
    """Every queued or running job's id per queue, oldest first, and the ones not yet sent to the broker."""

    by_queue: dict[str | None, list[int]]
    waiting: frozenset[int]


@dataclass(frozen=True)
class VariantControl:
    """An operator's decision about one variant (``mmpp variants pause`` / ``floor``)."""

    style: str
    variant: str
    paused: bool
    ineligible_reason: str | None
    changed_at: str


@dataclass(frozen=True)
class VariantPromotion:
    """A variant made its style's default, by the ratings or by an operator, with the evidence."""

    id: int
    style: str
    variant: str
    decided_by: str
    evidence: dict[str, Any]
    created_at: str
    rolled_back_at: str | None

    @classmethod
    def from_row(cls, row: Row) -> VariantPromotion:
        return cls(**{**dict(row), "evidence": json.loads(row["evidence"] or "{}")})


@dataclass(frozen=True)
class PersonSettings:
    """A person's defaults for their orders (``/settings``); ``None``: no default, the order's or the style's."""

    user_id: int
    style: str | None
    mode: str | None
    picture_count: int | None
    prompt_suffix: str | None
    updated_at: str


@dataclass(frozen=True)
class JobLimits:
    """The quotas a new job must fit, checked by :meth:`Storage.create_job` in the transaction that writes it:
    read and written at once, two orders from two processes cannot both take the last place."""

    #: Jobs the person may have queued or running.
    max_pending: int
    #: Pictures the person, and the job's chat, may ask for since ``day_start`` (failed jobs not counted).
    daily_pictures: int
    chat_daily_pictures: int
    day_start: datetime


class QuotaRefused(Exception):  # noqa: N818 (a refusal the core words for people, not an error of the storage)
    """The job did not fit :class:`JobLimits`: which limit (``pending``, ``daily`` or ``chat_daily``) and how
    much of it was used already.  Nothing was written."""

    def __init__(self, limit: str, used: int) -> None:
        super().__init__(f"{limit} quota: {used} used")
        self.limit = limit
        self.used = used


@dataclass(frozen=True)
class StoredPicture:
    id: int
    job_id: int
    position: int
    seed: int
    png: bytes
    message_ref: str | None
    #: When the first attempt to post it began; with no ``message_ref`` the picture is "in doubt": its message
    #: may exist (the process died between the platform's answer and :meth:`Storage.set_picture_message`).
    post_started_at: str | None = None

    @property
    def in_doubt(self) -> bool:
        return self.post_started_at is not None and self.message_ref is None


class Storage:
    """Typed queries over the schema in ``migrations/``."""

    def __init__(self, database: Database) -> None:
        self._db = database

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``: which engine holds the database."""
        return self._db.dialect

    @classmethod
    async def open(cls, location: Path | str, migrations: Path = MIGRATIONS) -> Storage:
        """The database at ``location``, migrated: a ``postgresql://`` URL, or else the path of an SQLite file
        (created with its folder when missing)."""
        database: Database
        if is_postgres_url(location):
            database = await PostgresDatabase.open(str(location))
        else:
            database = await SqliteDatabase.open(location)
        storage = cls(database)
        try:
            await storage.migrate(migrations)
        except BaseException:
            await storage.close()
            raise
        return storage

    @classmethod
    async def open_read_only(cls, location: Path | str, *, label: str = "database") -> Storage:
        """Open an existing bot database without ever writing to it, so a report can be made while the bot
        runs: no migrations; SQLite opened ``mode=ro``, PostgreSQL with every transaction read-only.  What is
        not the bot's database is refused with one line (a missing file, a file that is not SQLite, a
        database without the bot's tables)."""
        if is_postgres_url(location):
            return cls(await PostgresDatabase.open_read_only(str(location), label=label, tables=BOT_TABLES))
        return cls(await SqliteDatabase.open_read_only(Path(location), label=label, tables=BOT_TABLES))

    async def close(self) -> None:
        await self._db.close()

    @asynccontextmanager
    async def write(self) -> AsyncIterator[Transaction]:
        """One write transaction, committed when the block ends and rolled back when it raises."""
        async with self._db.write() as transaction:
            yield transaction

    # ------------------------------------------------------------------ migrations

    async def migrate(self, folder: Path = MIGRATIONS) -> list[int]:
        """Apply the numbered migrations not yet applied, each in one transaction."""
        return await self._db.migrate(folder)

    async def schema_version(self) -> int:
        rows = await self._db.fetch_all("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
        return int(rows[0][0])

    # ------------------------------------------------------------------ users

    @retried_when_connection_lost(idempotent=True)
    async def ensure_user(self, platform: str, platform_user_id: str, display_name: str = "") -> int:
        """The person's row id, creating the row the first time (a new display name replaces the old)."""
        async with self.write() as db:
            await db.execute(
                "INSERT INTO users (platform, platform_user_id, display_name, created_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (platform, platform_user_id) DO UPDATE SET display_name = "
                "CASE WHEN excluded.display_name != '' THEN excluded.display_name ELSE users.display_name END",
                (platform, platform_user_id, display_name, timestamp()),
            )
            rows = await db.fetch_all(
                "SELECT id FROM users WHERE platform = ? AND platform_user_id = ?", (platform, platform_user_id)
            )
        return int(rows[0][0])

    async def find_user(self, platform: str, platform_user_id: str) -> int | None:
        """The person's row id if there is one; never creates it."""
        rows = await self._db.fetch_all(
            "SELECT id FROM users WHERE platform = ? AND platform_user_id = ?", (platform, platform_user_id)
        )
        return int(rows[0][0]) if rows else None

    # ------------------------------------------------------------------ jobs

    @retried_when_connection_lost(idempotent=True)
    async def create_job(
        self,
        *,
        task_id: str,
        user_id: int,
        platform: str,
        event_key: str,
        chat_id: str,
        style: str,
        prompt: str,
        mode: str | None,
        picture_count: int,
        seed: int | None,
        selfie: bytes,
        reply_context: dict[str, Any],
        parent_job_id: int | None = None,
        queue: str | None = None,
        variant: str = "base",
        upscale_of_picture_id: int | None = None,
        limits: JobLimits | None = None,
        family: str = "",
    ) -> tuple[Job, bool]:
        """Write the job and its selfie before anything is enqueued.

        Returns ``(job, created)``; ``created`` is false when this platform
        event already made a job (a duplicate delivery), which is returned.
        With ``limits`` (everyone but admins) a job that does not fit them raises :class:`QuotaRefused`.

        Safe to run again after a lost COMMIT (PostgreSQL restarted as it committed): the event's row then
        carries this call's own ``task_id`` (a fresh uuid per order), so it is this call's job, created, not
        another delivery's; without that, the person would hear "out of reach" for an order that was made.
        """
        async with self.write() as db:
            if limits is not None:
                # Counted and written under the person's and the chat's locks: another process's order for
                # either waits until this one is written (or refused), then counts it.
                await db.lock(f"quota of user {user_id}", f"quota of chat {platform} {chat_id}")
                existing = await db.fetch_all(
                    "SELECT * FROM jobs WHERE platform = ? AND event_key = ?", (platform, event_key)
                )
                if existing:
                    return Job.from_row(existing[0]), existing[0]["task_id"] == task_id
                await self._check_limits(db, limits, user_id, platform, chat_id, picture_count)
            # The unique (platform, event_key) decides between two processes handed the same event: the second
            # inserts nothing and is given the first's job.
            inserted = await db.fetch_all(
                "INSERT INTO jobs (task_id, user_id, platform, event_key, chat_id, style, prompt, mode, "
                "picture_count, seed, parent_job_id, state, reply_context, created_at, queue, variant, family) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?, ?, ?) "
                "ON CONFLICT (platform, event_key) DO NOTHING RETURNING id",
                (
                    task_id, user_id, platform, event_key, chat_id, style, prompt, mode,
                    picture_count, seed, parent_job_id, json.dumps(reply_context), timestamp(), queue, variant,
                    family,
                ),
            )  # fmt: skip
            if not inserted:
                existing = await db.fetch_all(
                    "SELECT * FROM jobs WHERE platform = ? AND event_key = ?", (platform, event_key)
                )
                return Job.from_row(existing[0]), existing[0]["task_id"] == task_id
            job_id = int(inserted[0][0])
            if upscale_of_picture_id is not None:  # in the same transaction: no upscale exists without its picture
                await db.execute(
                    "UPDATE jobs SET upscale_of_picture_id = ? WHERE id = ?", (upscale_of_picture_id, job_id)
                )
            await db.execute("INSERT INTO selfies (job_id, data) VALUES (?, ?)", (job_id, selfie))
            rows = await db.fetch_all("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return Job.from_row(rows[0]), True

    async def _check_limits(
        self, db: Transaction, limits: JobLimits, user_id: int, platform: str, chat_id: str, count: int
    ) -> None:
        pending = await self.pending_jobs(user_id, db)
        if pending >= limits.max_pending:
            raise QuotaRefused("pending", pending)
        used = await self.pictures_requested_since(user_id, limits.day_start, db)
        if used + count > limits.daily_pictures:
            raise QuotaRefused("daily", used)
        used = await self.pictures_requested_in_chat_since(platform, chat_id, limits.day_start, db)
        if used + count > limits.chat_daily_pictures:
            raise QuotaRefused("chat_daily", used)

    async def job(self, job_id: int) -> Job | None:
        rows = await self._db.fetch_all("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return Job.from_row(rows[0]) if rows else None

    async def job_by_event(self, platform: str, event_key: str) -> Job | None:
        rows = await self._db.fetch_all(
            "SELECT * FROM jobs WHERE platform = ? AND event_key = ?", (platform, event_key)
        )
        return Job.from_row(rows[0]) if rows else None

    @retried_when_connection_lost(idempotent=True)
    async def update_job(self, job_id: int, **fields: Any) -> None:
        allowed = {
            "state", "progress_done", "progress_total", "error_code", "error_message", "status_message_id",
            "enqueued_at", "finished_at", "delivered_at", "result_meta", "reply_context", "queue", "admitted_at",
        }  # fmt: skip
        unknown = set(fields) - allowed
        if unknown:
            raise ValueError(f"cannot update {sorted(unknown)}")
        values = [
            json.dumps(value) if key in {"result_meta", "reply_context"} else value for key, value in fields.items()
        ]
        assignments = ", ".join(f"{key} = ?" for key in fields)
        async with self.write() as db:
            await db.execute(f"UPDATE jobs SET {assignments} WHERE id = ?", (*values, job_id))

    async def undelivered_jobs(self, platforms: list[str]) -> list[Job]:
        marks = _placeholders(platforms)
        rows = await self._db.fetch_all(
            f"SELECT * FROM jobs WHERE delivered_at IS NULL AND platform IN ({marks}) ORDER BY id",
            platforms,
        )
        return [Job.from_row(row) for row in rows]

    @retried_when_connection_lost(idempotent=True)
    async def claim_delivery(self, job_id: int, claimant: str, now: datetime, stale_before: datetime) -> bool:
        """Whether ``claimant`` holds the job now: it was unclaimed, already this claimant's, or its claim dates
        from before ``stale_before`` (a follower that long gone is gone).  The job must be undelivered.

        One ``BEGIN IMMEDIATE`` transaction (an upsert guarded by the holder and age): of two processes asking
        at once, one gets the job, the other sees the first's claim and answers ``False``.
        """
        async with self.write() as db:
            claimed = await db.execute(
                "INSERT INTO delivery_claims (job_id, claimant, claimed_at) "
                "SELECT id, ?, ? FROM jobs WHERE id = ? AND delivered_at IS NULL AND true "
                "ON CONFLICT (job_id) DO UPDATE SET claimant = excluded.claimant, claimed_at = excluded.claimed_at "
                "WHERE delivery_claims.claimant = excluded.claimant OR delivery_claims.claimed_at < ?",
                (claimant, timestamp(now), job_id, timestamp(stale_before)),
            )
            return claimed == 1

    async def delivery_claimant(self, job_id: int) -> str | None:
        rows = await self._db.fetch_all("SELECT claimant FROM delivery_claims WHERE job_id = ?", (job_id,))
        return str(rows[0][0]) if rows else None

    async def unfinished_jobs(self) -> UnfinishedJobs:
        """The ids of every queued or running job (any platform), oldest first, per queue, and which of them
        still wait in the database for their place in the broker.

        A job's place in line is how many of its queue's ids are below its own: each queue is fed oldest
        first (:meth:`admit_waiting`) and its workers take its jobs in order, so these are the jobs painted
        before it; jobs of other queues do not count.  One read answers every waiting job a process shows
        (bot.core.positions says why not one COUNT per job), and tells each follower of a waiting job whether
        its row changed at all (sent, failed, deleted) without reading the row.
        """
        rows = await self._db.fetch_all(
            "SELECT id, queue, enqueued_at FROM jobs WHERE state IN ('queued', 'running') ORDER BY id"
        )
        by_queue: dict[str | None, list[int]] = {}
        waiting = []
        for job_id, queue, enqueued_at in rows:
            by_queue.setdefault(queue, []).append(int(job_id))
            if enqueued_at is None:
                waiting.append(int(job_id))
        return UnfinishedJobs(by_queue, frozenset(waiting))

    # ------------------------------------------------------------------ admission to the broker

    @retried_when_connection_lost(idempotent=False)
    async def admit_waiting(
        self, platforms: Sequence[str], max_jobs: int, max_bytes: int, message_bytes: Callable[[int], int]
    ) -> list[int]:
        """Give the oldest waiting jobs of ``platforms`` a place in the broker; their ids, oldest first.

        Queue by queue, a job is admitted while its queue's admitted, unfinished jobs stay within
        ``max_jobs`` and ``max_bytes`` (each job counted as ``message_bytes(len(selfie))``), strictly
        oldest first: a job that does not fit holds back the younger ones, so a large selfie is never
        overtaken for ever, and a queue with nothing admitted takes its oldest job whatever its size.
        One ``BEGIN IMMEDIATE`` transaction, so bot processes sharing the database never hand out the
        same place twice.  Jobs of other platforms are left to the process that serves them.
        """
        if not platforms:
            return []
        marks = _placeholders(platforms)
        admitted: list[int] = []
        async with self.write() as db:
            await db.lock("broker admission")  # the places are counted, then handed out: one process at a time
            load: dict[str | None, tuple[int, int]] = {}
            for queue, selfie_bytes in await db.fetch_all(
                "SELECT jobs.queue, LENGTH(selfies.data) FROM jobs LEFT JOIN selfies ON selfies.job_id = jobs.id "
                "WHERE jobs.state IN ('queued', 'running') AND jobs.admitted_at IS NOT NULL",
            ):
                count, size = load.get(queue, (0, 0))
                load[queue] = (count + 1, size + message_bytes(int(selfie_bytes or 0)))
            queues = await db.fetch_all(
                "SELECT DISTINCT queue FROM jobs WHERE state = 'queued' AND admitted_at IS NULL "
                f"AND queue IS NOT NULL AND platform IN ({marks})",
                platforms,
            )
            for (queue,) in queues:
                count, size = load.get(queue, (0, 0))
                if count >= max_jobs:
                    continue
                waiting = await db.fetch_all(
                    "SELECT jobs.id, LENGTH(selfies.data) FROM jobs LEFT JOIN selfies ON selfies.job_id = jobs.id "
                    "WHERE jobs.state = 'queued' AND jobs.queue = ? AND jobs.admitted_at IS NULL "
                    f"AND jobs.platform IN ({marks}) ORDER BY jobs.id LIMIT ?",
                    (queue, *platforms, max_jobs - count),
                )
                for job_id, selfie_bytes in waiting:
                    needed = message_bytes(int(selfie_bytes or 0))
                    if count and size + needed > max_bytes:
                        break
                    count, size = count + 1, size + needed
                    admitted.append(int(job_id))
            if admitted:
                await db.execute(
                    f"UPDATE jobs SET admitted_at = ? WHERE id IN ({_placeholders(admitted)})",
                    (timestamp(), *admitted),
                )
        return sorted(admitted)

    async def admitted_unsent(self, platforms: Sequence[str]) -> list[Job]:
        """Jobs of ``platforms`` holding a place in the broker that the broker has not taken yet, oldest first."""
        if not platforms:
            return []
        marks = _placeholders(platforms)
        rows = await self._db.fetch_all(
            "SELECT * FROM jobs WHERE state = 'queued' AND admitted_at IS NOT NULL AND enqueued_at IS NULL "
            f"AND platform IN ({marks}) ORDER BY id",
            platforms,
        )
        return [Job.from_row(row) for row in rows]

    async def jobs_without_queue(self, platforms: Sequence[str]) -> list[Job]:
        """Unfinished jobs written before jobs named their queue (migration 0004)."""
        if not platforms:
            return []
        marks = _placeholders(platforms)
        rows = await self._db.fetch_all(
            f"SELECT * FROM jobs WHERE state IN ('queued', 'running') AND queue IS NULL AND platform IN ({marks})",
            platforms,
        )
        return [Job.from_row(row) for row in rows]

    async def broker_load(self) -> dict[str, tuple[int, int]]:
        """Per queue: unfinished jobs holding a place in the broker, and jobs waiting for one (for /metrics)."""
        rows = await self._db.fetch_all(
            "SELECT queue, COUNT(admitted_at), COUNT(*) - COUNT(admitted_at) FROM jobs "
            "WHERE state IN ('queued', 'running') AND queue IS NOT NULL GROUP BY queue",
        )
        return {str(queue): (int(held), int(waiting)) for queue, held, waiting in rows}

    async def pending_jobs(self, user_id: int, reader: Database | Transaction | None = None) -> int:
        """The person's queued and running jobs; ``reader``: a transaction to count in (the quota check)."""
        rows = await (reader or self._db).fetch_all(
            "SELECT COUNT(*) FROM jobs WHERE user_id = ? AND state IN ('queued', 'running')", (user_id,)
        )
        return int(rows[0][0])

    async def pictures_requested_in_chat_since(
        self, platform: str, chat_id: str, since: datetime, reader: Database | Transaction | None = None
    ) -> int:
        rows = await (reader or self._db).fetch_all(
            "SELECT COALESCE(SUM(picture_count), 0) FROM jobs WHERE platform = ? AND chat_id = ? AND created_at >= ? "
            "AND state != 'failed'",
            (platform, chat_id, timestamp(since)),
        )
        return int(rows[0][0])

    @retried_when_connection_lost(idempotent=False)
    async def take_privacy_notice(self, user_id: int) -> bool:
        """True exactly once per person: the first time, the notice is due."""
        async with self.write() as db:
            changed = await db.execute(
                "UPDATE users SET privacy_notice_at = ? WHERE id = ? AND privacy_notice_at IS NULL",
                (timestamp(), user_id),
            )
        return changed == 1

    async def chat_notice_given(self, platform: str, chat_id: str, notice: str) -> bool:
        """Whether ``notice`` was given in this chat (a read, so the caller can skip asking the platform)."""
        rows = await self._db.fetch_all(
            "SELECT 1 FROM chat_notices WHERE platform = ? AND chat_id = ? AND notice = ?",
            (platform, chat_id, notice),
        )
        return bool(rows)

    @retried_when_connection_lost(idempotent=False)
    async def take_chat_notice(self, platform: str, chat_id: str, notice: str) -> bool:
        """True exactly once per chat and notice, across restarts: the first time, the notice is due."""
        async with self.write() as db:
            inserted = await db.execute(
                "INSERT INTO chat_notices (platform, chat_id, notice, given_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT DO NOTHING",
                (platform, chat_id, notice, timestamp()),
            )
        return inserted == 1

    async def job_counts_by_state(self) -> dict[str, int]:
        rows = await self._db.fetch_all("SELECT state, COUNT(*) FROM jobs GROUP BY state")
        return {str(state): int(count) for state, count in rows}

    async def pictures_requested_since(
        self, user_id: int, since: datetime, reader: Database | Transaction | None = None
    ) -> int:
        rows = await (reader or self._db).fetch_all(
            "SELECT COALESCE(SUM(picture_count), 0) FROM jobs WHERE user_id = ? AND created_at >= ? "
            "AND state != 'failed'",
            (user_id, timestamp(since)),
        )
        return int(rows[0][0])

    async def recent_jobs(self, user_id: int, limit: int = 10) -> list[Job]:
        rows = await self._db.fetch_all(
            "SELECT * FROM jobs WHERE user_id = ? ORDER BY id DESC LIMIT ?", (user_id, limit)
        )
        return [Job.from_row(row) for row in rows]

    # ------------------------------------------------------------------ selfies

    async def selfie(self, job_id: int, now: datetime | None = None) -> bytes | None:
        rows = await self._db.fetch_all(
            "SELECT data FROM selfies WHERE job_id = ? AND (expires_at IS NULL OR expires_at > ?)",
            (job_id, timestamp(now)),
        )
        return bytes(rows[0][0]) if rows else None

    @retried_when_connection_lost(idempotent=True)
    async def release_selfie(self, job_id: int, keep_for: timedelta, now: datetime | None = None) -> None:
        """After the job: delete the selfie, or keep it for re-rolls until ``keep_for`` after ``now``."""
        deadline = (now or utc_now()) + keep_for
        async with self.write() as db:
            if keep_for <= timedelta(0):
                await db.execute("DELETE FROM selfies WHERE job_id = ?", (job_id,))
            else:
                await db.execute("UPDATE selfies SET expires_at = ? WHERE job_id = ?", (timestamp(deadline), job_id))

    @retried_when_connection_lost(idempotent=True)
    async def purge_expired_selfies(self, now: datetime | None = None) -> int:
        async with self.write() as db:
            deleted = await db.execute(
                "DELETE FROM selfies WHERE expires_at IS NOT NULL AND expires_at <= ?", (timestamp(now),)
            )
        return deleted

    # ------------------------------------------------------------------ pictures

    @retried_when_connection_lost(idempotent=False)
    async def store_pictures(self, job_id: int, pictures: list[tuple[int, bytes]]) -> list[StoredPicture]:
        """Store (seed, png) pairs once; a second call (a re-delivered result) returns the first set."""
        async with self.write() as db:
            for position, (seed, png) in enumerate(pictures, start=1):
                await db.execute(
                    "INSERT INTO pictures (job_id, position, seed, png) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                    (job_id, position, seed, png),
                )
        return await self.pictures(job_id)

    async def pictures(self, job_id: int) -> list[StoredPicture]:
        rows = await self._db.fetch_all("SELECT * FROM pictures WHERE job_id = ? ORDER BY position", (job_id,))
        return [StoredPicture(**{**dict(row), "png": bytes(row["png"])}) for row in rows]

    @retried_when_connection_lost(idempotent=True)
    async def mark_posts_started(self, job_id: int, now: datetime | None = None) -> None:
        """Record, before posting, that the job's pictures not yet posted are being posted: a process killed after
        the platform created a message but before its reference was stored leaves them in doubt, not unposted.
        The first start is kept: the message may come from any attempt since."""
        async with self.write() as db:
            await db.execute(
                "UPDATE pictures SET post_started_at = ? "
                "WHERE job_id = ? AND message_ref IS NULL AND post_started_at IS NULL",
                (timestamp(now), job_id),
            )

    @retried_when_connection_lost(idempotent=True)
    async def set_picture_message(self, picture_id: int, message_ref: str) -> None:
        async with self.write() as db:
            await db.execute("UPDATE pictures SET message_ref = ? WHERE id = ?", (message_ref, picture_id))

    async def picture_by_message(self, platform: str, message_ref: str) -> StoredPicture | None:
        rows = await self._db.fetch_all(
            "SELECT pictures.* FROM pictures JOIN jobs ON jobs.id = pictures.job_id "
            "WHERE jobs.platform = ? AND pictures.message_ref = ?",
            (platform, message_ref),
        )
        return StoredPicture(**{**dict(rows[0]), "png": bytes(rows[0]["png"])}) if rows else None

    async def picture(self, picture_id: int) -> StoredPicture | None:
        rows = await self._db.fetch_all("SELECT * FROM pictures WHERE id = ?", (picture_id,))
        return StoredPicture(**{**dict(rows[0]), "png": bytes(rows[0]["png"])}) if rows else None

    # ------------------------------------------------------------------ ratings

    @retried_when_connection_lost(idempotent=True)
    async def set_rating(self, picture_id: int, rater_id: int, score: int | None, source: str) -> None:
        """One rating per (rater, picture): a new score replaces, ``None`` withdraws."""
        async with self.write() as db:
            if score is None:
                await db.execute("DELETE FROM ratings WHERE picture_id = ? AND rater_id = ?", (picture_id, rater_id))
                return
            now = timestamp()
            await db.execute(
                "INSERT INTO ratings (picture_id, rater_id, score, source, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (picture_id, rater_id) DO UPDATE SET "
                "score = excluded.score, source = excluded.source, updated_at = excluded.updated_at",
                (picture_id, rater_id, score, source, now, now),
            )

    @retried_when_connection_lost(idempotent=True)
    async def withdraw_rating(self, picture_id: int, rater_id: int, score: int) -> bool:
        """Withdraw the rater's rating of the picture if it is still ``score``; whether one was withdrawn.

        One statement, so a removed reaction handled beside the reaction that replaced it (two events of one
        person, handled at once) never withdraws the newer score: read-then-delete could.
        """
        async with self.write() as db:
            withdrawn = await db.execute(
                "DELETE FROM ratings WHERE picture_id = ? AND rater_id = ? AND score = ?", (picture_id, rater_id, score)
            )
        return withdrawn == 1

    async def rating(self, picture_id: int, rater_id: int) -> int | None:
        rows = await self._db.fetch_all(
            "SELECT score FROM ratings WHERE picture_id = ? AND rater_id = ?", (picture_id, rater_id)
        )
        return int(rows[0][0]) if rows else None

    async def ratings_export(self) -> list[dict[str, Any]]:
        rows = await self._db.fetch_all(
            "SELECT jobs.style, jobs.variant, jobs.mode, jobs.id AS job_id, pictures.position, pictures.seed, "
            "raters.platform AS rater_platform, ratings.rater_id, ratings.score, ratings.source, ratings.updated_at, "
            "jobs.result_meta FROM ratings JOIN pictures ON pictures.id = ratings.picture_id "
            "JOIN jobs ON jobs.id = pictures.job_id JOIN users AS raters ON raters.id = ratings.rater_id "
            "ORDER BY ratings.updated_at",
        )
        return [dict(row) for row in rows]

    async def feedback_rows(self) -> FeedbackRows:
        """What the ratings statistics need (computed in ``mmpp.feedback``): job and picture counts, every rating."""
        jobs = await self._db.fetch_all("SELECT style, COUNT(*) FROM jobs GROUP BY style")
        pictures = await self._db.fetch_all(
            "SELECT jobs.style, COUNT(*) FROM pictures JOIN jobs ON jobs.id = pictures.job_id GROUP BY jobs.style",
        )
        # A database read as it is (``mmpp eval --feedback`` never migrates) may predate variants: all "base".
        columns = await self._db.columns("jobs")
        variant = "jobs.variant" if "variant" in columns else "'base'"
        ratings = await self._db.fetch_all(
            f"SELECT jobs.id, jobs.style, jobs.mode, jobs.result_meta, pictures.id, ratings.score, {variant} "
            "FROM ratings JOIN pictures ON pictures.id = ratings.picture_id JOIN jobs ON jobs.id = pictures.job_id "
            "ORDER BY jobs.style, jobs.id, pictures.id",
        )
        return FeedbackRows(
            jobs_per_style={str(style): int(count) for style, count in jobs},
            pictures_per_style={str(style): int(count) for style, count in pictures},
            ratings=tuple(
                Rating(int(job_id), str(style), mode, meta, int(picture_id), int(score), str(variant))
                for job_id, style, mode, meta, picture_id, score, variant in ratings
            ),
        )

    # ------------------------------------------------------------------ per-person settings

    async def person_settings(self, user_id: int) -> PersonSettings | None:
        rows = await self._db.fetch_all("SELECT * FROM person_settings WHERE user_id = ?", (user_id,))
        return PersonSettings(**dict(rows[0])) if rows else None

    async def person_settings_of(self, platform: str, platform_user_id: str) -> PersonSettings | None:
        """One query by the platform's id: every order reads this before its first reply (Discord gives 3 s)."""
        rows = await self._db.fetch_all(
            "SELECT person_settings.* FROM person_settings JOIN users ON users.id = person_settings.user_id "
            "WHERE users.platform = ? AND users.platform_user_id = ?",
            (platform, platform_user_id),
        )
        return PersonSettings(**dict(rows[0])) if rows else None

    @retried_when_connection_lost(idempotent=True)
    async def save_person_settings(
        self, user_id: int, *, style: str | None, mode: str | None, picture_count: int | None,
        prompt_suffix: str | None,
    ) -> PersonSettings:  # fmt: skip
        """The person's whole row, replaced: the core merges what was typed with what was stored before."""
        async with self.write() as db:
            await db.execute(
                "INSERT INTO person_settings (user_id, style, mode, picture_count, prompt_suffix, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (user_id) DO UPDATE SET style = excluded.style, "
                "mode = excluded.mode, picture_count = excluded.picture_count, "
                "prompt_suffix = excluded.prompt_suffix, updated_at = excluded.updated_at",
                (user_id, style, mode, picture_count, prompt_suffix, timestamp()),
            )
            rows = await db.fetch_all("SELECT * FROM person_settings WHERE user_id = ?", (user_id,))
        return PersonSettings(**dict(rows[0]))

    @retried_when_connection_lost(idempotent=False)
    async def clear_person_settings(self, user_id: int) -> bool:
        """Whether there was a row to delete."""
        async with self.write() as db:
            return await db.execute("DELETE FROM person_settings WHERE user_id = ?", (user_id,)) > 0

    # ------------------------------------------------------------------ variants

    async def variant_observations(self, style: str) -> list[tuple[str, int, int]]:
        """Every rating of one style's pictures as ``(variant, rater_id, score)``, oldest first: what the
        assignment and the promotion rule read on each order and rating."""
        rows = await self._db.fetch_all(
            "SELECT jobs.variant, ratings.rater_id, ratings.score FROM jobs "
            "JOIN pictures ON pictures.job_id = jobs.id JOIN ratings ON ratings.picture_id = pictures.id "
            "WHERE jobs.style = ? AND jobs.upscale_of_picture_id IS NULL "
            "ORDER BY ratings.created_at, ratings.picture_id, ratings.rater_id",
            (style,),
        )
        return [(str(variant), int(rater), int(score)) for variant, rater, score in rows]

    async def variant_cells(self, style: str) -> tuple[list[tuple[str, str, int, int]], int]:
        """One style's ratings summed per (rater, variant): ``([(rater_id, variant, ratings, sum), ...], sum of
        every score squared)``.  What the assignment's model needs, in one grouped query: a few hundred rows
        where :meth:`variant_observations` would hand over every rating."""
        rows = await self._db.fetch_all(
            "SELECT ratings.rater_id, jobs.variant, COUNT(*), SUM(ratings.score), SUM(ratings.score * ratings.score) "
            "FROM jobs JOIN pictures ON pictures.job_id = jobs.id JOIN ratings ON ratings.picture_id = pictures.id "
            # An upscale's rating is not a new reading of its variant: it is of a picture the person already
            # chose (and likely rated) to upscale, so it would count one opinion twice, for liked pictures only.
            "WHERE jobs.style = ? AND jobs.upscale_of_picture_id IS NULL GROUP BY ratings.rater_id, jobs.variant",
            (style,),
        )
        cells = [(str(rater), str(variant), int(count), int(total)) for rater, variant, count, total, _ in rows]
        return cells, sum(int(row[4]) for row in rows)

    async def variant_controls(self, style: str | None = None) -> dict[tuple[str, str], VariantControl]:
        """Operators' decisions, by ``(style, variant)``; a variant without a row is active and eligible."""
        where, parameters = ("WHERE style = ?", (style,)) if style is not None else ("", ())
        rows = await self._db.fetch_all(f"SELECT * FROM variant_controls {where}", parameters)
        return {
            (row["style"], row["variant"]): VariantControl(
                row["style"], row["variant"], bool(row["paused"]), row["ineligible_reason"], row["changed_at"]
            )
            for row in rows
        }

    async def set_variant_paused(self, style: str, variant: str, paused: bool) -> None:
        """Pause a variant (not served, never promoted) or resume it."""
        await self._set_variant_control(style, variant, "paused", int(paused))

    async def set_variant_ineligible(self, style: str, variant: str, reason: str | None) -> None:
        """Record why a variant falls below the operator's floor of measured figures, or clear it (``None``)."""
        await self._set_variant_control(style, variant, "ineligible_reason", reason)

    async def _set_variant_control(self, style: str, variant: str, column: str, value: Any) -> None:
        if column not in {"paused", "ineligible_reason"}:
            raise ValueError(column)
        async with self.write() as db:
            await db.execute(
                f"INSERT INTO variant_controls (style, variant, {column}, changed_at) VALUES (?, ?, ?, ?) "
                f"ON CONFLICT (style, variant) DO UPDATE SET {column} = excluded.{column}, "
                "changed_at = excluded.changed_at",
                (style, variant, value, timestamp()),
            )

    async def current_promotion(self, style: str) -> VariantPromotion | None:
        """The style's default variant as promoted (newest not rolled back), or ``None`` while variants share
        traffic."""
        rows = await self._db.fetch_all(
            "SELECT * FROM variant_promotions WHERE style = ? AND rolled_back_at IS NULL ORDER BY id DESC LIMIT 1",
            (style,),
        )
        return VariantPromotion.from_row(rows[0]) if rows else None

    async def promotions(self, style: str | None = None) -> list[VariantPromotion]:
        """Every promotion, rolled back or not, oldest first: the record of what was decided and why."""
        where, parameters = ("WHERE style = ?", (style,)) if style is not None else ("", ())
        rows = await self._db.fetch_all(f"SELECT * FROM variant_promotions {where} ORDER BY id", parameters)
        return [VariantPromotion.from_row(row) for row in rows]

    async def promote_variant(
        self, style: str, variant: str, decided_by: str, evidence: dict[str, Any], *, only_if_none: bool = False
    ) -> VariantPromotion | None:
        """Make ``variant`` the style's default.  ``only_if_none`` (the ratings' own promotions) promotes only while
        no promotion stands, checked in the same transaction, so two ratings at once promote once."""
        async with self.write() as db:
            await db.lock(f"promotion of {style}")
            if only_if_none:
                standing = await db.fetch_all(
                    "SELECT 1 FROM variant_promotions WHERE style = ? AND rolled_back_at IS NULL", (style,)
                )
                if standing:
                    return None
            rows = await db.fetch_all(
                "INSERT INTO variant_promotions (style, variant, decided_by, evidence, created_at) "
                "VALUES (?, ?, ?, ?, ?) RETURNING *",
                (style, variant, decided_by, json.dumps(evidence, sort_keys=True), timestamp()),
            )
        return VariantPromotion.from_row(rows[0])

    async def roll_back_promotion(self, style: str) -> VariantPromotion | None:
        """Undo the style's standing promotion (kept on record, marked rolled back) and pause its variant, so the
        same evidence does not promote it again at the next rating; returns what was rolled back."""
        async with self.write() as db:
            await db.lock(f"promotion of {style}")
            rows = await db.fetch_all(
                "SELECT * FROM variant_promotions WHERE style = ? AND rolled_back_at IS NULL ORDER BY id DESC LIMIT 1",
                (style,),
            )
            if not rows:
                return None
            now = timestamp()
            await db.execute("UPDATE variant_promotions SET rolled_back_at = ? WHERE id = ?", (now, rows[0]["id"]))
            await db.execute(
                "INSERT INTO variant_controls (style, variant, paused, changed_at) VALUES (?, ?, 1, ?) "
                "ON CONFLICT (style, variant) DO UPDATE SET paused = 1, changed_at = excluded.changed_at",
                (style, rows[0]["variant"], now),
            )
            rows = await db.fetch_all("SELECT * FROM variant_promotions WHERE id = ?", (rows[0]["id"],))
        return VariantPromotion.from_row(rows[0])

    # ------------------------------------------------------------------ Discord's IDENTIFY pacing

    @retried_when_connection_lost(idempotent=False)
    async def book_identify_slot(self, bucket: int, now: float, interval: float) -> float:
        """The moment (Unix seconds) this process may send its IDENTIFY in ``bucket``: ``now``, or the bucket's
        next free slot if that is later; the slot after it is then ``interval`` further on.

        Discord allows one IDENTIFY per 5 s per bucket across every process of the bot, and the processes share
        only this database.  One upsert on the bucket's key: its row lock (PostgreSQL) or the file's write lock
        (SQLite) orders two processes booking at once, so each gets its own slot and none is handed out twice.
        Not retried after a lost COMMIT: booking twice would only skip a slot, and the caller falls back to
        discord.py's own pacing on any error.
        """
        async with self.write() as db:
            rows = await db.fetch_all(
                "INSERT INTO identify_slots (bucket, next_at) VALUES (?, ?) "
                "ON CONFLICT (bucket) DO UPDATE SET next_at = CASE WHEN identify_slots.next_at > ? "
                "THEN identify_slots.next_at + ? ELSE excluded.next_at END RETURNING next_at",
                (bucket, now + interval, now, interval),
            )
        return float(rows[0][0]) - interval

    # ------------------------------------------------------------------ forgetting

    async def forget_user(self, user_id: int) -> list[str]:
        """Delete a person and everything about them; return their task ids (to purge the broker)."""
        async with self.write() as db:
            task_ids = [row[0] for row in await db.fetch_all("SELECT task_id FROM jobs WHERE user_id = ?", (user_id,))]
            # Ratings they gave on others' pictures, then their jobs (cascading to
            # selfies, pictures and the ratings on those), then the person.
            await db.execute("DELETE FROM ratings WHERE rater_id = ?", (user_id,))
            await db.execute("DELETE FROM jobs WHERE user_id = ?", (user_id,))
            # Also by the cascade; said here so that forgetting does not hang on a pragma being on.
            await db.execute("DELETE FROM person_settings WHERE user_id = ?", (user_id,))
            await db.execute("DELETE FROM users WHERE id = ?", (user_id,))
        return task_ids

    async def count(self, table: str, where: str = "TRUE", parameters: tuple[Any, ...] = ()) -> int:
        """Row counts for tests and reports; ``table`` is one of ours, never user input."""
        if table not in {"users", "jobs", "selfies", "pictures", "ratings", "person_settings"}:
            raise ValueError(table)
        rows = await self._db.fetch_all(f"SELECT COUNT(*) FROM {table} WHERE {where}", parameters)
        return int(rows[0][0])

    async def integrity_check(self) -> str:
        """``ok`` when the engine finds nothing wrong (SQLite's ``PRAGMA integrity_check``; on PostgreSQL, that
        every picture, rating and selfie still has the row it belongs to)."""
        return await self._db.integrity_check()


def read_feedback_rows(location: Path | str) -> FeedbackRows:
    """The ratings of the bot's database at ``location`` (an SQLite file or a ``postgresql://`` URL, as
    :meth:`Storage.open` takes it), opened read-only, for callers without an event loop.

    This is how ``mmpp eval --feedback`` reads the database: the engine may not import the bot, so the
    dispatcher (``mmpp/cli.py``) hands this function to it, and the SQL stays in this one module.  The rows
    name their database without its password, which the engine's report prints.
    """

    async def read() -> FeedbackRows:
        storage = await Storage.open_read_only(location, label="feedback database")
        try:
            return replace(await storage.feedback_rows(), source=redacted(location))
        except sqlite3.DatabaseError as error:
            raise MmppError(
                ErrorCode.INVALID_REQUEST, f"{redacted(location)}: the ratings cannot be read ({error})"
            ) from None
        finally:
            await storage.close()

    return asyncio.run(read())
