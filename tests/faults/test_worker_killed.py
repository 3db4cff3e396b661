"""A worker SIGKILLed mid-job: the job runs again and the person gets exactly one reply.

Driven through the real chat path: FakeTelegram → python-telegram-bot → ChatCore → Celery on a private
Redis → a real prefork worker (tiny weights) → back to the chat.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

from kombu.transport.redis import Channel

from bot.settings import BotSettings
from engine.celery_app import make_celery
from engine.settings import EngineSettings
from tests.conftest import REDIS_URL, SAMPLE_SELFIE
from tests.fakes.telegram_api import FakeTelegram
from tests.faults.conftest import (
    ALICE,
    PrivateRedis,
    Worker,
    replies_in,
    spawn_worker,
    telegram_bot,
    unique_queue,
    wait_for_job,
    wait_for_progress,
    wait_until,
)

#: 4 pictures x 25 quality steps: long enough to be killed in the middle, a few seconds on a tiny model.
LONG_JOB = "headshot mode:quality count:4"
#: 1 picture x 25 steps, for the test whose time limits must stay short.
SHORT_JOB = "headshot mode:quality"

#: The smallest limits that held: SHORT_JOB runs in about 1.5-2.5 s in a one-thread worker (see spawn_worker), even
#: with other processes busy on the 2 vCPUs, and the first run after a worker start is a little slower; the soft
#: limit leaves 4x headroom. soft < hard < visibility, as make_celery insists.
SHORT_LIMITS = {
    "MMPP_TASK_SOFT_TIME_LIMIT": "10",
    "MMPP_TASK_HARD_TIME_LIMIT": "12",
    "MMPP_BROKER_VISIBILITY_TIMEOUT": "14",
}


def replacement_killed(worker: Worker) -> bool:
    """Celery kills a new pool process that does not report for work within ``worker_proc_alive_timeout``."""
    return "Timed out waiting for UP message" in worker.log.read_text(errors="replace")


async def test_a_killed_pool_process_requeues_the_job_and_the_user_gets_one_reply(
    fake_telegram: FakeTelegram, private_redis: PrivateRedis, tiny_weights: Path, tmp_path: Path,
    workers: list[Worker],
) -> None:  # fmt: skip
    """SIGKILL of the pool child running the job: with acks_late + reject_on_worker_lost the main process
    requeues the message at once, a fresh pool child runs the job again, and one album reaches the chat."""
    fake, server, queue = fake_telegram, private_redis, unique_queue()
    worker = spawn_worker(queue, tiny_weights, server.url, tmp_path / "worker.log")
    workers.append(worker)
    async with telegram_bot(fake, tmp_path, redis_url=server.url, queue=queue) as bot:
        await fake.send_photo(None, ALICE, SAMPLE_SELFIE.read_bytes(), caption=LONG_JOB)
        job = await wait_for_job(bot.storage, 1, lambda job: job.enqueued_at)
        await wait_for_progress(server, job.task_id)
        child = worker.pool_child()
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
        meta = server.task_meta(job.task_id)
        assert meta is not None and meta["status"] == "PROGRESS", "the job was not mid-way when its process died"

        await wait_until(lambda: replies_in(fake, ALICE.id) or replacement_killed(worker), 180, "a reply")
        assert not replacement_killed(worker), (
            f"the pool process replacing the dead one was killed\n{worker.log_tail()}"
        )
        await bot.core.wait_idle(timeout=30)
        await asyncio.sleep(1.0)  # room for a duplicate to show up
        assert replies_in(fake, ALICE.id) == ["pictures"], worker.log_tail()
        album = fake.calls("sendMediaGroup")
        assert len(album) == 1 and len(album[0].result) == 4
        job = await bot.storage.job(job.id)
        assert job is not None and job.state == "done" and job.delivered_at
        assert await bot.storage.count("pictures") == 4

    assert worker.process.poll() is None, "the worker's main process should survive the loss of a pool process"
    assert worker.pool_child().pid != child.pid
    assert "WorkerLostError" in worker.log.read_text(errors="replace")
    # The requeued copy was acknowledged: nothing is left to run a third time.
    await wait_until(lambda: server.unacked() == 0 and server.queue_length(queue) == 0, 10, "an empty broker")


async def test_a_killed_worker_s_job_runs_on_the_next_worker_after_the_visibility_timeout(
    fake_telegram: FakeTelegram, private_redis: PrivateRedis, tiny_weights: Path, tmp_path: Path,
    workers: list[Worker],
) -> None:  # fmt: skip
    """SIGKILL of the whole worker (main process and pool): nobody is left to requeue, the message stays
    unacknowledged in Redis, and the next worker takes it back once the broker visibility timeout has passed.

    kombu sweeps for expired unacknowledged messages when a worker's consumer starts and then only every
    ``unacked_restore_interval`` x ``unacked_restore_throttle`` seconds (10 x 10 by default), so the new
    worker is started once the message has become visible; started earlier, it would find it ~100 s later.
    """
    fake, server, queue = fake_telegram, private_redis, unique_queue()
    visibility = float(SHORT_LIMITS["MMPP_BROKER_VISIBILITY_TIMEOUT"])
    first = spawn_worker(queue, tiny_weights, server.url, tmp_path / "worker-1.log", **SHORT_LIMITS)
    workers.append(first)
    async with telegram_bot(fake, tmp_path, redis_url=server.url, queue=queue) as bot:
        await fake.send_photo(None, ALICE, SAMPLE_SELFIE.read_bytes(), caption=SHORT_JOB)
        job = await wait_for_job(bot.storage, 1, lambda job: job.enqueued_at)
        await wait_for_progress(server, job.task_id)
        first.kill_everything()
        meta = server.task_meta(job.task_id)
        assert meta is not None and meta["status"] == "PROGRESS", "the job was not mid-way when the worker died"
        # The message waits in Redis exactly once: in 'unacked' until the visibility timeout has passed, or
        # already back in the queue when a slow machine took longer than that to reach this line (the dead
        # worker's own last sweep may have restored it).
        assert server.unacked() + server.queue_length(queue) == 1, "the message should wait in Redis, once"
        for delivered_at in server.unacked_since():
            await asyncio.sleep(max(0.0, delivered_at + visibility + 0.5 - time.time()))
        assert not replies_in(fake, ALICE.id)
        second = spawn_worker(queue, tiny_weights, server.url, tmp_path / "worker-2.log", **SHORT_LIMITS)
        workers.append(second)

        await wait_until(lambda: replies_in(fake, ALICE.id), 120, f"a reply\n{second.log_tail()}")
        await bot.core.wait_idle(timeout=30)
        await asyncio.sleep(1.0)
        assert replies_in(fake, ALICE.id) == ["pictures"], second.log_tail()
        assert len(fake.calls("sendPhoto")) == 1
        job = await bot.storage.job(job.id)
        assert job is not None and job.state == "done" and job.delivered_at
    await wait_until(lambda: server.unacked() == 0 and server.queue_length(queue) == 0, 10, "an empty broker")


def test_the_bot_waits_for_a_dead_worker_s_job_to_come_back() -> None:
    """With the shipped defaults, the redelivery of a whole-worker crash must land before the bot gives up."""
    engine = EngineSettings(_env_file=None, redis_url=REDIS_URL)
    options = make_celery(engine).conf.broker_transport_options or {}
    sweep = options.get("unacked_restore_interval", Channel.unacked_restore_interval) * options.get(
        "unacked_restore_throttle", Channel.unacked_restore_throttle
    )
    worst_redelivery = engine.broker_visibility_timeout + sweep + engine.task_hard_time_limit
    assert BotSettings(_env_file=None).job_timeout_seconds > worst_redelivery
