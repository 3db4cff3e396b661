"""The core's one rule for status edits and live previews (bot/core/status.py), on a controllable clock,
with each platform's pace as its adapter declares it; then through the job lifecycle with a scripted queue."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import pytest

from bot.console_app import ConsoleDelivery
from bot.core import CHAT_KIND, ChatCore, EditPace
from bot.core.status import MAX_SLOWDOWN, PREVIEW_REFUSALS_TO_STOP, StatusEdit, StatusEdits
from bot.discord_app import DiscordDelivery
from bot.storage import Job, Storage
from bot.telegram_app import TelegramDelivery
from tests.bot.conftest import RecordingDelivery, ScriptedQueue, bot_settings, order, tiny_jpeg


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def job(job_id: int = 1, chat: str = "chat-1", platform: str = "test", kind: str | None = None) -> Job:
    context = {CHAT_KIND: kind} if kind else {}
    return Job(
        id=job_id, task_id=f"t{job_id}", user_id=1, platform=platform, event_key=f"e{job_id}", chat_id=chat,
        style="anime", prompt="", mode=None, picture_count=1, seed=None, parent_job_id=None, state="running",
        progress_done=0, progress_total=0, error_code=None, error_message=None, reply_context=context,
        status_message_id="m", result_meta=None, created_at="", enqueued_at=None, finished_at=None, delivered_at=None,
    )  # fmt: skip


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_an_edit_needs_a_change_and_the_pace_and_the_post_counts_as_one(clock: Clock) -> None:
    edits = StatusEdits(clock)
    pace = EditPace(2.0)
    edits.posted(job(), pace, "queued")
    pacer = edits.follow(job(), pace)
    assert pacer.next_edit("queued", None) is None  # what was posted is what is shown
    assert pacer.next_edit("painting 10%", None) is None  # too soon after the post
    clock.now += 2.0
    assert pacer.next_edit("painting 20%", None) == StatusEdit("painting 20%", None)
    clock.now += 5.0
    assert pacer.next_edit("painting 20%", None) is None  # nothing changed
    assert pacer.next_edit("painting 30%", None) == StatusEdit("painting 30%", None)


def test_a_preview_goes_with_the_text_once_and_the_newest_one_wins(clock: Clock) -> None:
    edits = StatusEdits(clock)
    pacer = edits.follow(job(), EditPace(1.0))
    first, second, third = tiny_jpeg(1), tiny_jpeg(2), tiny_jpeg(3)
    assert pacer.next_edit("painting 10%", first) == StatusEdit("painting 10%", first)
    clock.now += 1.0
    assert pacer.next_edit("painting 10%", first) is None  # the same preview is not sent again
    assert pacer.next_edit("painting 20%", first) == StatusEdit("painting 20%", None)  # text only
    clock.now += 0.5
    assert pacer.next_edit("painting 20%", second) is None  # new, but too soon: waits...
    clock.now += 0.5
    assert pacer.next_edit("painting 30%", third) == StatusEdit("painting 30%", third)  # ...and the newest wins
    clock.now += 1.0
    assert pacer.next_edit("painting 30%", bytes(third)) is None  # equal bytes are the same preview


def test_refused_previews_are_not_resent_and_stop_after_some_in_a_row(clock: Clock) -> None:
    pacer = StatusEdits(clock).follow(job(), EditPace(1.0))
    for shade in range(1, PREVIEW_REFUSALS_TO_STOP):
        edit = pacer.next_edit(f"painting {shade}%", tiny_jpeg(shade))
        assert edit is not None and edit.preview is not None
        pacer.outcome(edit, made=False)
        clock.now += 1.0
        assert pacer.next_edit(f"painting {shade}%", tiny_jpeg(shade)) is None  # not retried
    taken = pacer.next_edit("painting 50%", tiny_jpeg(50))
    assert taken is not None and taken.preview is not None
    pacer.outcome(taken, made=True)  # a success resets the count
    for shade in range(60, 60 + PREVIEW_REFUSALS_TO_STOP):
        clock.now += 1.0
        refused = pacer.next_edit(f"painting {shade}%", tiny_jpeg(shade))
        assert refused is not None and refused.preview is not None
        pacer.outcome(refused, made=False)
    clock.now += 1.0
    assert pacer.next_edit("painting 99%", tiny_jpeg(99)) == StatusEdit("painting 99%", None)  # text only now
    assert not pacer.previews_on


def test_a_chat_pace_is_shared_by_the_jobs_of_the_chat_and_a_message_pace_is_not(clock: Clock) -> None:
    edits = StatusEdits(clock)
    per_chat = EditPace(2.0, per="chat")
    one, other, elsewhere = (
        edits.follow(job(1), per_chat),
        edits.follow(job(2), per_chat),
        edits.follow(job(3, chat="chat-2"), per_chat),
    )
    assert one.next_edit("a", None) is not None
    assert other.next_edit("b", None) is None  # the same chat: one edit per 2 s between them
    assert elsewhere.next_edit("c", None) is not None
    clock.now += 2.0
    assert other.next_edit("b", None) is not None

    per_message = EditPace(2.0)
    first, second = edits.follow(job(4), per_message), edits.follow(job(5), per_message)
    assert first.next_edit("a", None) is not None and second.next_edit("b", None) is not None


def test_a_too_many_requests_holds_the_chats_edits_then_slows_them_and_successes_ease_it(clock: Clock) -> None:
    edits = StatusEdits(clock)
    pace = EditPace(2.0, per="chat")
    pacer, elsewhere = edits.follow(job(1), pace), edits.follow(job(2, chat="chat-2"), pace)
    assert pacer.next_edit("painting 10%", None) is not None
    edits.hold("test", "chat-1", 5.0)  # the platform refused something in chat-1: retry after 5 s
    clock.now += 4.9
    assert pacer.next_edit("painting 20%", None) is None  # held, though the pace alone would allow it
    assert elsewhere.next_edit("painting 20%", None) is not None  # another chat is not held
    clock.now += 0.1
    edit = pacer.next_edit("painting 30%", None)
    assert edit is not None
    pacer.outcome(edit, made=True)  # taken: the slowdown eases from 2x back to the pace
    clock.now += 2.0
    assert pacer.next_edit("painting 40%", None) is not None

    for _ in range(5):  # refusal after refusal: slower each time, up to MAX_SLOWDOWN
        edits.hold("test", "chat-1", 1.0)
    clock.now += 1.0
    assert edits.slowdown(("test", "chat-1")) == MAX_SLOWDOWN
    clock.now += 2.0 * MAX_SLOWDOWN - 1.5
    assert pacer.next_edit("painting 50%", None) is None
    clock.now += 0.5
    assert pacer.next_edit("painting 50%", None) is not None


def test_an_edit_waits_while_the_adapter_says_the_chat_has_no_room(clock: Clock) -> None:
    room = {"chat-1": False}
    pace = EditPace(1.0, per="chat", room=lambda item: room[item.chat_id])
    pacer = StatusEdits(clock).follow(job(), pace)
    assert pacer.next_edit("painting 10%", tiny_jpeg(1)) is None  # no room: not even tried
    clock.now += 5.0
    assert pacer.next_edit("painting 20%", tiny_jpeg(2)) is None
    room["chat-1"] = True
    assert pacer.next_edit("painting 20%", tiny_jpeg(2)) == StatusEdit("painting 20%", tiny_jpeg(2))
    assert pacer.previews_on  # skipped edits are not refusals


def test_the_pace_can_depend_on_the_kind_of_chat(clock: Clock) -> None:
    pace = EditPace(6.0, per="chat", by_chat_kind={"private": 2.0})
    assert StatusEdits.interval(job(kind="private"), pace) == 2.0
    assert StatusEdits.interval(job(kind="supergroup"), pace) == 6.0
    assert StatusEdits.interval(job(), pace) == 6.0  # a job from before chat kinds were recorded: the stricter


def simulated_edit_times(pace: EditPace, jobs: list[Job], seconds: float = 120.0) -> list[float]:
    """Followers polling every 0.1 s with the text and the preview changing at every poll; when each edit happens."""
    clock = Clock()
    edits = StatusEdits(clock)
    start = clock.now
    for item in jobs:
        edits.posted(item, pace, "queued")
    pacers = [edits.follow(item, pace) for item in jobs]
    times = []
    for step in range(int(seconds * 10)):
        clock.now = start + step / 10
        for pacer in pacers:
            if pacer.next_edit(f"painting {step}", tiny_jpeg(step)) is not None:
                times.append(clock.now - start)
    return [0.0] * len(jobs) + times  # the posts count


def most_in_a_window(times: list[float], window: float) -> int:
    ordered = sorted(times)
    return max(sum(1 for other in ordered if start <= other < start + window) for start in ordered)


def test_discord_stays_within_5_edits_per_5_s_per_message_with_room_for_the_last_edit() -> None:
    pace = DiscordDelivery.status_edit_pace
    times = simulated_edit_times(pace, [job(platform="discord")])
    assert most_in_a_window(times, 5.0) <= 4  # the edit that says the pictures are there makes 5 at most


@pytest.mark.parametrize(("kind", "per_minute"), [("private", 30), ("group", 5), ("supergroup", 5)])
def test_telegram_stays_within_one_per_second_per_chat_and_20_a_minute_in_groups(kind: str, per_minute: int) -> None:
    pace = TelegramDelivery.status_edit_pace
    # Three jobs in one chat: the chat's budget is shared, not multiplied.
    times = simulated_edit_times(pace, [job(n, chat="-100", platform="telegram", kind=kind) for n in (1, 2, 3)])
    edits = sorted(times)[3:]  # after the three posts
    assert all(later - earlier >= 1.0 for earlier, later in itertools.pairwise(edits))
    assert most_in_a_window(edits, 60.0) <= per_minute
    if kind != "private":
        assert most_in_a_window(times, 60.0) <= 20 - 5  # posts included, room left for pictures and replies


def test_the_console_declares_a_pace_too() -> None:
    assert ConsoleDelivery.status_edit_pace.seconds > 0


# --------------------------------------------------------------------------- through the job lifecycle


class FailingPreviews(RecordingDelivery):
    """Refuses every edit that carries a preview, as a platform answering 400/429/500 would."""

    async def edit_status(self, job: Job, message_ref: str, text: str, preview: bytes | None = None) -> None:
        await super().edit_status(job, message_ref, text, preview)
        if preview is not None:
            raise ConnectionError("refused")


class HangingPreviews(RecordingDelivery):
    """Never answers an edit that carries a preview."""

    async def edit_status(self, job: Job, message_ref: str, text: str, preview: bytes | None = None) -> None:
        await super().edit_status(job, message_ref, text, preview)
        if preview is not None:
            await asyncio.Event().wait()


@pytest.fixture
def previewing_queue() -> ScriptedQueue:
    return ScriptedQueue(progress_polls=8, previews_every=2)


async def run_one_job(storage: Storage, queue: ScriptedQueue, delivery: RecordingDelivery, tmp_path: Path) -> Job:
    core = ChatCore(storage, queue, bot_settings(tmp_path))
    core.attach(delivery)
    await core.start()
    try:
        created, _ = await core.order_profile(order())
        await core.wait_idle(timeout=10)
    finally:
        await core.stop()
    final = await storage.job(created.id)
    assert final is not None
    return final


async def test_previews_reach_the_adapter_with_the_text_only_when_new(
    storage: Storage, previewing_queue: ScriptedQueue, tmp_path: Path
) -> None:
    delivery = RecordingDelivery()
    final = await run_one_job(storage, previewing_queue, delivery, tmp_path)
    previews = [preview for _, _, preview in delivery.preview_edits if preview is not None]
    assert previews and all(preview.startswith(b"\xff\xd8") for preview in previews)
    assert len(previews) == len(set(previews))  # each preview once
    assert all("%" in text for _, text, preview in delivery.preview_edits if preview is not None)
    assert len(delivery.pictures) == 1 and final.state == "done" and final.delivered_at


@pytest.mark.parametrize("delivery_kind", [FailingPreviews, HangingPreviews])
async def test_a_failing_preview_edit_changes_nothing_about_delivery(
    storage: Storage, previewing_queue: ScriptedQueue, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    delivery_kind: type[RecordingDelivery],
) -> None:  # fmt: skip
    monkeypatch.setattr("bot.core.jobs.STATUS_EDIT_TIMEOUT_SECONDS", 0.2)
    delivery = delivery_kind()
    final = await run_one_job(storage, previewing_queue, delivery, tmp_path)
    assert len(delivery.pictures) == 1 and final.state == "done" and final.delivered_at
    assert [picture.message_ref for picture in await storage.pictures(final.id)] == [f"message-{final.id}-1"]
    previews = [preview for _, _, preview in delivery.preview_edits if preview is not None]
    assert len(previews) == PREVIEW_REFUSALS_TO_STOP  # each tried once, then text only
    assert len(set(previews)) == len(previews)
    assert any(preview is None and "%" in text for _, text, preview in delivery.preview_edits)
