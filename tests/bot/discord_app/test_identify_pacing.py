"""Discord's session-start limit across bot processes: one IDENTIFY per 5 s per bucket (``shard_id %
max_concurrency``) for the whole bot (https://discord.com/developers/docs/events/gateway#session-start-limit).

Two bot "processes" (two adapters, cores and ``Storage`` connections to one database, as two ``mmpp run`` would
be) start at the same moment against one fake, whose gateway answers an IDENTIFY within 5 s of its bucket's last
with op 9 Invalid Session.  The real 5 s window, two shards: each such test takes 5-10 s.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.storage import Storage
from tests.bot.conftest import ScriptedQueue
from tests.bot.discord_app.test_sharding import BotProcess, half, start_process
from tests.fakes.discord_api import FakeDiscord


@pytest.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord(auto_patch=False) as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest) -> dict[str, object]:
    """The settings of the database both processes share, on each engine in turn."""
    if request.param == "sqlite":
        return {}
    return {"database_url": str(request.getfixturevalue("postgres_url"))}


async def start_together(fake: FakeDiscord, tmp_path: Path, database: dict[str, object]) -> list[BotProcess]:
    queue = ScriptedQueue()
    started = await asyncio.gather(
        *(
            start_process(f"shard {shard}", fake, tmp_path, "unused", queue, **half(shard), **database)
            for shard in (0, 1)
        ),
        return_exceptions=True,
    )
    processes = [process for process in started if isinstance(process, BotProcess)]
    if len(processes) < len(started):
        for process in processes:
            await process.stop()
        raise next(error for error in started if isinstance(error, BaseException))
    return processes


def gaps(fake: FakeDiscord, bucket: int) -> list[float]:
    """How far apart the accepted IDENTIFYs of ``bucket`` came, in seconds of the fake's clock."""
    moments = [moment for of, moment in fake.identify_starts if of == bucket]
    return [later - earlier for earlier, later in itertools.pairwise(moments)]


async def test_two_processes_starting_together_identify_5_seconds_apart_in_one_bucket(
    fake: FakeDiscord, tmp_path: Path, database: dict[str, object]
) -> None:
    """Shards 0 and 1 of two, ``max_concurrency`` 1: one bucket.  Without pacing across processes both first
    IDENTIFYs go out at once and one is refused (op 9)."""
    assert fake.max_concurrency == 1 and fake.identify_interval == 5.0
    processes = await start_together(fake, tmp_path, database)
    try:
        assert sorted(fake.session_shards(), key=str) == [(0, 2), (1, 2)]
        assert all(process.adapter.healthy() for process in processes)
        assert fake.identify_too_soon == 0
        assert len(fake.identifies) == 2  # each shard identified once: none was refused and tried again
        assert [bucket for bucket, _ in fake.identify_starts] == [0, 0]
        assert all(gap >= 5.0 for gap in gaps(fake, 0))
    finally:
        for process in processes:
            await process.stop()


async def test_shards_of_different_buckets_identify_without_waiting_for_each_other(
    fake: FakeDiscord, tmp_path: Path
) -> None:
    """``max_concurrency`` 2 (read from ``GET /gateway/bot``): shards 0 and 1 are in buckets 0 and 1, and the
    second process does not wait the 5 s."""
    fake.max_concurrency = 2
    processes = await start_together(fake, tmp_path, {})
    try:
        assert fake.identify_too_soon == 0 and len(fake.identifies) == 2
        assert sorted(bucket for bucket, _ in fake.identify_starts) == [0, 1]
        moments = sorted(moment for _, moment in fake.identify_starts)
        assert moments[1] - moments[0] < 4.0
    finally:
        for process in processes:
            await process.stop()


async def test_without_the_database_the_process_still_connects_with_discord_py_s_pacing(
    fake: FakeDiscord, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A booking that fails is one log line; the shard connects all the same."""

    async def unreachable(self: Storage, bucket: int, now: float, interval: float) -> float:
        raise ConnectionRefusedError("the database does not answer")

    monkeypatch.setattr(Storage, "book_identify_slot", unreachable)
    with caplog.at_level(logging.WARNING, logger="bot.discord_app"):
        process = await start_process("alone", fake, tmp_path, "unused", ScriptedQueue(), **half(0))
    try:
        assert fake.session_shards() == [(0, 2)] and fake.identify_too_soon == 0
        failures = [record for record in caplog.records if "could not book an IDENTIFY slot" in record.getMessage()]
        assert len(failures) == 1 and "ConnectionRefusedError" in failures[0].getMessage()
    finally:
        await process.stop()
