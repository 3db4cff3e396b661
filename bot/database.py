"""The storage layer's two database drivers: SQLite (aiosqlite, the embedded default) and PostgreSQL (asyncpg).

``bot.storage.Storage`` writes every query once, in SQL both engines read the same way (``?`` placeholders,
``ON CONFLICT``, ``RETURNING``: SQLite 3.35 or later).  What differs between the engines lives here and
nowhere else:

* placeholders: PostgreSQL numbers them (``$1``), so its driver rewrites each ``?`` once per query text;
* transactions: SQLite has one writer at a time for the whole file, so a write is ``BEGIN IMMEDIATE`` under
  one asyncio lock (writes in this process never interleave, a write in another process waits its turn);
  PostgreSQL runs writers side by side, each on its own pooled connection, and a transaction that reads
  before it writes (a quota, the broker's places, a promotion) first takes the advisory locks
  :meth:`Transaction.lock` names, so two processes serialise exactly where they must.  On SQLite that call
  costs nothing: the file lock already serialises every writer;
* migrations: the numbered files in ``migrations/`` are written in SQLite's dialect and applied to SQLite
  exactly as they are; PostgreSQL gets the same files through :func:`postgres_migration`, a small and
  documented rewrite of the few types SQLite spells its own way;
* the checks without a portable spelling: a table's columns, the integrity check.

Every value a query returns has the same Python type on both: the schema keeps timestamps as ISO-8601 text
and JSON as text (so ordering and comparison are those of the text on both engines), flags as integers,
pictures as bytes.  The one exception, ``SUM`` of integers (a ``Decimal`` on PostgreSQL), is read through
``int(...)`` by every caller.

Why a driver layer under one ``Storage`` rather than two ``Storage`` classes: the queries are the part that
grows (one per feature), and written once they cannot drift apart; the engines differ in a dozen lines.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, ParamSpec, Protocol, TypeAlias, TypeVar
from urllib.parse import urlsplit, urlunsplit

import aiosqlite

from mmpp.errors import ErrorCode, MmppError

logger = logging.getLogger(__name__)

MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
POSTGRES_SCHEMES = ("postgresql", "postgres")
#: One row of a result: ``sqlite3.Row`` or ``asyncpg.Record``; both index by position and by column name,
#: iterate over their values and turn into a dict with ``dict(row)``.
Row: TypeAlias = Any


def is_postgres_url(location: Path | str) -> bool:
    return isinstance(location, str) and urlsplit(location).scheme in POSTGRES_SCHEMES


def redacted(location: Path | str) -> str:
    """The database as it may be printed or logged: a PostgreSQL URL without its password."""
    if not is_postgres_url(location):
        return str(location)
    parts = urlsplit(str(location))
    if parts.password is None:
        return str(location)
    netloc = f"{parts.username or ''}:***@{parts.hostname or ''}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _now_text() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def migration_files(folder: Path) -> list[tuple[int, Path]]:
    """The numbered migrations of ``folder``, oldest first; a file not named ``NNNN_reason.sql`` is refused."""
    found = []
    for path in sorted(folder.glob("*.sql")):
        if path.name.endswith(".postgres.sql"):  # PostgreSQL's own text of a migration (postgres_migration)
            continue
        match = MIGRATION_NAME.match(path.name)
        if not match:
            raise RuntimeError(f"{path.name}: migrations are named NNNN_reason.sql")
        found.append((int(match.group(1)), path))
    return found


class Transaction(Protocol):
    """What a query sees inside ``Storage.write()``: one transaction, committed when the block ends."""

    async def fetch_all(self, sql: str, parameters: Sequence[Any] = ()) -> list[Row]: ...

    async def execute(self, sql: str, parameters: Sequence[Any] = ()) -> int:
        """Run one statement; the number of rows it inserted, changed or deleted."""
        ...

    async def lock(self, *keys: str) -> None:
        """Hold ``keys`` until the transaction ends: another process's transaction asking for one waits."""
        ...


class Database(Protocol):
    """One database engine under ``Storage``: reads, write transactions, migrations and the engine's checks."""

    dialect: str

    async def fetch_all(self, sql: str, parameters: Sequence[Any] = ()) -> list[Row]: ...

    def write(self) -> Any:
        """``async with database.write() as transaction``: one transaction (an async context manager)."""
        ...

    async def migrate(self, folder: Path) -> list[int]: ...

    async def columns(self, table: str) -> set[str]: ...

    async def integrity_check(self) -> str: ...

    async def close(self) -> None: ...


# ---------------------------------------------------------------------------------------------------- SQLite


class SqliteTransaction:
    def __init__(self, connection: aiosqlite.Connection) -> None:
        self._connection = connection

    async def fetch_all(self, sql: str, parameters: Sequence[Any] = ()) -> list[Row]:
        return list(await self._connection.execute_fetchall(sql, parameters))

    async def execute(self, sql: str, parameters: Sequence[Any] = ()) -> int:
        cursor = await self._connection.execute(sql, parameters)
        return cursor.rowcount

    async def lock(self, *keys: str) -> None:
        """Nothing to do: ``BEGIN IMMEDIATE`` already made this the only writer of the file."""


class SqliteDatabase:
    """The embedded default: one connection, WAL (readers beside the writer), a busy timeout (a second process
    waits instead of failing with "database is locked"), and ``BEGIN IMMEDIATE`` under one asyncio lock."""

    dialect = "sqlite"

    def __init__(self, connection: aiosqlite.Connection) -> None:
        self._connection = connection
        self._write_lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path | str) -> SqliteDatabase:
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        connection = await aiosqlite.connect(str(path), isolation_level=None)
        connection.row_factory = sqlite3.Row
        await connection.execute("PRAGMA busy_timeout = 10000")
        await cls._switch_to_wal(connection)
        await connection.execute("PRAGMA synchronous = NORMAL")
        await connection.execute("PRAGMA foreign_keys = ON")
        return cls(connection)

    @staticmethod
    async def _switch_to_wal(connection: aiosqlite.Connection, attempts: int = 100) -> None:
        """``PRAGMA journal_mode = WAL``, again after a moment while another process is switching the same new
        file: that pragma answers "database is locked" at once rather than waiting out the busy timeout.
        Bounded (about 5 s in all), then the error stands."""
        for attempt in range(attempts):
            try:
                await connection.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as error:
                if "locked" not in str(error) or attempt == attempts - 1:
                    raise
                await asyncio.sleep(0.05)

    @classmethod
    async def open_read_only(cls, path: Path, *, label: str, tables: Sequence[str]) -> SqliteDatabase:
        """An existing bot database opened with ``mode=ro``: no migrations, no pragma that writes.  What is not
        the bot's database is refused with one line: a missing file, a file that is not SQLite, an SQLite file
        without ``tables``."""
        path = Path(path)
        if not path.is_file():
            raise MmppError(ErrorCode.INVALID_REQUEST, f"the {label} {path} does not exist")
        try:
            connection = await aiosqlite.connect(f"file:{path.resolve().as_posix()}?mode=ro", uri=True)
        except sqlite3.DatabaseError as error:
            raise MmppError(ErrorCode.INVALID_REQUEST, f"{path} is not an SQLite database ({error})") from None
        try:
            connection.row_factory = sqlite3.Row
            await connection.execute("PRAGMA busy_timeout = 10000")
            rows = list(await connection.execute_fetchall("SELECT name FROM sqlite_master WHERE type = 'table'"))
        except sqlite3.DatabaseError as error:
            await connection.close()
            raise MmppError(ErrorCode.INVALID_REQUEST, f"{path} is not an SQLite database ({error})") from None
        missing = set(tables) - {row[0] for row in rows}
        if missing:
            await connection.close()
            raise MmppError(
                ErrorCode.INVALID_REQUEST,
                f"{path} is not the bot's database: it has no {', '.join(sorted(missing))} table (run 'mmpp migrate')",
            )
        return cls(connection)

    async def fetch_all(self, sql: str, parameters: Sequence[Any] = ()) -> list[Row]:
        return list(await self._connection.execute_fetchall(sql, parameters))

    async def execute(self, sql: str, parameters: Sequence[Any] = ()) -> int:
        """One statement outside any transaction (a pragma); the rows it changed."""
        cursor = await self._connection.execute(sql, parameters)
        return cursor.rowcount

    @asynccontextmanager
    async def write(self) -> AsyncIterator[SqliteTransaction]:
        async with self._write_lock:
            try:
                await self._connection.execute("BEGIN IMMEDIATE")
                yield SqliteTransaction(self._connection)
            except BaseException:
                # Shielded: a task cancelled again while this runs must still not leave the file's one write
                # transaction open (every later write would fail "cannot start a transaction within a transaction").
                await asyncio.shield(self._roll_back_if_open())
                raise
            await self._connection.execute("COMMIT")

    async def _roll_back_if_open(self) -> None:
        """Roll back whatever is open once the statements already handed to aiosqlite's thread have run: an
        ``await`` cancelled there (a task stopped during BEGIN) does not stop its statement, it only stops
        waiting for it."""
        await self._connection.execute("SELECT 1")
        if self._connection.in_transaction:
            await self._connection.execute("ROLLBACK")

    async def migrate(self, folder: Path) -> list[int]:
        """Apply the numbered migrations not yet applied, each in one transaction, as written."""
        async with self._write_lock:
            await self._connection.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations "
                "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
            )
            applied = {row[0] for row in await self.fetch_all("SELECT version FROM schema_migrations")}
            done = []
            for version, path in migration_files(folder):
                if version in applied:
                    continue
                script = path.read_text(encoding="utf-8")
                record = f"INSERT INTO schema_migrations VALUES ({version}, '{path.name}', '{_now_text()}');"
                try:
                    await self._connection.executescript(f"BEGIN IMMEDIATE;\n{script}\n{record}\nCOMMIT;")
                except sqlite3.Error as error:
                    if self._connection.in_transaction:
                        await self._connection.execute("ROLLBACK")
                    # Another process opening the same new file may have applied it since the versions were
                    # read (a script cannot check first under its own BEGIN IMMEDIATE): then it is done.
                    recorded = await self.fetch_all("SELECT 1 FROM schema_migrations WHERE version = ?", (version,))
                    if recorded:
                        continue
                    raise RuntimeError(f"migration {path.name} failed: {error}") from error
                done.append(version)
            return done

    async def columns(self, table: str) -> set[str]:
        return {row[1] for row in await self.fetch_all(f"PRAGMA table_info({table})")}

    async def integrity_check(self) -> str:
        rows = await self.fetch_all("PRAGMA integrity_check")
        return str(rows[0][0])

    async def close(self) -> None:
        await self._connection.close()


# ---------------------------------------------------------------------------------------------------- PostgreSQL

#: How long an operation waits for a lost PostgreSQL connection to come back (a restart, a fail-over, a network
#: blip) before it fails with :class:`ConnectionLostError`: long enough for ``pg_ctl restart`` or a managed fail-over,
#: short enough that a person waiting on a reply hears about it.  The pauses between tries grow to a second.
RECONNECT_SECONDS = 30.0
RECONNECT_PAUSE_FIRST_SECONDS = 0.05
RECONNECT_PAUSE_MAX_SECONDS = 1.0
LOST_TEXT = "The bot's database is out of reach for a moment; please try again."

P = ParamSpec("P")
R = TypeVar("R")


class ConnectionLostError(MmppError):
    """The PostgreSQL server went away and did not come back within :data:`RECONNECT_SECONDS`, or went away
    inside a transaction.  ``committed`` says what became of that transaction: ``False`` when it surely did not
    commit (the connection dropped before COMMIT was sent: the server rolled it back), ``None`` when nobody can
    know (it dropped while COMMIT was on its way).  A person sees :data:`LOST_TEXT` as one INTERNAL line."""

    def __init__(self, detail: str, committed: bool | None) -> None:
        super().__init__(ErrorCode.INTERNAL, LOST_TEXT)
        self.detail = detail
        self.committed = committed


def _connection_errors() -> tuple[type[BaseException], ...]:
    """What asyncpg raises when the server is gone or not yet back: refused or reset sockets, the connection
    classes of SQLSTATE (08), and the server's own "shutting down / starting up / crashed" (57P01-57P03); not
    a query's timeout or cancellation (57014), which running again would only repeat."""
    import asyncpg

    return (
        ConnectionError,
        asyncpg.PostgresConnectionError,
        asyncpg.AdminShutdownError,
        asyncpg.CrashShutdownError,
        asyncpg.CannotConnectNowError,
    )


def _is_lost(error: BaseException, connection: Any = None) -> bool:
    """Whether ``error`` means the connection is gone: by its type, or because the connection it ran on closed
    under it (asyncpg then raises whatever state it was in: an InterfaceError, an InternalClientError)."""
    if isinstance(error, asyncio.CancelledError):
        return False
    if isinstance(error, _connection_errors()):
        return True
    return connection is not None and bool(connection.is_closed())


class Reconnecting:
    """The pauses of one operation's reconnecting, up to its deadline."""

    def __init__(self) -> None:
        self.deadline = time.monotonic() + RECONNECT_SECONDS
        self.pause = RECONNECT_PAUSE_FIRST_SECONDS

    async def wait(self, error: BaseException, committed: bool | None = False) -> None:
        """Sleep before the next try, or raise :class:`ConnectionLostError` when the deadline has passed."""
        if time.monotonic() + self.pause > self.deadline:
            raise ConnectionLostError(f"{type(error).__name__}: {error}", committed) from None
        await asyncio.sleep(self.pause)
        self.pause = min(self.pause * 2, RECONNECT_PAUSE_MAX_SECONDS)


def retried_when_connection_lost(
    *, idempotent: bool
) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[R]]]:
    """Run a ``Storage`` method's one transaction again when PostgreSQL dropped it (:class:`ConnectionLostError`),
    until :data:`RECONNECT_SECONDS` have passed.

    A transaction that surely did not commit may always run again.  One whose COMMIT was lost on the way
    (``committed is None``) runs again only where running it twice leaves what running it once does
    (``idempotent``: an upsert, setting a column to a value); elsewhere that loss is raised, for the person
    to hear as one line.  Why here and not in the driver: a transaction is the body of an ``async with``, which
    the driver cannot run a second time; the method that holds the body can.
    """

    def decorate(method: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        @functools.wraps(method)
        async def retrying(*args: P.args, **kwargs: P.kwargs) -> R:
            reconnecting = Reconnecting()
            while True:
                try:
                    return await method(*args, **kwargs)
                except ConnectionLostError as lost:
                    if lost.committed is None and not idempotent:
                        raise
                    await reconnecting.wait(lost, lost.committed)

        return retrying

    return decorate


# The rewrite of a migration for PostgreSQL, in order.  SQLite's ``id INTEGER PRIMARY KEY`` is the row id,
# numbered by the engine: PostgreSQL's identity column.  SQLite's INTEGER holds 64 bits (seeds, platform ids):
# BIGINT.  SQLite's BLOB: BYTEA.  Everything else in the migrations (TEXT, CHECK, partial indexes, ALTER TABLE
# ... ADD COLUMN, REFERENCES ... ON DELETE) both engines read alike; a migration that ever needs more can ship
# a ``NNNN_reason.postgres.sql`` beside it, applied to PostgreSQL instead (the same version number).
POSTGRES_REWRITES = (
    (re.compile(r"\bid INTEGER PRIMARY KEY\b"), "id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"),
    (re.compile(r"\bINTEGER\b"), "BIGINT"),
    (re.compile(r"\bBLOB\b"), "BYTEA"),
)


def postgres_migration(path: Path) -> str:
    """The text of migration ``path`` as PostgreSQL applies it: its ``.postgres.sql`` twin where one exists,
    otherwise the SQLite text through :data:`POSTGRES_REWRITES`."""
    twin = path.with_name(path.name.removesuffix(".sql") + ".postgres.sql")
    if twin.is_file():
        return twin.read_text(encoding="utf-8")
    script = path.read_text(encoding="utf-8")
    for pattern, replacement in POSTGRES_REWRITES:
        script = pattern.sub(replacement, script)
    return script


@lru_cache(maxsize=1024)
def numbered_placeholders(sql: str) -> str:
    """``?`` -> ``$1, $2, ...`` outside quoted text: the queries are written once, with SQLite's marks."""
    parts = re.split(r"('(?:[^']|'')*')", sql)
    number = 0
    for index in range(0, len(parts), 2):  # the even parts lie outside quotes

        def next_mark(_: re.Match[str]) -> str:
            nonlocal number
            number += 1
            return f"${number}"

        parts[index] = re.sub(r"\?", next_mark, parts[index])
    return "".join(parts)


def _rows_affected(status: str) -> int:
    """asyncpg answers ``INSERT 0 1``, ``UPDATE 3``, ``DELETE 0``: the last word is the row count."""
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0


class PostgresTransaction:
    def __init__(self, connection: Any) -> None:
        self._connection = connection

    async def fetch_all(self, sql: str, parameters: Sequence[Any] = ()) -> list[Row]:
        return list(await self._connection.fetch(numbered_placeholders(sql), *parameters))

    async def execute(self, sql: str, parameters: Sequence[Any] = ()) -> int:
        return _rows_affected(await self._connection.execute(numbered_placeholders(sql), *parameters))

    async def lock(self, *keys: str) -> None:
        """Transaction-scoped advisory locks, taken in a fixed order so that two transactions asking for the
        same keys never wait on each other in a circle."""
        for key in sorted(set(keys)):
            await self._connection.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", key)


class PostgresDatabase:
    """Several bot processes, on several machines, on one database: a pool of connections per process, each
    write its own transaction (read committed), serialised by row locks and :meth:`PostgresTransaction.lock`
    where it reads before it writes."""

    dialect = "postgresql"
    #: The migrations' lock: two processes starting at once apply each migration once.
    MIGRATION_LOCK = "mmpp schema migrations"

    def __init__(self, pool: Any, location: str) -> None:
        self._pool = pool
        self.location = location

    @classmethod
    async def open(cls, url: str, *, pool_size: int = 10) -> PostgresDatabase:
        import asyncpg  # only where PostgreSQL is used: the SQLite default never loads it

        try:
            pool = await asyncpg.create_pool(url, min_size=1, max_size=pool_size, command_timeout=60)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
            raise MmppError(
                ErrorCode.INVALID_REQUEST,
                f"the PostgreSQL database {redacted(url)} cannot be opened ({type(error).__name__}: {error})",
            ) from None
        return cls(pool, url)

    @classmethod
    async def open_read_only(cls, url: str, *, label: str, tables: Sequence[str]) -> PostgresDatabase:
        """The database with every transaction read-only (the server refuses a write), refused with one line
        when it lacks ``tables``."""
        import asyncpg

        try:
            pool = await asyncpg.create_pool(
                url, min_size=1, max_size=2, server_settings={"default_transaction_read_only": "on"}
            )
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
            raise MmppError(
                ErrorCode.INVALID_REQUEST,
                f"the {label} {redacted(url)} cannot be opened ({type(error).__name__}: {error})",
            ) from None
        database = cls(pool, url)
        rows = await database.fetch_all(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
        )
        missing = set(tables) - {str(row[0]) for row in rows}
        if missing:
            await database.close()
            raise MmppError(
                ErrorCode.INVALID_REQUEST,
                f"{redacted(url)} is not the bot's database: it has no {', '.join(sorted(missing))} table "
                "(run 'mmpp migrate')",
            )
        return database

    async def fetch_all(self, sql: str, parameters: Sequence[Any] = ()) -> list[Row]:
        """One read; run again while the server is away (a read changes nothing), within RECONNECT_SECONDS."""
        reconnecting = Reconnecting()
        text = numbered_placeholders(sql)
        while True:
            connection = await self._acquire(reconnecting)
            try:
                return list(await connection.fetch(text, *parameters))
            except Exception as error:
                if not _is_lost(error, connection):
                    raise
                lost = error
            finally:
                await self._release(connection)
            await reconnecting.wait(lost)

    async def _release(self, connection: Any) -> None:
        """Hand a connection back to the pool.  What the transaction did is settled by now: a connection that
        died since (the pool's reset failed on it) is the pool's to replace, not the caller's failure."""
        try:
            await self._pool.release(connection)
        except Exception as error:  # noqa: BLE001 - the pool terminated it and will open a new one
            logger.info("a PostgreSQL connection died on its way back to the pool (%s)", type(error).__name__)

    async def _acquire(self, reconnecting: Reconnecting) -> Any:
        """A pooled connection, waiting (within the deadline) while the server refuses or is starting up."""
        while True:
            try:
                return await self._pool.acquire()
            except Exception as error:
                if not _is_lost(error):
                    raise
                await reconnecting.wait(error)

    @asynccontextmanager
    async def write(self) -> AsyncIterator[PostgresTransaction]:
        """One transaction on one pooled connection.  Until it has begun, a lost server is waited for (nothing
        was done yet); once the body runs, losing the connection raises :class:`ConnectionLostError`, whose
        ``committed`` says whether it may have committed (see :func:`retried_when_connection_lost`)."""
        reconnecting = Reconnecting()
        while True:
            connection = await self._acquire(reconnecting)
            transaction = connection.transaction()
            try:
                await transaction.start()
                break
            except BaseException as error:  # a task cancelled during BEGIN gives its connection back too
                lost = isinstance(error, Exception) and _is_lost(error, connection)
                await self._release(connection)
                if not lost:
                    raise
                await reconnecting.wait(error)
        try:
            try:
                yield PostgresTransaction(connection)
            except BaseException as error:
                if isinstance(error, Exception) and _is_lost(error, connection):
                    # The server rolls back what a lost connection had begun: surely not committed.
                    raise ConnectionLostError(f"{type(error).__name__}: {error}", committed=False) from None
                if not connection.is_closed():
                    await transaction.rollback()
                raise
            try:
                await transaction.commit()
            except Exception as error:
                if _is_lost(error, connection):
                    raise ConnectionLostError(f"{type(error).__name__}: {error}", committed=None) from None
                raise
        finally:
            await self._release(connection)

    async def migrate(self, folder: Path) -> list[int]:
        """Apply the numbered migrations not yet applied, each in one transaction, under one advisory lock."""
        import asyncpg

        done = []
        async with self._pool.acquire() as connection:
            # Held to the end: a second process migrating at the same moment waits, then finds nothing to do.
            await connection.execute("SELECT pg_advisory_lock(hashtextextended($1, 0))", self.MIGRATION_LOCK)
            try:
                await connection.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations "
                    "(version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
                )
                applied = {row[0] for row in await connection.fetch("SELECT version FROM schema_migrations")}
                for version, path in migration_files(folder):
                    if version in applied:
                        continue
                    try:
                        async with connection.transaction():  # this migration whole, or not at all
                            await connection.execute(postgres_migration(path))
                            await connection.execute(
                                "INSERT INTO schema_migrations VALUES ($1, $2, $3)", version, path.name, _now_text()
                            )
                    except asyncpg.PostgresError as error:
                        raise RuntimeError(f"migration {path.name} failed: {error}") from error
                    done.append(version)
            finally:
                await connection.execute("SELECT pg_advisory_unlock(hashtextextended($1, 0))", self.MIGRATION_LOCK)
        return done

    async def columns(self, table: str) -> set[str]:
        rows = await self.fetch_all(
            "SELECT column_name FROM information_schema.columns WHERE table_name = ? "
            "AND table_schema = current_schema()",
            (table,),
        )
        return {str(row[0]) for row in rows}

    async def integrity_check(self) -> str:
        """PostgreSQL keeps its own pages consistent (there is no ``PRAGMA integrity_check``); what can still go
        wrong is ours: a row pointing at a row that is gone.  ``ok`` when every reference holds."""
        dangling = await self.fetch_all(
            "SELECT 'pictures' FROM pictures WHERE NOT EXISTS (SELECT 1 FROM jobs WHERE jobs.id = pictures.job_id) "
            "UNION ALL SELECT 'ratings' FROM ratings "
            "WHERE NOT EXISTS (SELECT 1 FROM pictures WHERE pictures.id = ratings.picture_id) "
            "UNION ALL SELECT 'selfies' FROM selfies "
            "WHERE NOT EXISTS (SELECT 1 FROM jobs WHERE jobs.id = selfies.job_id) "
            "LIMIT 1"
        )
        return "ok" if not dangling else f"dangling {dangling[0][0]} rows"

    async def close(self) -> None:
        await self._pool.close()
