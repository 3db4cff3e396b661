"""Admission control (bot/core/admission.py): a bounded number of jobs per queue in the broker, by count and by
bytes, the rest fed oldest first as jobs finish, after a restart too; honest queue positions; a broker that
refuses jobs retried with growing pauses, logged once per change, told to the people waiting.

On the real core and database with a scripted queue; tests/faults/test_broker_full.py does it against a real
worker and a real, small Redis.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from redis.exceptions import OutOfMemoryError

from bot.core import ChatCore, Person
from bot.core.admission import BROKER_RETRY_FIRST_SECONDS, BROKER_RETRY_MAX_SECONDS
from bot.queue import QueueStatus, broker_message_bytes
from bot.storage import Storage
from tests.bot.conftest import SELFIE, RecordingDelivery, ScriptedQueue, bot_settings, order
from tests.faults.conftest import wait_until


@dataclass
class HoldingQueue(ScriptedQueue):
    """A scripted queue whose jobs keep running (PROGRESS) until the test lets them finish."""

    held: set[str] = field(default_factory=set)
    hold_new: bool = True

    async def submit(self, task_id: str, payload: dict, queue: str) -> None:
        await super().submit(task_id, payload, queue)
        if self.hold_new:
            self.held.add(task_id)

    async def status(self, task_id: str) -> QueueStatus:
        if task_id in self.held:
            return QueueStatus("PENDING")
        return await super().status(task_id)


@dataclass
class RefusingQueue(ScriptedQueue):
    """A Redis at its ``maxmemory`` with ``noeviction``: every send refused while ``full``."""

    full: bool = True
    refused: int = 0

    async def submit(self, task_id: str, payload: dict, queue: str) -> None:
        if self.full:
            self.refused += 1
            raise OutOfMemoryError("command not allowed when used memory > 'maxmemory'.")
        await super().submit(task_id, payload, queue)


def person(number: int) -> Person:
    return Person("test", f"person-{number}", f"Person {number}")


async def started_core(storage: Storage, queue: ScriptedQueue, tmp_path: Path, **settings: object) -> ChatCore:
    core = ChatCore(storage, queue, bot_settings(tmp_path, **settings))
    core.attach(RecordingDelivery())
    await core.start()
    return core


def delivery_of(core: ChatCore) -> RecordingDelivery:
    delivery = core.jobs._deliveries["test"]
    assert isinstance(delivery, RecordingDelivery)
    return delivery


async def test_the_broker_holds_at_most_max_jobs_and_the_rest_are_fed_oldest_first(
    storage: Storage, tmp_path: Path
) -> None:
    queue = HoldingQueue()
    core = await started_core(storage, queue, tmp_path, broker_max_jobs=2)
    try:
        jobs = [(await core.order_profile(order(f"e{n}", person(n))))[0] for n in range(5)]
        assert list(queue.submitted) == [jobs[0].task_id, jobs[1].task_id]
        # Honest positions: everyone ahead in the same queue, in the broker or still in the database.
        statuses = dict(delivery_of(core).statuses)
        assert statuses[jobs[4].id].endswith("4 jobs ahead") and statuses[jobs[2].id].endswith("2 jobs ahead")
        assert [(await storage.job(job.id)).admitted_at is None for job in jobs] == [False, False, True, True, True]

        for finished, expected in ((1, 3), (0, 4), (3, 5)):  # any job that finishes frees a place for the oldest
            queue.held.discard(jobs[finished].task_id)
            await wait_until(lambda e=expected: len(queue.submitted) == e, 5, f"{expected} jobs sent")
            assert list(queue.submitted) == [job.task_id for job in jobs[:expected]]
            assert sum(1 for job in jobs if job.task_id in queue.held) == 2  # never more than two in the broker
        queue.held.clear()
        await core.wait_idle(timeout=5)
        assert sorted(job_id for job_id, _, _ in delivery_of(core).pictures) == [job.id for job in jobs]
    finally:
        await core.stop()


async def test_the_byte_limit_admits_the_oldest_whatever_its_size_and_holds_the_younger_back(
    storage: Storage, tmp_path: Path
) -> None:
    one_job = broker_message_bytes(len(SELFIE))
    queue = HoldingQueue()
    core = await started_core(storage, queue, tmp_path, broker_max_jobs=10, broker_max_bytes=one_job + one_job // 2)
    try:
        jobs = [(await core.order_profile(order(f"e{n}", person(n))))[0] for n in range(3)]
        assert list(queue.submitted) == [jobs[0].task_id]
        queue.held.clear()
        queue.hold_new = False
        await core.wait_idle(timeout=5)
        assert list(queue.submitted) == [job.task_id for job in jobs]
    finally:
        await core.stop()
    # A limit below one job's size: still one at a time, never stuck.
    tiny = HoldingQueue(hold_new=False)
    core = await started_core(storage, tiny, tmp_path, broker_max_bytes=1)
    try:
        more = [(await core.order_profile(order(f"f{n}", person(10 + n))))[0] for n in range(2)]
        await core.wait_idle(timeout=5)
        assert list(tiny.submitted) == [job.task_id for job in more]
    finally:
        await core.stop()


async def test_each_queue_has_its_own_places_and_positions(storage: Storage, tmp_path: Path) -> None:
    queue = HoldingQueue()
    core = await started_core(storage, queue, tmp_path, broker_max_jobs=1)
    try:
        fast = [(await core.order_profile(order(f"f{n}", person(n), mode="fast")))[0] for n in range(2)]
        quality, _ = await core.order_profile(order("q", person(7), mode="quality"))
        assert list(queue.submitted) == [fast[0].task_id, quality.task_id]
        assert (
            queue.queues[quality.task_id] == "mmpp.quality" and (await storage.job(quality.id)).queue == "mmpp.quality"
        )
        statuses = dict(delivery_of(core).statuses)
        assert statuses[fast[1].id].endswith("1 job ahead")
        assert statuses[quality.id].endswith("starting soon")  # the fast jobs are not ahead of it
        queue.held.clear()
        queue.hold_new = False
        await core.wait_idle(timeout=5)
    finally:
        await core.stop()


async def test_a_restarted_bot_resumes_feeding_in_order(storage: Storage, tmp_path: Path) -> None:
    held = HoldingQueue()
    first = await started_core(storage, held, tmp_path, broker_max_jobs=1)
    jobs = [(await first.order_profile(order(f"e{n}", person(n))))[0] for n in range(3)]
    await first.stop()  # the bot dies with one job in the broker and two waiting in the database
    assert list(held.submitted) == [jobs[0].task_id]
    # A job that had got its place when the bot died, but was never sent: it is sent first.
    await storage.update_job(jobs[1].id, admitted_at="2026-01-01T00:00:00.000+00:00")

    queue = HoldingQueue(hold_new=False)
    queue.submitted[jobs[0].task_id] = held.submitted[jobs[0].task_id]  # the broker still has the first one
    second = await started_core(storage, queue, tmp_path, broker_max_jobs=1)
    try:
        await second.wait_idle(timeout=5)
        assert list(queue.submitted) == [job.task_id for job in jobs]
        assert sorted(job_id for job_id, _, _ in delivery_of(second).pictures) == [job.id for job in jobs]
    finally:
        await second.stop()


async def test_a_bot_restarted_with_every_job_still_waiting_sends_them_in_order(
    storage: Storage, tmp_path: Path
) -> None:
    full = RefusingQueue()
    first = await started_core(storage, full, tmp_path, broker_max_jobs=2)
    jobs = [(await first.order_profile(order(f"e{n}", person(n))))[0] for n in range(4)]
    await first.stop()  # the broker was full the whole time: nothing was sent
    assert not full.submitted and full.refused >= 1

    queue = ScriptedQueue()
    second = await started_core(storage, queue, tmp_path, broker_max_jobs=2)
    try:
        await second.wait_idle(timeout=5)
        assert list(queue.submitted) == [job.task_id for job in jobs]
    finally:
        await second.stop()


def metric(name: str, labels: dict[str, str] | None = None) -> float:
    value = REGISTRY.get_sample_value(name, labels or {})
    return 0.0 if value is None else value


async def test_a_full_broker_is_retried_with_growing_pauses_logged_once_and_told_to_the_people_waiting(
    storage: Storage, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    queue = RefusingQueue()
    core = ChatCore(storage, queue, bot_settings(tmp_path))
    delivery = RecordingDelivery()
    core.attach(delivery)
    pauses: list[float] = []

    async def recording_sleep(seconds: float) -> None:
        pauses.append(seconds)
        await asyncio.sleep(0.02)

    core.jobs.admission.sleep = recording_sleep
    refusals_before = metric("mmpp_bot_broker_refusals_total", {"kind": "full"})
    await core.start()
    try:
        first, _ = await core.order_profile(order("e1", person(1)))
        second, _ = await core.order_profile(order("e2", person(2)))
        await wait_until(lambda: len(pauses) >= 9, 10, "nine paced attempts")
        first_pauses = pauses[:9]
        expected = [BROKER_RETRY_FIRST_SECONDS * 2**n for n in range(7)]
        assert first_pauses == [min(pause, BROKER_RETRY_MAX_SECONDS) for pause in expected] + [30.0, 30.0]
        # Only the oldest job is tried while the broker refuses: one attempt per pause, not one per job.
        assert queue.refused <= len(pauses) + 2
        # Told to the people waiting: the second job's status says so from the start, the first one's soon.
        busy = "We are busy right now: your job is queued and keeps its place"
        assert busy in dict(delivery.statuses)[second.id]
        await wait_until(lambda: any(busy in text for job_id, text in delivery.edits if job_id == first.id), 5, "busy")
        assert metric("mmpp_bot_broker_accepting") == 0.0
        assert metric("mmpp_bot_broker_refusals_total", {"kind": "full"}) - refusals_before == queue.refused
        assert core.jobs.admission.refusal is not None and "full" in core.jobs.admission.refusal

        queue.full = False
        await core.wait_idle(timeout=60)
        assert list(queue.submitted) == [first.task_id, second.task_id]
        assert sorted(job_id for job_id, _, _ in delivery.pictures) == [first.id, second.id]
        assert metric("mmpp_bot_broker_accepting") == 1.0 and core.jobs.admission.refusal is None
    finally:
        await core.stop()
    # Logged once per change of state, without a traceback: refused (with the reason), then taken again.
    lines = [record for record in caplog.records if record.name == "bot.core.admission"]
    assert len(lines) == 2 and all(record.exc_info is None for record in lines)
    assert (
        lines[0]
        .getMessage()
        .startswith("enqueueing job 1 failed: the broker is full and refuses writes (OutOfMemoryError")
    )
    assert lines[1].getMessage().startswith("the broker takes jobs again, after ")
    assert not [record for record in caplog.records if record.exc_info]


async def test_a_job_whose_turn_never_comes_times_out_once(storage: Storage, tmp_path: Path) -> None:
    queue = RefusingQueue()
    core = await started_core(storage, queue, tmp_path, job_timeout_seconds=0.3)

    async def quick(seconds: float) -> None:
        await asyncio.sleep(0.01)

    core.jobs.admission.sleep = quick
    try:
        job, _ = await core.order_profile(order())
        await core.wait_idle(timeout=10)
        failures = delivery_of(core).failures
        assert [(job_id, code.value) for job_id, code, _ in failures] == [(job.id, "TIMEOUT")]
        assert await storage.count("selfies") == 0 and not queue.submitted
    finally:
        await core.stop()


async def test_a_damaged_job_fails_on_its_own_instead_of_holding_up_its_queue(
    storage: Storage, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    user_id = await storage.ensure_user("test", "mallory")
    damaged, _ = await storage.create_job(
        task_id="damaged", user_id=user_id, platform="test", event_key="d", chat_id="c", style="anime", prompt="",
        mode="turbo", picture_count=1, seed=None, selfie=SELFIE, reply_context={}, queue="mmpp.fast",
    )  # fmt: skip
    queue = ScriptedQueue()
    core = await started_core(storage, queue, tmp_path, broker_max_jobs=1)
    try:
        good, _ = await core.order_profile(order("e1", person(1)))
        await core.wait_idle(timeout=5)
        failures = delivery_of(core).failures
        assert [(job_id, code.value) for job_id, code, _ in failures] == [(damaged.id, "INTERNAL")]
        assert list(queue.submitted) == [good.task_id] and core.jobs.admission.refusal is None
    finally:
        await core.stop()


@dataclass
class FlappingQueue(ScriptedQueue):
    """A Redis right at its limit: every other send is refused, the next one taken."""

    sends: int = 0

    async def submit(self, task_id: str, payload: dict, queue: str) -> None:
        self.sends += 1
        if self.sends % 2:
            raise OutOfMemoryError("command not allowed when used memory > 'maxmemory'.")
        await super().submit(task_id, payload, queue)


async def test_a_broker_flapping_at_its_limit_does_not_write_two_lines_per_job(
    storage: Storage, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    queue = FlappingQueue()
    core = await started_core(storage, queue, tmp_path, broker_max_jobs=1)

    async def quick(seconds: float) -> None:
        await asyncio.sleep(0.005)

    core.jobs.admission.sleep = quick
    try:
        jobs = [(await core.order_profile(order(f"e{n}", person(n))))[0] for n in range(10)]
        await core.wait_idle(timeout=30)
        assert list(queue.submitted) == [job.task_id for job in jobs] and queue.sends >= 19
    finally:
        await core.stop()
    lines = [record.getMessage() for record in caplog.records if record.name == "bot.core.admission"]
    assert len(lines) == 2, lines  # the first refusal and the first recovery; the others are counted
    assert lines[0].startswith("enqueueing job 1 failed") and lines[1].startswith("the broker takes jobs again")
