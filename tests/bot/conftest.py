"""Fixtures for the chat side: a real database and a scripted job queue.

``ScriptedQueue`` stands in for Celery where a test is about the core's
decisions, not the worker: it plays back the states a real worker reports
(PENDING, PROGRESS, SUCCESS with a real result payload).  End-to-end tests
use the real worker on Redis instead.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from bot.core import ChatCore, EditPace, Person, ProfileOrder
from bot.queue import QueueStatus
from bot.settings import BotSettings
from bot.storage import Job, Storage, StoredPicture
from mmpp.contract import GenerateRequest, GenerateResult, Picture
from mmpp.errors import ErrorCode, MmppError
from tests.conftest import start_worker, stop_worker


def tiny_png(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buffer, "PNG")
    return buffer.getvalue()


def tiny_jpeg(shade: int) -> bytes:
    """A small JPEG like the worker's previews (a different one per shade)."""
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (shade % 256, 90, 160)).save(buffer, "JPEG")
    return buffer.getvalue()


@dataclass
class ScriptedQueue:
    """Answers each job with pictures (or an error) after a few PROGRESS polls."""

    progress_polls: int = 2
    error: MmppError | None = None
    #: PROGRESS states carry a preview, a new one every ``previews_every`` polls (0: none).
    previews_every: int = 0
    submitted: dict[str, dict[str, Any]] = field(default_factory=dict)
    queues: dict[str, str] = field(default_factory=dict)
    polls: dict[str, int] = field(default_factory=dict)
    forgotten: list[str] = field(default_factory=list)
    fail_submits: int = 0

    async def submit(self, task_id: str, payload: dict[str, Any], queue: str) -> None:
        if self.fail_submits:
            self.fail_submits -= 1
            raise ConnectionError("broker down")
        self.submitted[task_id] = payload
        self.queues[task_id] = queue

    async def status(self, task_id: str) -> QueueStatus:
        if task_id not in self.submitted:
            return QueueStatus("PENDING")
        count = self.polls[task_id] = self.polls.get(task_id, 0) + 1
        request = GenerateRequest.from_payload(self.submitted[task_id])
        if count <= self.progress_polls:
            preview = tiny_jpeg(count // self.previews_every) if self.previews_every else None
            return QueueStatus("PROGRESS", count, self.progress_polls + 1, preview=preview)
        if self.error is not None:
            return QueueStatus("SUCCESS", result=GenerateResult.failure(self.error).to_payload())
        seed = request.seed or 0
        pictures = [Picture(png=tiny_png((index * 40, 0, 0)), seed=seed + index) for index in range(request.count)]
        return QueueStatus(
            "SUCCESS",
            result=GenerateResult(
                pictures=pictures, style=request.style, variant=request.variant or "base", mode="fast", steps=4
            ).to_payload(),
        )

    async def forget(self, task_id: str) -> None:
        self.forgotten.append(task_id)


@dataclass
class RecordingDelivery:
    """A Delivery that records what the core asked to post."""

    platform: str = "test"
    status_edit_pace: EditPace = field(default_factory=lambda: EditPace(0.0))
    statuses: list[tuple[int, str]] = field(default_factory=list)
    edits: list[tuple[int, str]] = field(default_factory=list)
    #: Every edit with its preview (``None``: text only), in order.
    preview_edits: list[tuple[int, str, bytes | None]] = field(default_factory=list)
    pictures: list[tuple[int, list[StoredPicture], str]] = field(default_factory=list)
    failures: list[tuple[int, ErrorCode, str]] = field(default_factory=list)
    notices: list[tuple[int, str]] = field(default_factory=list)

    async def post_notice(self, job: Job, text: str) -> None:
        self.notices.append((job.id, text))

    async def post_status(self, job: Job, text: str) -> str | None:
        self.statuses.append((job.id, text))
        return f"status-{job.id}"

    async def edit_status(self, job: Job, message_ref: str, text: str, preview: bytes | None = None) -> None:
        self.edits.append((job.id, text))
        self.preview_edits.append((job.id, text, preview))

    async def post_pictures(self, job: Job, pictures: list[StoredPicture], caption: str, on_posted) -> None:
        self.pictures.append((job.id, pictures, caption))
        for picture in pictures:
            await on_posted(picture, f"message-{job.id}-{picture.position}")

    async def post_failure(self, job: Job, code: ErrorCode, text: str) -> None:
        self.failures.append((job.id, code, text))


def bot_settings(tmp_path: Path, **overrides: Any) -> BotSettings:
    values: dict[str, Any] = {
        "database": tmp_path / "mmpp.sqlite3",
        "state_dir": tmp_path / "state",
        "poll_interval_seconds": 0.01,
        "out": tmp_path / "out",
    }
    values.update(overrides)
    return BotSettings(_env_file=None, **values)


@pytest.fixture(scope="session")
def preview_worker(redis_worker: str, cache_dir: Path) -> Iterator[str]:
    """A worker whose jobs last long enough to watch their previews; yields its queue name.

    On the tiny weights a job takes about a second.  Here every picture is its own pipeline call,
    so a 4-picture quality job paints 4 x 25 steps, with a preview every 2 steps at once (no
    minimum time between them): long enough for several status edits at each platform's pace.
    """
    queue = f"mmpp-previews-{uuid.uuid4().hex[:8]}"
    worker = start_worker(queue, cache_dir, MMPP_PREVIEW_MIN_SECONDS="0", MMPP_MAX_BATCH_SIZE="1")
    yield queue
    alive = worker.poll() is None
    stop_worker(worker)
    assert alive, "the preview worker died during the tests"


#: What a job on the preview worker asks for: quality mode (25 steps), 4 pictures painted one after another.
PREVIEW_JOB = {"mode": "quality", "count": "4"}


@pytest.fixture
async def storage(tmp_path: Path) -> AsyncIterator[Storage]:
    opened = await Storage.open(tmp_path / "mmpp.sqlite3")
    yield opened
    await opened.close()


@pytest.fixture
def queue() -> ScriptedQueue:
    return ScriptedQueue()


@pytest.fixture
def delivery() -> RecordingDelivery:
    return RecordingDelivery()


@pytest.fixture
async def core(
    storage: Storage, queue: ScriptedQueue, delivery: RecordingDelivery, tmp_path: Path
) -> AsyncIterator[ChatCore]:
    chat_core = ChatCore(storage, queue, bot_settings(tmp_path))
    chat_core.attach(delivery)
    await chat_core.start()
    yield chat_core
    await chat_core.stop()


# --------------------------------------------------------------------------- the people and orders of the core tests

ALICE = Person("test", "alice", "Alice")
BOB = Person("test", "bob", "Bob")


def plain_jpeg() -> bytes:
    """A small JPEG without metadata, the kind the core keeps byte for byte (bot/core/selfies.py)."""
    buffer = io.BytesIO()
    Image.new("RGB", (96, 96), (200, 150, 120)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


#: The photo of the core tests' orders: kept as sent, so the job stores and sends exactly these bytes.
SELFIE = plain_jpeg()


def order(event: str = "event-1", person: Person = ALICE, photo: bytes | None = SELFIE, **options: str) -> ProfileOrder:
    return ProfileOrder(person, event, "chat-1", {"channel": "chat-1"}, {"style": "anime", **options}, photo)
