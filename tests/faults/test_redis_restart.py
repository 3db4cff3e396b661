"""Redis restarted under a running bot and worker: no job is lost, both sides reconnect by themselves.

Each test owns a private append-only ``redis-server`` (as docker-compose runs it), so a restart keeps what
was queued; the shared Redis on 6379 is never touched.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from bot.storage import Job
from tests.conftest import SAMPLE_SELFIE
from tests.fakes.telegram_api import FakeTelegram
from tests.faults.conftest import (
    ALICE,
    BOB,
    PrivateRedis,
    TelegramBot,
    Worker,
    replies_in,
    spawn_worker,
    telegram_bot,
    unique_queue,
    wait_for_job,
    wait_for_progress,
    wait_until,
)

QUICK_JOB = "anime"  # fast mode, one picture
LONG_JOB = "headshot mode:quality count:4"  # 100 denoising steps: time to restart Redis in the middle


def logged(caplog: pytest.LogCaptureFixture, text: str) -> bool:
    return any(text in record.getMessage() for record in caplog.records)


async def alice_answered_once(fake: FakeTelegram, bot: TelegramBot, worker: Worker) -> Job:
    """Alice's job 1 gets exactly one reply, with its pictures, and ends done and delivered."""
    await wait_until(lambda: replies_in(fake, ALICE.id), 120, f"a reply\n{worker.log_tail()}")
    await bot.core.wait_idle(timeout=30)
    await asyncio.sleep(1.0)
    assert replies_in(fake, ALICE.id) == ["pictures"], worker.log_tail()
    job = await bot.storage.job(1)
    assert job is not None and job.state == "done" and job.delivered_at
    return job


async def test_redis_restarted_while_the_job_waits_in_the_queue(
    fake_telegram: FakeTelegram, private_redis: PrivateRedis, tiny_weights: Path, tmp_path: Path,
    workers: list[Worker], caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    """SHUTDOWN + restart while the job sits in the queue and no worker has it: the append-only file keeps the
    message, the bot's result polling recovers on its own, and a worker started afterwards answers once."""
    caplog.set_level(logging.WARNING, logger="bot.core.jobs")
    fake, server, queue = fake_telegram, private_redis, unique_queue()
    async with telegram_bot(fake, tmp_path, redis_url=server.url, queue=queue) as bot:
        await fake.send_photo(None, ALICE, SAMPLE_SELFIE.read_bytes(), caption=QUICK_JOB)
        await wait_for_job(bot.storage, 1, lambda job: job.enqueued_at)
        assert server.queue_length(queue) == 1

        server.shutdown()
        await wait_until(lambda: logged(caplog, "result backend unreachable"), 10, "the bot to notice")
        server.start()
        assert server.queue_length(queue) == 1, "the queued job did not survive the restart"

        worker = spawn_worker(queue, tiny_weights, server.url, tmp_path / "worker.log")
        workers.append(worker)
        await alice_answered_once(fake, bot, worker)
    await wait_until(lambda: server.unacked() == 0 and server.queue_length(queue) == 0, 10, "an empty broker")


async def test_redis_down_when_the_bot_enqueues_and_an_idle_worker_waits(
    fake_telegram: FakeTelegram, private_redis: PrivateRedis, tiny_weights: Path, tmp_path: Path,
    workers: list[Worker], caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    """Redis SIGKILLed under an idle worker, then a photo arrives: the bot keeps the job, re-sends it once
    Redis is back, and the worker reconnects and answers once."""
    caplog.set_level(logging.WARNING, logger="bot.core.jobs")
    fake, server, queue = fake_telegram, private_redis, unique_queue()
    worker = spawn_worker(queue, tiny_weights, server.url, tmp_path / "worker.log")
    workers.append(worker)
    await asyncio.to_thread(worker.wait_ready)
    async with telegram_bot(fake, tmp_path, redis_url=server.url, queue=queue) as bot:
        server.kill()
        await fake.send_photo(None, ALICE, SAMPLE_SELFIE.read_bytes(), caption=QUICK_JOB)
        await wait_until(lambda: logged(caplog, "enqueueing job 1 failed"), 30, "the failed enqueue")
        job = await bot.storage.job(1)
        assert job is not None and job.enqueued_at is None and job.state == "queued"
        await asyncio.sleep(1.0)
        server.start()

        job = await alice_answered_once(fake, bot, worker)
        assert worker.log.read_text().count(f"[{job.task_id}] received") == 1, "the job was sent more than once"
    assert worker.process.poll() is None
    await wait_until(lambda: server.unacked() == 0 and server.queue_length(queue) == 0, 10, "an empty broker")


async def test_redis_killed_and_restarted_mid_job_with_another_job_queued(
    fake_telegram: FakeTelegram, private_redis: PrivateRedis, tiny_weights: Path, tmp_path: Path,
    workers: list[Worker],
) -> None:  # fmt: skip
    """SIGKILL Redis while one job runs and a second waits, restart it 3 s later: both people get their pictures
    once; the worker's consumer and result writes and the bot's polling all reconnect by themselves."""
    fake, server, queue = fake_telegram, private_redis, unique_queue()
    worker = spawn_worker(queue, tiny_weights, server.url, tmp_path / "worker.log")
    workers.append(worker)
    async with telegram_bot(fake, tmp_path, redis_url=server.url, queue=queue) as bot:
        await fake.send_photo(None, ALICE, SAMPLE_SELFIE.read_bytes(), caption=LONG_JOB)
        running = await wait_for_job(bot.storage, 1, lambda job: job.enqueued_at)
        await wait_for_progress(server, running.task_id)
        await fake.send_photo(None, BOB, SAMPLE_SELFIE.read_bytes(), caption=QUICK_JOB)
        await wait_for_job(bot.storage, 2, lambda job: job.enqueued_at)
        assert server.queue_length(queue) == 1 and server.unacked() == 1

        server.kill()
        await asyncio.sleep(3.0)
        server.start()

        for person in (ALICE, BOB):
            await wait_until(lambda p=person: replies_in(fake, p.id), 150, f"a reply to {person.first_name}")
        await bot.core.wait_idle(timeout=30)
        await asyncio.sleep(1.0)
        assert replies_in(fake, ALICE.id) == ["pictures"], worker.log_tail()
        assert replies_in(fake, BOB.id) == ["pictures"], worker.log_tail()
        for job_id in (1, 2):
            job = await bot.storage.job(job_id)
            assert job is not None and job.state == "done" and job.delivered_at
    assert worker.process.poll() is None
    await wait_until(lambda: server.unacked() == 0 and server.queue_length(queue) == 0, 10, "an empty broker")
