"""Delivery within bounds (bot/core/jobs.py): a platform that keeps failing is asked a bounded number of times
over a bounded time, a refusal for good is not asked again, and either way the job ends once as
DELIVERY_FAILED, counted, with a private message to its requester where the platform offers one."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from bot import metrics
from bot.core import ChatCore
from bot.core.platform import DeliveryRefused
from bot.storage import Job, Storage, StoredPicture
from mmpp.errors import ErrorCode
from tests.bot.conftest import RecordingDelivery, ScriptedQueue, bot_settings, order

#: Quick pauses; the bounds each test sets come on top.
QUICK = {"delivery_pause_first_seconds": 0.01, "delivery_pause_max_seconds": 0.02}


@dataclass
class FailingDelivery(RecordingDelivery):
    """Posts nothing: every post of pictures raises ``failure`` (after recording the attempt)."""

    failure: Exception = field(default_factory=lambda: ConnectionError("platform unreachable"))
    attempts: int = 0
    succeed_after: int | None = None  # attempts that fail before the platform is back

    async def post_pictures(self, job: Job, pictures: list[StoredPicture], caption: str, on_posted: Any) -> None:
        self.attempts += 1
        if self.succeed_after is not None and self.attempts > self.succeed_after:
            await super().post_pictures(job, pictures, caption, on_posted)
            return
        raise self.failure


@dataclass
class FailingDeliveryWithDirectMessages(FailingDelivery):
    direct: list[tuple[int, ErrorCode, str]] = field(default_factory=list)

    async def post_direct(self, job: Job, code: ErrorCode, text: str) -> None:
        self.direct.append((job.id, code, text))


def given_up() -> float:
    return metrics.JOBS_FINISHED.labels("failed", ErrorCode.DELIVERY_FAILED.value)._value.get()


@pytest.fixture
async def make_core(storage: Storage, tmp_path: Path) -> AsyncIterator[Any]:
    cores: list[ChatCore] = []

    async def make(delivery: RecordingDelivery, **settings: Any) -> ChatCore:
        core = ChatCore(storage, ScriptedQueue(), bot_settings(tmp_path, **QUICK, **settings))
        core.attach(delivery)
        await core.start()
        cores.append(core)
        return core

    yield make
    for core in cores:
        await core.stop()


async def test_a_platform_that_keeps_failing_is_asked_at_most_delivery_attempts_times(
    make_core: Any, storage: Storage
) -> None:
    delivery = FailingDeliveryWithDirectMessages()
    core = await make_core(delivery, delivery_attempts=3)
    before = given_up()
    job, _ = await core.order_profile(order())
    await core.wait_idle(timeout=10)
    assert delivery.attempts == 3
    final = await storage.job(job.id)
    assert final is not None and final.state == "failed" and final.error_code == "DELIVERY_FAILED"
    assert final.delivered_at is not None and final.error_message
    assert given_up() == before + 1
    assert delivery.direct == [(job.id, ErrorCode.DELIVERY_FAILED, final.error_message)]
    assert delivery.failures == []  # the failure is told once, in private, not posted where posting fails


async def test_no_attempt_starts_later_than_delivery_retry_seconds_after_the_first_failure(
    make_core: Any, storage: Storage
) -> None:
    """A controllable clock, 100 s later at every look: failures are seen at 0, 100, 200 and 300 s; the fourth
    attempt started within the 250 s allowed, a fifth would start past them."""
    delivery = FailingDelivery()
    core = await make_core(delivery, delivery_attempts=1000, delivery_retry_seconds=250)
    ticks = iter(range(0, 10**6, 100))
    core.jobs._monotonic = lambda: float(next(ticks))
    job, _ = await core.order_profile(order())
    await core.wait_idle(timeout=10)
    assert delivery.attempts == 4
    final = await storage.job(job.id)
    assert final is not None and final.error_code == "DELIVERY_FAILED"


async def test_a_refusal_for_good_is_not_asked_again(make_core: Any, storage: Storage) -> None:
    delivery = FailingDeliveryWithDirectMessages(failure=DeliveryRefused("403 Missing Permissions"))
    core = await make_core(delivery, delivery_attempts=8)
    job, _ = await core.order_profile(order())
    await core.wait_idle(timeout=10)
    assert delivery.attempts == 1
    final = await storage.job(job.id)
    assert final is not None and final.error_code == "DELIVERY_FAILED" and len(delivery.direct) == 1


async def test_a_platform_back_within_the_bounds_gets_the_pictures_once(make_core: Any, storage: Storage) -> None:
    delivery = FailingDelivery(succeed_after=2)
    core = await make_core(delivery, delivery_attempts=5)
    before = given_up()
    job, _ = await core.order_profile(order())
    await core.wait_idle(timeout=10)
    final = await storage.job(job.id)
    assert delivery.attempts == 3 and len(delivery.pictures) == 1
    assert final is not None and final.state == "done" and final.error_code is None and final.delivered_at
    assert given_up() == before


async def test_a_job_given_up_is_not_resumed_after_a_restart(make_core: Any, storage: Storage) -> None:
    delivery = FailingDelivery(failure=DeliveryRefused("404 Unknown Channel"))
    core = await make_core(delivery)
    job, _ = await core.order_profile(order())
    await core.wait_idle(timeout=10)
    await core.stop()
    assert job.id not in [undelivered.id for undelivered in await storage.undelivered_jobs(["test"])]
    again = FailingDelivery()
    await make_core(again)
    assert again.attempts == 0
