"""A small Redis with ``noeviction`` under a burst of large photos: nothing is lost, nothing fills the broker.

Each test owns a private ``redis-server`` started with a small ``--maxmemory`` and ``--maxmemory-policy
noeviction`` (what compose runs, only small): a full Redis refuses writes instead of dropping data.  The
real Celery worker (tiny weights) serves it; the bot side is the real core (``ChatCore``) over a real
database with the real Celery client, delivering to a recording platform, so the figures are the broker's
and not a chat platform's.  Without admission control and downscaled selfies the burst below needs several
times the memory this Redis has (every job pushed at once, each with its photo as base64 twice); with them
the broker's memory stays under its limit and every job is delivered once.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from PIL import Image

from bench.soak import large_photo
from bot.core import ChatCore, Person, ProfileOrder
from bot.queue import CeleryJobQueue, broker_message_bytes, make_client
from bot.settings import BotSettings
from bot.storage import Storage
from tests.bot.conftest import RecordingDelivery
from tests.conftest import SAMPLE_SELFIE
from tests.faults.conftest import PrivateRedis, Worker, spawn_worker, unique_queue, wait_until

MAXMEMORY = 8 * 2**20
JOBS = 20


@pytest.fixture
def small_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    server = PrivateRedis(tmp_path / "redis", ("--maxmemory", str(MAXMEMORY), "--maxmemory-policy", "noeviction"))
    server.start()
    yield server
    server.stop()


class MemoryWatch:
    """Samples the server's ``used_memory`` every 20 ms in a thread; Redis's own peak is read at the end too."""

    def __init__(self, server: PrivateRedis) -> None:
        self.client = server.client()
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            with contextlib.suppress(redis.RedisError):
                self.samples.append(int(self.client.info("memory")["used_memory"]))

    def __enter__(self) -> MemoryWatch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def peak(self) -> int:
        return max([*self.samples, int(self.client.info("memory")["used_memory_peak"])])

    def refused_writes(self) -> int:
        """Commands Redis refused for lack of memory (``errorstat_OOM``)."""
        stats = self.client.info("errorstats")
        return int(stats.get("errorstat_OOM", {}).get("count", 0))


def fill(server: PrivateRedis) -> None:
    """A Redis that refuses writes, as one full of another tenant's data does: junk, then a limit below it.

    Filling up to the limit itself is not enough to refuse every write for sure: Redis does not count its
    append-only buffer, so a little room comes and goes as the buffer is flushed.
    """
    client = server.client()
    for index in range(30):
        client.set(f"junk-{index}", b"x" * 100_000)
    client.config_set("maxmemory", "1mb")
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        client.sadd("one-more", "x")


def bot_settings(tmp_path: Path, server: PrivateRedis, queue: str, **overrides: object) -> BotSettings:
    values: dict[str, object] = {
        "redis_url": server.url, "queue": queue, "database": tmp_path / "mmpp.sqlite3",
        "state_dir": tmp_path / "state", "poll_interval_seconds": 0.1, "job_timeout_seconds": 600,
        # What admission control may keep in the broker at once: well inside this Redis's 8 MB.
        "broker_max_jobs": 4, "broker_max_bytes": 3 * 2**20,
        **overrides,
    }  # fmt: skip
    return BotSettings(_env_file=None, **values)


async def test_a_burst_of_large_photos_is_delivered_once_each_and_the_broker_never_fills(
    small_redis: PrivateRedis, tiny_weights: Path, tmp_path: Path, workers: list[Worker]
) -> None:
    server, queue = small_redis, unique_queue()
    photo = large_photo()
    assert len(photo) > 2 * 2**20 and JOBS * broker_message_bytes(len(photo)) > 10 * MAXMEMORY
    worker = spawn_worker(queue, tiny_weights, server.url, tmp_path / "worker.log", MMPP_PREVIEW_EVERY_STEPS="0")
    workers.append(worker)
    settings = bot_settings(tmp_path, server, queue)
    storage = await Storage.open(settings.database)
    client = make_client(settings.redis_url, settings.state_dir)
    core = ChatCore(storage, CeleryJobQueue(client, expires_after=settings.job_timeout_seconds), settings)
    delivery = RecordingDelivery()
    core.attach(delivery)
    await core.start()
    try:
        with MemoryWatch(server) as memory:
            for number in range(JOBS):  # everyone at once, before the worker has even started
                person = Person("test", f"person-{number}")
                await core.order_profile(
                    ProfileOrder(person, f"event-{number}", f"chat-{number}", {}, {"style": "anime"}, photo)
                )
            stored = await storage.selfie(1)
            assert stored is not None and max(Image.open(io.BytesIO(stored)).size) == 1024
            await wait_until(lambda: len(delivery.pictures) + len(delivery.failures) >= JOBS, 240, worker.log_tail())
            await core.wait_idle(timeout=30)
        assert delivery.failures == [], worker.log_tail()
        delivered = sorted(job_id for job_id, _, _ in delivery.pictures)
        assert delivered == list(range(1, JOBS + 1)), "each job delivered exactly once"
        for job_id in delivered:
            job = await storage.job(job_id)
            assert job is not None and job.state == "done" and job.delivered_at
        assert memory.peak() < MAXMEMORY and memory.refused_writes() == 0, (memory.peak(), memory.refused_writes())
        # The results were forgotten once stored: the result backend holds nothing of the delivered jobs.
        await asyncio.sleep(0.5)
        assert list(server.client().scan_iter("celery-task-meta-*")) == []
        assert worker.process.poll() is None
    finally:
        await core.stop()
        await storage.close()
        client.close()


async def test_the_worker_survives_a_full_and_then_an_unreachable_broker_at_start(
    small_redis: PrivateRedis, tiny_weights: Path, tmp_path: Path, workers: list[Worker]
) -> None:
    """Celery used to stop the worker at once ("Unrecoverable error: OutOfMemoryError") when Redis refused a
    write at start: now it waits with growing pauses, says so once per reason, and serves jobs once it can."""
    server, queue = small_redis, unique_queue()
    fill(server)
    worker = spawn_worker(queue, tiny_weights, server.url, tmp_path / "worker.log")
    workers.append(worker)
    refused = "the broker refuses the worker (OutOfMemoryError"
    await wait_until(lambda: refused in worker.log.read_text(errors="replace"), 60, "the refusal logged")
    await asyncio.sleep(6.0)  # several attempts later
    server.kill()  # and now unreachable
    await asyncio.sleep(4.0)
    log = worker.log.read_text(errors="replace")
    assert worker.process.poll() is None, worker.log_tail()
    assert "Unrecoverable error" not in log and "CRITICAL" not in log and "Traceback" not in log, worker.log_tail()
    assert log.count(refused) == 1, worker.log_tail()  # once per reason, not once per attempt
    assert " ready." not in log

    server.start()  # the append-only file brings the junk back: full again
    server.client().flushall()  # room at last
    settings = bot_settings(tmp_path, server, queue)
    storage = await Storage.open(settings.database)
    client = make_client(settings.redis_url, settings.state_dir)
    core = ChatCore(storage, CeleryJobQueue(client), settings)
    delivery = RecordingDelivery()
    core.attach(delivery)
    await core.start()
    try:
        person = Person("test", "alice")
        await core.order_profile(ProfileOrder(person, "e1", "chat", {}, {"style": "anime"}, SAMPLE_SELFIE.read_bytes()))
        await wait_until(lambda: delivery.pictures or delivery.failures, 120, worker.log_tail())
        assert [job_id for job_id, _, _ in delivery.pictures] == [1] and not delivery.failures
        assert worker.process.poll() is None
    finally:
        await core.stop()
        await storage.close()
        client.close()
