"""The job lifecycle (bot/core/jobs.py): order, enqueue, follow, deliver once, resume after a restart, forget;
on a real SQLite database and a scripted queue."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bot.core import ChatCore, ProfileOrder
from bot.core.jobs import check_photo
from bot.storage import Storage
from mmpp.contract import ACCEPTED_PHOTO_TYPES, MAX_UPLOAD_BYTES, GenerateRequest
from mmpp.errors import ErrorCode, MmppError
from tests.bot.conftest import ALICE, BOB, SELFIE, RecordingDelivery, ScriptedQueue, bot_settings, order


async def test_a_job_is_written_before_it_is_enqueued_and_delivered_once(
    core: ChatCore, storage: Storage, queue: ScriptedQueue, delivery: RecordingDelivery
) -> None:
    seen_at_submit = []
    original_submit = queue.submit

    async def checking_submit(task_id: str, payload: dict, queue_name: str) -> None:
        job = await storage.job_by_event("test", "event-1")
        seen_at_submit.append((job is not None, await storage.selfie(job.id) if job else None))
        await original_submit(task_id, payload, queue_name)

    queue.submit = checking_submit  # type: ignore[method-assign]
    job, created = await core.order_profile(order(count="2", seed="11", prompt="a pirate"))
    await core.wait_idle(timeout=5)
    assert created and seen_at_submit == [(True, SELFIE)]
    request = GenerateRequest.from_payload(queue.submitted[job.task_id])
    assert queue.queues[job.task_id] == "mmpp.fast"  # anime's default mode picks the fast queue
    assert (request.style, request.count, request.seed, request.prompt, request.selfie) == (
        "anime",
        2,
        11,
        "a pirate",
        SELFIE,
    )
    final = await storage.job(job.id)
    assert final.state == "done" and final.delivered_at is not None
    assert len(delivery.pictures) == 1
    _, pictures, caption = delivery.pictures[0]
    assert [picture.seed for picture in pictures] == [11, 12] and "job" in caption
    assert delivery.statuses == [(job.id, "🌸 Anime: 2 pictures queued, starting soon")]
    assert any("%" in text for _, text in delivery.edits)
    stored = await storage.pictures(job.id)
    assert [picture.message_ref for picture in stored] == [f"message-{job.id}-1", f"message-{job.id}-2"]


async def test_duplicate_events_make_one_job_and_one_reply(
    core: ChatCore, queue: ScriptedQueue, delivery: RecordingDelivery
) -> None:
    first, created_first = await core.order_profile(order("update-42"))
    second, created_second = await core.order_profile(order("update-42"))
    await core.wait_idle(timeout=5)
    assert created_first and not created_second and first.id == second.id
    assert len(queue.submitted) == 1 and len(delivery.statuses) == 1 and len(delivery.pictures) == 1


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"style": "building"}, ErrorCode.UNKNOWN_STYLE),
        ({"style": ""}, ErrorCode.UNKNOWN_STYLE),
        ({"count": "9"}, ErrorCode.INVALID_REQUEST),
        ({"count": "two"}, ErrorCode.INVALID_REQUEST),
        ({"mode": "turbo"}, ErrorCode.INVALID_REQUEST),
        ({"seed": "-4"}, ErrorCode.INVALID_REQUEST),
        ({"prompt": "x" * 10_000}, ErrorCode.PROMPT_TOO_LONG),
    ],
)
async def test_bad_orders_are_refused_before_anything_is_stored(
    core: ChatCore, storage: Storage, queue: ScriptedQueue, changes: dict[str, str], code: ErrorCode
) -> None:
    with pytest.raises(MmppError) as raised:
        await core.order_profile(order(**changes))
    assert raised.value.code is code and "\n" not in raised.value.message
    assert await storage.count("jobs") == 0 and not queue.submitted


async def test_an_order_without_a_photo_asks_for_one(core: ChatCore) -> None:
    with pytest.raises(MmppError) as raised:
        await core.order_profile(order(photo=None))
    assert raised.value.code is ErrorCode.NOT_AN_IMAGE


async def test_worker_errors_reach_the_user_and_the_selfie_is_deleted(
    core: ChatCore, storage: Storage, queue: ScriptedQueue, delivery: RecordingDelivery
) -> None:
    queue.error = MmppError(ErrorCode.NO_FACE, "No face was found in the photo.")
    job, _ = await core.order_profile(order())
    await core.wait_idle(timeout=5)
    assert delivery.failures == [(job.id, ErrorCode.NO_FACE, "No face was found in the photo.")]
    final = await storage.job(job.id)
    assert final.state == "failed" and final.error_code == "NO_FACE" and final.delivered_at
    assert await storage.count("selfies") == 0


async def test_selfies_are_kept_for_the_retention_time_only(
    storage: Storage, queue: ScriptedQueue, tmp_path: Path
) -> None:
    for hours, expected in ((24.0, 1), (0.0, 0)):
        core = ChatCore(storage, queue, bot_settings(tmp_path, selfie_retention_hours=hours))
        core.attach(RecordingDelivery())
        job, _ = await core.order_profile(order(f"event-{hours}"))
        await core.wait_idle(timeout=5)
        assert await storage.count("selfies", "job_id = ?", (job.id,)) == expected
    later = datetime.now(UTC) + timedelta(hours=25)
    assert await storage.purge_expired_selfies(later) == 1
    assert await storage.count("selfies") == 0


async def test_a_restarted_bot_delivers_unfinished_jobs_once(storage: Storage, tmp_path: Path) -> None:
    queue = ScriptedQueue(progress_polls=10_000)
    first_delivery = RecordingDelivery()
    first = ChatCore(storage, queue, bot_settings(tmp_path))
    first.attach(first_delivery)
    running, _ = await first.order_profile(order("b", person=BOB))
    # The bot died between writing a job and enqueueing it: the row exists, the queue never saw it.
    user_id = await storage.ensure_user("test", "alice")
    never_enqueued, _ = await storage.create_job(
        task_id="task-never-sent", user_id=user_id, platform="test", event_key="a", chat_id="chat-1", style="anime",
        prompt="", mode=None, picture_count=1, seed=None, selfie=SELFIE, reply_context={},
    )  # fmt: skip
    await asyncio.sleep(0.05)
    await first.stop()  # the bot dies
    assert never_enqueued.task_id not in queue.submitted and running.task_id in queue.submitted

    queue.progress_polls = 1
    second_delivery = RecordingDelivery()
    second = ChatCore(storage, queue, bot_settings(tmp_path))
    second.attach(second_delivery)
    await second.start()
    await second.wait_idle(timeout=5)
    assert sorted(job_id for job_id, _, _ in second_delivery.pictures) == sorted([never_enqueued.id, running.id])
    assert first_delivery.pictures == []
    await second.stop()

    third_delivery = RecordingDelivery()
    third = ChatCore(storage, queue, bot_settings(tmp_path))
    third.attach(third_delivery)
    await third.start()
    await third.wait_idle(timeout=5)
    assert third_delivery.pictures == []  # delivered once, not again
    await third.stop()


async def test_a_job_that_never_finishes_times_out(storage: Storage, tmp_path: Path) -> None:
    queue = ScriptedQueue(progress_polls=10_000)
    core = ChatCore(storage, queue, bot_settings(tmp_path, job_timeout_seconds=0.1))
    delivery = RecordingDelivery()
    core.attach(delivery)
    await core.order_profile(order())
    await core.wait_idle(timeout=5)
    assert delivery.failures and delivery.failures[0][1] is ErrorCode.TIMEOUT


async def test_reroll_and_other_style_reuse_the_kept_selfie(
    core: ChatCore, storage: Storage, queue: ScriptedQueue, delivery: RecordingDelivery
) -> None:
    job, _ = await core.order_profile(order(seed="5"))
    await core.wait_idle(timeout=5)
    again, created = await core.reroll(ALICE, job.id, "click-1", "chat-1", {})
    restyled, _ = await core.reroll(ALICE, job.id, "click-2", "chat-1", {}, style="watercolor")
    await core.wait_idle(timeout=5)
    assert created and again.parent_job_id == job.id and again.seed is None
    assert GenerateRequest.from_payload(queue.submitted[again.task_id]).selfie == SELFIE
    assert GenerateRequest.from_payload(queue.submitted[restyled.task_id]).style == "watercolor"
    with pytest.raises(MmppError) as stranger:
        await core.reroll(BOB, job.id, "click-3", "chat-1", {})
    assert stranger.value.code is ErrorCode.INVALID_REQUEST
    await storage.purge_expired_selfies(datetime.now(UTC) + timedelta(days=2))
    with pytest.raises(MmppError) as gone:
        await core.reroll(ALICE, job.id, "click-4", "chat-1", {})
    assert gone.value.code is ErrorCode.NOT_FOUND and "no longer kept" in gone.value.message


async def test_forget_removes_everything_about_a_person(core: ChatCore, storage: Storage, queue: ScriptedQueue) -> None:
    job, _ = await core.order_profile(order())
    other, _ = await core.order_profile(order("bob-event", person=BOB))
    await core.wait_idle(timeout=5)
    await core.rate_message(ALICE, f"message-{other.id}-1", 5, "reaction")
    await core.rate_message(BOB, f"message-{job.id}-1", 3, "reaction")
    forgotten_before = len(queue.forgotten)  # each result was forgotten once its pictures were stored
    reply = await core.forget(ALICE)
    assert "deleted" in reply
    assert await storage.find_user("test", "alice") is None
    assert await storage.count("jobs", "id = ?", (job.id,)) == 0
    assert await storage.count("pictures", "job_id = ?", (job.id,)) == 0
    assert await storage.count("selfies", "job_id = ?", (job.id,)) == 0
    assert await storage.count("ratings") == 0  # hers, and Bob's on her picture
    assert queue.forgotten[forgotten_before:] == [job.task_id]
    assert await storage.count("jobs") == 1  # Bob's stays
    assert await core.forget(ALICE) == "I had nothing stored about you."


async def test_the_privacy_notice_is_shown_once_per_person(core: ChatCore, delivery: RecordingDelivery) -> None:
    first, _ = await core.order_profile(order("n1"))
    await core.order_profile(order("n2", person=BOB))
    await core.wait_idle(timeout=5)
    await core.order_profile(order("n3"))
    await core.wait_idle(timeout=5)
    assert [job_id for job_id, _ in delivery.notices] == [first.id, first.id + 1]
    text = delivery.notices[0][1]
    assert "24 h" in text and "/forget" in text and "selfie" in text


@pytest.mark.parametrize("declared", ["image/heic", "image/heif", "image/avif", "image/gif", "text/plain"])
async def test_photos_of_other_types_are_refused_before_anything_is_stored(
    core: ChatCore, storage: Storage, queue: ScriptedQueue, delivery: RecordingDelivery, declared: str
) -> None:
    """Only the kernel's ACCEPTED_PHOTO_TYPES pass: a HEIC is answered at once, not after a trip through the queue."""
    photo = b"\x00\x00\x00\x18ftypheic"
    heic = ProfileOrder(ALICE, "heic", "chat-1", {}, {"style": "anime"}, photo, photo_type=declared)
    with pytest.raises(MmppError) as raised:
        await core.order_profile(heic)
    assert raised.value.code is ErrorCode.NOT_AN_IMAGE and "\n" not in raised.value.message
    assert "JPEG, PNG or WebP" in raised.value.message
    assert await storage.count("jobs") == 0 and await storage.count("users") == 0
    assert not queue.submitted and not delivery.statuses


def test_the_accepted_types_are_the_kernels_and_the_size_limit_is_checked_first() -> None:
    for photo in ACCEPTED_PHOTO_TYPES:
        check_photo(1000, photo.mime_type)
        check_photo(None, photo.mime_type.upper() + "; charset=binary")
    check_photo(None, None)  # nothing declared: the worker's decoder decides
    with pytest.raises(MmppError) as heic:
        check_photo(1000, "image/heic")
    assert heic.value.code is ErrorCode.NOT_AN_IMAGE and heic.value.message.startswith("HEIC photos are not accepted")
    with pytest.raises(MmppError) as large:
        check_photo(MAX_UPLOAD_BYTES + 1, "image/jpeg")
    assert large.value.code is ErrorCode.IMAGE_TOO_LARGE


async def test_an_accepted_declared_type_is_ordered(core: ChatCore, queue: ScriptedQueue) -> None:
    webp = ProfileOrder(ALICE, "webp", "chat-1", {}, {"style": "anime"}, SELFIE, photo_type="image/webp")
    job, created = await core.order_profile(webp)
    await core.wait_idle(timeout=5)
    assert created and job.task_id in queue.submitted


async def test_each_result_is_forgotten_in_the_result_backend_once_its_outcome_is_stored(
    core: ChatCore, storage: Storage, queue: ScriptedQueue, delivery: RecordingDelivery
) -> None:
    """A result left in Redis holds its pictures there until it expires: it is deleted right after the pictures
    (or the failure) are written to the database, before they are posted."""
    stored_when_forgotten: list[tuple[str, int]] = []
    original_forget = queue.forget

    async def checking_forget(task_id: str) -> None:
        job = next(job for job in [await storage.job(job_id) for job_id in (1, 2)] if job and job.task_id == task_id)
        stored_when_forgotten.append((job.state, await storage.count("pictures", "job_id = ?", (job.id,))))
        await original_forget(task_id)

    queue.forget = checking_forget  # type: ignore[method-assign]
    done, _ = await core.order_profile(order("e1", count="2"))
    await core.wait_idle(timeout=5)
    assert stored_when_forgotten == [("done", 2)] and len(delivery.pictures) == 1
    queue.error = MmppError(ErrorCode.NO_FACE, "No face was found in the photo.")
    failed, _ = await core.order_profile(order("e2", person=BOB))
    await core.wait_idle(timeout=5)
    assert stored_when_forgotten == [("done", 2), ("failed", 0)]
    assert queue.forgotten == [done.task_id, failed.task_id]


async def test_an_order_stands_when_recording_its_privacy_notice_fails(
    core: ChatCore, storage: Storage, delivery: RecordingDelivery
) -> None:
    """The notice is recorded after the job is written: a database that loses that write's COMMIT (a PostgreSQL
    restart) must not answer the order with an error, nor leave the job unfollowed; the notice is posted."""
    from bot.database import ConnectionLostError

    async def lost(user_id: int) -> bool:
        raise ConnectionLostError("ConnectionResetError: reset", committed=None)

    storage.take_privacy_notice = lost  # type: ignore[method-assign]
    job, created = await core.order_profile(order("event-lost-notice"))
    await core.wait_idle(timeout=10)
    assert created and [job_id for job_id, _, _ in delivery.pictures] == [job.id]
    assert [job_id for job_id, _ in delivery.notices] == [job.id]
