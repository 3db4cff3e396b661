"""The Celery client's reading of a job's state (bot/queue.py): progress and the live preview, decoded
defensively, from a real Redis result backend written the way the worker writes it."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bot.queue import MAX_PREVIEW_BYTES, CeleryJobQueue, decode_preview, make_client
from tests.bot.conftest import tiny_jpeg
from tests.conftest import REDIS_URL, redis_available

JPEG = tiny_jpeg(7)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (base64.b64encode(JPEG).decode(), JPEG),
        (None, None),
        ("", None),
        (42, None),
        (["a"], None),
        ("not base64 at all!", None),
        (base64.b64encode(JPEG).decode()[:-3], None),  # truncated
        (base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(40)).decode(), None),  # not a JPEG
        (base64.b64encode(b"\xff\xd8\xff" + bytes(MAX_PREVIEW_BYTES)).decode(), None),  # far too large
        (base64.b64encode(JPEG).decode() + "\n", None),  # stray characters
    ],
)
def test_a_preview_is_a_jpeg_or_nothing(value: Any, expected: bytes | None) -> None:
    assert decode_preview(value) == expected


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[tuple[CeleryJobQueue, Any]]:
    if not redis_available():
        pytest.fail(f"Redis is not reachable at {REDIS_URL}")
    app = make_client(REDIS_URL, tmp_path / "state")
    yield CeleryJobQueue(app), app.backend
    app.close()


@pytest.mark.parametrize(
    ("meta", "done", "total", "preview"),
    [
        ({"done": 3, "total": 25, "preview_jpeg_b64": base64.b64encode(JPEG).decode()}, 3, 25, JPEG),
        ({"done": 2, "total": 25}, 2, 25, None),  # before the first preview
        ({"done": 4, "total": 25, "preview_jpeg_b64": "%%%garbage%%%"}, 4, 25, None),
        ({"done": "x", "total": None, "preview_jpeg_b64": 12}, 0, 0, None),
        ({"done": -5, "total": 1e400, "preview_jpeg_b64": {"nested": True}}, 0, 0, None),
    ],
)
async def test_progress_states_from_the_backend(
    backend: tuple[CeleryJobQueue, Any], meta: dict[str, Any], done: int, total: int, preview: bytes | None
) -> None:
    queue, result_backend = backend
    task_id = f"preview-test-{uuid.uuid4()}"
    result_backend.store_result(task_id, meta, "PROGRESS")
    try:
        status = await queue.status(task_id)
        assert (status.state, status.done_steps, status.total_steps, status.preview) == (
            "PROGRESS", done, total, preview,
        )  # fmt: skip
        result_backend.store_result(task_id, {"ok": True, "pictures": []}, "SUCCESS")
        final = await queue.status(task_id)
        assert final.ready and final.preview is None  # the result replaced the preview
    finally:
        await queue.forget(task_id)


async def test_a_sent_job_takes_what_admission_control_counts_for_it_and_expires_with_the_bots_patience(
    backend: tuple[CeleryJobQueue, Any], tmp_path: Path
) -> None:
    """broker_message_bytes is an upper bound of one job's message in Redis, and not far above it; with
    expires_after the message carries an expiry, so a worker drops a job nobody waits for any more."""
    import json

    import redis

    from bot.queue import broker_message_bytes
    from mmpp.contract import GenerateRequest

    client = redis.Redis.from_url(REDIS_URL)
    app = make_client(REDIS_URL, tmp_path / "state")
    queue = CeleryJobQueue(app, expires_after=600)
    name = f"message-size-{uuid.uuid4().hex[:8]}"
    try:
        for size in (60_000, 400_000):
            payload = GenerateRequest(selfie=bytes(range(256)) * (size // 256), style="anime", prompt="é" * 500)
            await queue.submit(str(uuid.uuid4()), payload.to_payload(), name)
            message = client.lindex(name, 0)
            assert message is not None
            estimate = broker_message_bytes(len(payload.selfie))
            assert len(message) <= estimate <= 1.25 * len(message) + 8192
            assert json.loads(message)["headers"]["expires"] is not None
    finally:
        client.delete(name)
        app.close()
