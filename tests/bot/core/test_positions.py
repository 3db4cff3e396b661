"""Queue positions (bot/core/positions.py): every waiting job's place in line from one shared read, exact
for each job, read again when a new job comes, when this process finishes one and when it is a second old."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

from bot.core.positions import QueuePositions
from bot.storage import Job, Storage, UnfinishedJobs
from tests.bot.conftest import order
from tests.bot.core.test_admission import HoldingQueue, delivery_of, person, started_core
from tests.faults.conftest import wait_until


class CountingStorage:
    """The one query QueuePositions makes, counted, over a real database."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.reads = 0

    async def unfinished_jobs(self) -> UnfinishedJobs:
        self.reads += 1
        await asyncio.sleep(0.01)  # followers asking meanwhile must wait for this read, not start their own
        return await self.storage.unfinished_jobs()


async def make_jobs(storage: Storage, queues: list[str]) -> list[Job]:
    user = await storage.ensure_user("test", "1")
    jobs = []
    for number, queue in enumerate(queues):
        job, _ = await storage.create_job(
            task_id=f"task-{number}", user_id=user, platform="test", event_key=f"event-{number}", chat_id="chat",
            style="anime", prompt="", mode="fast", picture_count=1, seed=number, selfie=b"selfie", reply_context={},
            queue=queue, variant="base",
        )  # fmt: skip
        jobs.append(job)
    return jobs


async def test_each_job_s_place_is_the_older_unfinished_jobs_of_its_own_queue(storage: Storage) -> None:
    jobs = await make_jobs(storage, ["mmpp.fast", "mmpp.quality", "mmpp.fast", "mmpp.fast", "mmpp.quality"])
    await storage.update_job(jobs[0].id, state="done")
    await storage.update_job(jobs[2].id, state="running")
    clock = [0.0]
    positions = QueuePositions(storage, lambda: clock[0], fresh_seconds=1.0)
    assert [await positions.ahead(job) for job in jobs[1:]] == [0, 0, 1, 1]


async def test_followers_asking_together_share_one_read(storage: Storage) -> None:
    jobs = await make_jobs(storage, ["mmpp.fast"] * 40)
    counting = CountingStorage(storage)
    clock = [0.0]
    positions = QueuePositions(counting, lambda: clock[0], fresh_seconds=1.0)  # type: ignore[arg-type]
    assert await asyncio.gather(*(positions.ahead(job) for job in jobs)) == list(range(40))
    assert counting.reads == 1
    clock[0] = 0.9
    assert await positions.ahead(jobs[-1]) == 39 and counting.reads == 1  # still fresh: no read


async def test_a_new_job_a_finished_one_and_age_each_read_the_queue_again(storage: Storage) -> None:
    first, second = await make_jobs(storage, ["mmpp.fast"] * 2)
    counting = CountingStorage(storage)
    clock = [0.0]
    positions = QueuePositions(counting, lambda: clock[0], fresh_seconds=1.0)  # type: ignore[arg-type]
    assert await positions.ahead(second) == 1 and counting.reads == 1
    # A job newer than the snapshot: without a new read it would be shown with only the jobs the snapshot knew.
    (third,) = await make_jobs_after(storage, 1)
    assert await positions.ahead(third) == 2 and counting.reads == 2
    # This process finished the first job: the people behind it move up at once.
    await storage.update_job(first.id, state="done")
    positions.forget()
    assert await positions.ahead(third) == 1 and counting.reads == 3
    # Another process finished the second: seen once the snapshot is older than a second.
    await storage.update_job(second.id, state="done")
    assert await positions.ahead(third) == 1 and counting.reads == 3
    clock[0] = 1.5
    assert await positions.ahead(third) == 0 and counting.reads == 4


async def make_jobs_after(storage: Storage, count: int) -> list[Job]:
    user = await storage.ensure_user("test", "2")
    jobs = []
    for number in range(count):
        job, _ = await storage.create_job(
            task_id=f"later-{number}", user_id=user, platform="test", event_key=f"later-{number}", chat_id="chat",
            style="anime", prompt="", mode="fast", picture_count=1, seed=number, selfie=b"selfie", reply_context={},
            queue="mmpp.fast", variant="base",
        )  # fmt: skip
        jobs.append(job)
    return jobs


async def test_the_core_s_waiting_jobs_show_their_places_from_one_read_a_second(
    storage: Storage, tmp_path: Path
) -> None:
    """Through the real core: 20 people behind a broker that holds one job; while they wait (each status
    refreshed about once a second), their places are read about once a second in all, not once per person."""
    queue = HoldingQueue()
    core = await started_core(storage, queue, tmp_path, broker_max_jobs=1)
    try:
        jobs = [(await core.order_profile(order(f"e{n}", person(n))))[0] for n in range(20)]
        statuses = dict(delivery_of(core).statuses)
        assert [statuses[job.id].rsplit(", ", 1)[-1] for job in jobs[1:4]] == [
            "1 job ahead", "2 jobs ahead", "3 jobs ahead"
        ]  # fmt: skip
        reads = 0
        row_reads: list[int] = []
        read, read_row = storage.unfinished_jobs, storage.job

        async def counted() -> UnfinishedJobs:
            nonlocal reads
            reads += 1
            return await read()

        async def counted_row(job_id: int) -> Job | None:
            row_reads.append(job_id)
            return await read_row(job_id)

        storage.unfinished_jobs = counted  # type: ignore[method-assign]
        storage.job = counted_row  # type: ignore[method-assign]
        await asyncio.sleep(3.2)
        assert 1 <= reads <= 5, f"{reads} reads of the queue in 3.2 s for 19 waiting jobs"
        # Nor does a waiting job read its own row while the snapshot lists it as waiting (it was 57 reads).
        # (A follower that started just now reads its row once, to begin with; the running job polls its row.)
        waiting_reads = Counter(job_id for job_id in row_reads if job_id != jobs[0].id)
        assert max(waiting_reads.values(), default=0) <= 1, f"row reads in 3.2 s of 19 waiting jobs: {waiting_reads}"
        # The first job finishes: the next one is sent and everyone behind it moves up.
        queue.held.discard(jobs[0].task_id)
        await wait_until(lambda: len(queue.submitted) == 2, 5, "the second job sent")
        await wait_until(
            lambda: dict(delivery_of(core).edits).get(jobs[5].id, "").endswith("4 jobs ahead") or None, 5, "a move up"
        )
    finally:
        queue.held.clear()
        await core.stop()


async def test_a_waiting_job_sent_or_deleted_elsewhere_is_seen_from_the_shared_snapshot(
    storage: Storage, tmp_path: Path
) -> None:
    """Another process's feeder may send a job this process follows, and /forget may delete one: neither is
    announced here, so the follower learns it from the shared read within about a second and reads the row."""
    queue = HoldingQueue()
    core = await started_core(storage, queue, tmp_path, broker_max_jobs=1)
    try:
        first, sent_elsewhere, forgotten = [(await core.order_profile(order(f"e{n}", person(n))))[0] for n in range(3)]
        assert list(queue.submitted) == [first.task_id]
        # As another process's feeder does: the job gets its place and is sent (here: to the same queue).
        await storage.update_job(sent_elsewhere.id, enqueued_at="2026-12-04T00:00:00+00:00", admitted_at="x")
        payload = dict(queue.submitted[first.task_id], job_id=str(sent_elsewhere.id))
        await queue.submit(sent_elsewhere.task_id, payload, "mmpp.fast")
        queue.held.discard(sent_elsewhere.task_id)  # its worker paints it at once
        delivered = lambda: any(job_id == sent_elsewhere.id for job_id, _, _ in delivery_of(core).pictures) or None  # noqa: E731
        await wait_until(delivered, 5, "the job sent elsewhere followed to its delivery")
        # Deleted by another process's /forget while waiting: its follower stops within about a second.
        assert forgotten.id in core.jobs._followers
        await storage.forget_user(forgotten.user_id)
        await wait_until(lambda: forgotten.id not in core.jobs._followers or None, 5, "the follower stopping")
    finally:
        queue.held.clear()
        await core.stop()
