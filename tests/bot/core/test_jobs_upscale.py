"""Upscales in the job lifecycle (bot/core/jobs.py): one delivered picture painted again at twice its size, as a
job like any other, on a real SQLite database and a scripted queue that answers as the worker does."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from bot.core import ChatCore
from bot.queue import QueueStatus
from bot.storage import Storage
from mmpp.contract import GenerateRequest, GenerateResult, Picture, png_size
from mmpp.errors import ErrorCode, MmppError
from tests.bot.conftest import ALICE, BOB, RecordingDelivery, ScriptedQueue, bot_settings, order


def png(size: tuple[int, int], shade: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (shade, 60, 90)).save(buffer, "PNG")
    return buffer.getvalue()


@dataclass
class WorkerLikeQueue(ScriptedQueue):
    """Pictures of a worker's sizes: 64 pixels a side, and an upscale's exactly twice its source."""

    async def status(self, task_id: str) -> QueueStatus:
        if task_id not in self.submitted:
            return QueueStatus("PENDING")
        request = GenerateRequest.from_payload(self.submitted[task_id])
        request.validate()  # what the worker checks first
        seed = request.seed or 0
        if request.upscale_source is not None:
            width, height = png_size(request.upscale_source)
            pictures = [Picture(png=png((2 * width, 2 * height), 200), seed=seed)]
        else:
            pictures = [Picture(png=png((64, 64), 10 * index), seed=seed + index) for index in range(request.count)]
        mode = "quality" if request.upscale_source is not None else "fast"
        return QueueStatus(
            "SUCCESS", result=GenerateResult(pictures=pictures, style=request.style, mode=mode).to_payload()
        )


@pytest.fixture
def queue() -> ScriptedQueue:
    return WorkerLikeQueue()


async def delivered_picture(core: ChatCore, storage: Storage, event: str = "event-1", **options: str):
    job, _ = await core.order_profile(order(event, seed="21", count="2", **options))
    await core.wait_idle(timeout=5)
    return job, (await storage.pictures(job.id))[1]


async def test_an_upscale_is_a_quality_job_from_the_picture_delivered_and_rated(
    core: ChatCore, storage: Storage, queue: ScriptedQueue, delivery: RecordingDelivery
) -> None:
    original, picture = await delivered_picture(core, storage, prompt="a pirate")
    job, created = await core.upscale(ALICE, picture.id, "chat-1", {"channel": "chat-1"})
    await core.wait_idle(timeout=5)
    assert created and job.is_upscale and job.upscale_of_picture_id == picture.id
    assert queue.queues[job.task_id] == "mmpp.quality"
    request = GenerateRequest.from_payload(queue.submitted[job.task_id])
    assert request.upscale_source == picture.png and request.selfie == b""
    assert (request.style, request.prompt, request.seed, request.count) == ("anime", "a pirate", 22, 1)
    assert request.variant == original.variant
    final = await storage.job(job.id)
    assert final is not None and final.state == "done" and final.delivered_at is not None
    assert final.parent_job_id == original.id
    (upscaled,) = await storage.pictures(job.id)
    assert Image.open(io.BytesIO(upscaled.png)).size == (128, 128)
    job_id, posted, caption = delivery.pictures[-1]
    assert job_id == job.id and [item.id for item in posted] == [upscaled.id]
    assert f"2× upscale of job {original.id}" in caption
    assert await storage.selfie(job.id) is None  # its copy of the picture went with the job
    assert any("2× upscale" in text for seen, text in delivery.statuses if seen == job.id)
    await core.rate(ALICE, upscaled.id, 5, "button")
    alice = await storage.find_user("test", "alice")
    assert alice is not None and await storage.rating(upscaled.id, alice) == 5


async def test_pressing_twice_makes_one_job(core: ChatCore, storage: Storage, queue: ScriptedQueue) -> None:
    _, picture = await delivered_picture(core, storage)
    first, created = await core.upscale(ALICE, picture.id, "chat-1", {})
    again, created_again = await core.upscale(ALICE, picture.id, "chat-1", {})
    await core.wait_idle(timeout=5)
    later, created_later = await core.upscale(ALICE, picture.id, "chat-1", {})
    assert created and not created_again and not created_later
    assert first.id == again.id == later.id
    assert await storage.count("jobs", "upscale_of_picture_id = ?", (picture.id,)) == 1
    assert sum(1 for payload in queue.submitted.values() if payload.get("upscale_source_b64")) == 1


async def test_only_the_requester_may_upscale_their_picture(core: ChatCore, storage: Storage) -> None:
    _, picture = await delivered_picture(core, storage)
    with pytest.raises(MmppError) as raised:
        await core.upscale(BOB, picture.id, "chat-1", {})
    assert raised.value.code is ErrorCode.NOT_YOURS
    assert await storage.count("jobs", "upscale_of_picture_id IS NOT NULL") == 0
    assert await storage.find_user("test", "bob") is None  # a refused press writes nothing about the presser


async def test_an_unknown_picture_an_upscale_of_an_upscale_and_a_reroll_of_one_are_refused(
    core: ChatCore, storage: Storage
) -> None:
    _, picture = await delivered_picture(core, storage)
    with pytest.raises(MmppError) as unknown:
        await core.upscale(ALICE, 999, "chat-1", {})
    assert unknown.value.code is ErrorCode.NOT_FOUND
    job, _ = await core.upscale(ALICE, picture.id, "chat-1", {})
    await core.wait_idle(timeout=5)
    (upscaled,) = await storage.pictures(job.id)
    with pytest.raises(MmppError) as twice:
        await core.upscale(ALICE, upscaled.id, "chat-1", {})
    assert twice.value.code is ErrorCode.INVALID_REQUEST
    with pytest.raises(MmppError) as reroll:
        await core.reroll(ALICE, job.id, "reroll-1", "chat-1", {})
    assert reroll.value.code is ErrorCode.INVALID_REQUEST


async def test_an_upscale_counts_in_the_daily_quota(storage: Storage, tmp_path: Path) -> None:
    core = ChatCore(storage, WorkerLikeQueue(), bot_settings(tmp_path, daily_picture_quota=2))
    core.attach(RecordingDelivery())
    await core.start()
    try:
        _, picture = await delivered_picture(core, storage)
        with pytest.raises(MmppError) as raised:
            await core.upscale(ALICE, picture.id, "chat-1", {})
        assert raised.value.code is ErrorCode.QUOTA_EXCEEDED
    finally:
        await core.stop()


async def test_forget_removes_the_upscale_and_its_picture(core: ChatCore, storage: Storage) -> None:
    _, picture = await delivered_picture(core, storage)
    job, _ = await core.upscale(ALICE, picture.id, "chat-1", {})
    await core.wait_idle(timeout=5)
    (upscaled,) = await storage.pictures(job.id)
    await core.rate(BOB, upscaled.id, 4, "button")
    await core.forget(ALICE)
    for table in ("jobs", "pictures", "selfies", "ratings"):
        assert await storage.count(table) == 0, table


async def test_deleting_the_picture_deletes_its_upscale(core: ChatCore, storage: Storage) -> None:
    """The migration's ON DELETE CASCADE: an upscale never outlives the picture it was made from."""
    original, picture = await delivered_picture(core, storage)
    job, _ = await core.upscale(ALICE, picture.id, "chat-1", {})
    await core.wait_idle(timeout=5)
    async with storage.write() as db:
        await db.execute("DELETE FROM pictures WHERE id = ?", (picture.id,))
    assert await storage.job(job.id) is None
    assert await storage.count("pictures", "job_id = ?", (job.id,)) == 0
    assert await storage.job(original.id) is not None


async def test_the_console_names_a_picture_by_job_and_position(core: ChatCore, storage: Storage) -> None:
    original, picture = await delivered_picture(core, storage)
    job, created = await core.upscale_job_picture(ALICE, original.id, 2, "chat-1", {})
    assert created and job.upscale_of_picture_id == picture.id
    with pytest.raises(MmppError) as raised:
        await core.upscale_job_picture(ALICE, original.id, 3, "chat-1", {})
    assert raised.value.code is ErrorCode.NOT_FOUND
    await core.wait_idle(timeout=5)


async def test_an_upscale_keeps_its_pictures_variant_whatever_is_served_now(
    core: ChatCore, storage: Storage, queue: ScriptedQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A promotion (or the sampler) may serve another variant by now; the upscale repaints the picture as made."""
    original, picture = await delivered_picture(core, storage)
    async with storage.write() as db:
        await db.execute("UPDATE jobs SET variant = 'more-likeness' WHERE id = ?", (original.id,))

    async def always_base(style: object, preferred: str | None = None) -> str:
        return "base"

    monkeypatch.setattr(core.jobs.variants, "assign", always_base)
    job, _ = await core.upscale(ALICE, picture.id, "chat-1", {})
    await core.wait_idle(timeout=5)
    assert job.variant == "more-likeness"
    assert GenerateRequest.from_payload(queue.submitted[job.task_id]).variant == "more-likeness"


async def test_an_upscale_interrupted_by_a_restart_is_delivered_once(
    storage: Storage, queue: ScriptedQueue, tmp_path: Path
) -> None:
    """The bot stops after the upscale was sent and before it was delivered; the next start delivers it, once."""
    settings = bot_settings(tmp_path)
    first_delivery = RecordingDelivery()
    first = ChatCore(storage, queue, settings)
    first.attach(first_delivery)
    await first.start()
    _, picture = await delivered_picture(first, storage)
    job, _ = await first.upscale(ALICE, picture.id, "chat-1", {})
    await first.stop()
    assert (await storage.job(job.id)).delivered_at is None  # type: ignore[union-attr]
    assert job.task_id in queue.submitted

    second_delivery = RecordingDelivery()
    second = ChatCore(storage, queue, settings)
    second.attach(second_delivery)
    await second.start()
    try:
        await second.wait_idle(timeout=5)
    finally:
        await second.stop()
    assert [job_id for job_id, _, _ in second_delivery.pictures] == [job.id]
    assert [job_id for job_id, _, _ in first_delivery.pictures if job_id == job.id] == []
    (upscaled,) = await storage.pictures(job.id)
    assert Image.open(io.BytesIO(upscaled.png)).size == (128, 128)
