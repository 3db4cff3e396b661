"""The running bot deletes selfies past their retention: once at start, then every period, on a clock turned by hand.

The real ChatCore and Jobs over a real database, started as ``bot.app.serve``
starts them (``core.start()``); the clock and the housekeeping's sleep are the
ones a test turns (``ChatCore(clock=..., sleep=...)``), so the schedule is
checked without waiting ten minutes and without patching asyncio.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bot.core import ChatCore
from bot.core.jobs import SELFIE_PURGE_INTERVAL_SECONDS
from bot.queue import QueueStatus
from bot.storage import Storage
from tests.bot.conftest import RecordingDelivery, ScriptedQueue, bot_settings, order

PERIOD = timedelta(seconds=SELFIE_PURGE_INTERVAL_SECONDS)
#: Selfies are kept a quarter of an hour after their job here: one and a half periods.
RETENTION = timedelta(minutes=15)


class HandTurnedClock:
    """The core's clock and its sleep: time moves only when the test says, and sleepers wake when it has."""

    def __init__(self, now: datetime) -> None:
        self.now = now
        self.requested: list[float] = []
        self._sleepers: list[tuple[datetime, asyncio.Future[None]]] = []

    def __call__(self) -> datetime:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.requested.append(seconds)
        sleeper = (self.now + timedelta(seconds=seconds), asyncio.get_running_loop().create_future())
        self._sleepers.append(sleeper)
        try:
            await sleeper[1]
        finally:  # woken, or cancelled with its core
            if sleeper in self._sleepers:
                self._sleepers.remove(sleeper)

    def advance(self, by: timedelta) -> None:
        self.now += by
        for deadline, wake in list(self._sleepers):
            if deadline <= self.now:
                self._sleepers.remove((deadline, wake))
                wake.set_result(None)

    async def until_asleep(self, timeout: float = 5.0) -> None:
        """Until something sleeps on this clock again (the housekeeping has finished its round)."""
        async with asyncio.timeout(timeout):
            while not self._sleepers:
                await asyncio.sleep(0.005)


#: The prompt of the jobs that never end.
HELD = "held"


class HoldingQueue(ScriptedQueue):
    """Finishes every job at once but those whose prompt is :data:`HELD`: they stay pending for ever."""

    def __init__(self) -> None:
        super().__init__(progress_polls=1)

    async def status(self, task_id: str) -> QueueStatus:
        held = self.submitted.get(task_id, {}).get("prompt") == HELD
        return QueueStatus("PENDING") if held else await super().status(task_id)


async def delivered(storage: Storage, job_id: int, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while (job := await storage.job(job_id)) is None or job.delivered_at is None:
            await asyncio.sleep(0.01)


async def kept(storage: Storage, job_id: int) -> bool:
    return await storage.count("selfies", "job_id = ?", (job_id,)) == 1


async def test_the_running_core_purges_at_start_and_after_every_period(storage: Storage, tmp_path: Path) -> None:
    start = datetime.now(UTC).replace(microsecond=0)
    clock = HandTurnedClock(start)
    # The job timeout runs on this clock too: C must not time out while the test turns it for an hour.
    settings = bot_settings(tmp_path, selfie_retention_hours=RETENTION / timedelta(hours=1), job_timeout_seconds=86400)
    queue = HoldingQueue()

    # A first run of the bot: job A ends at 0:00, job B at 0:10 (kept to 0:15 and 0:25); C never ends.
    first = ChatCore(storage, queue, settings, clock=clock, sleep=clock.sleep)
    first.attach(RecordingDelivery())
    await first.start()
    job_a, _ = await first.order_profile(order("a"))
    await first.wait_idle(timeout=5)
    clock.advance(timedelta(minutes=10))
    job_b, _ = await first.order_profile(order("b"))
    await first.wait_idle(timeout=5)
    job_c, _ = await first.order_profile(order("c", prompt=HELD))
    await first.stop()
    assert [await kept(storage, job.id) for job in (job_a, job_b, job_c)] == [True, True, True]

    # The bot is down until 0:16; at start A is past its retention, B is not, C's job is still running.
    clock.advance(timedelta(minutes=6))
    clock.requested.clear()
    core = ChatCore(storage, queue, settings, clock=clock, sleep=clock.sleep)
    core.attach(RecordingDelivery())
    await core.start()
    try:
        assert [await kept(storage, job.id) for job in (job_a, job_b, job_c)] == [False, True, True]
        await clock.until_asleep()
        assert clock.requested == [SELFIE_PURGE_INTERVAL_SECONDS]
        # 0:26: one period later B is past its retention.  Job D ends now, kept to 0:41.
        clock.advance(PERIOD)
        await clock.until_asleep()
        assert [await kept(storage, job.id) for job in (job_b, job_c)] == [False, True]
        job_d, _ = await core.order_profile(order("d"))
        await delivered(storage, job_d.id)  # (the core still follows C: wait_idle would wait for ever)
        # 0:36: D is kept; 0:46: D is gone.  C's selfie has no deadline while its job runs: always kept.
        clock.advance(PERIOD)
        await clock.until_asleep()
        assert await kept(storage, job_d.id) and await kept(storage, job_c.id)
        clock.advance(PERIOD)
        await clock.until_asleep()
        assert not await kept(storage, job_d.id) and await kept(storage, job_c.id)
        assert clock.requested == [SELFIE_PURGE_INTERVAL_SECONDS] * 4
    finally:
        await core.stop()
