"""The Celery client side: enqueue by task name, read progress and results.

Nothing of the engine is imported, only the kernel's contract: the task is
sent by its name, so this process never loads torch.  Celery's client calls block,
so they run in a thread to keep the event loop (and the platform's
heartbeats) responsive.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from celery import Celery
from celery.result import AsyncResult

from mmpp.contract import CELERY_WIRE_SETTINGS, GENERATE_TASK_NAME, broker_urls

#: The worker's previews are JPEGs of at most 256 px (~10-30 KB); anything far larger is not one.
MAX_PREVIEW_BYTES = 512 * 1024
JPEG_MAGIC = b"\xff\xd8\xff"
#: Room in one job's broker message for everything but the selfie: the other fields (a 500-character
#: prompt escaped to JSON), Celery's headers, kombu's envelope.
MESSAGE_OVERHEAD_BYTES = 8192


def broker_message_bytes(selfie_bytes: int) -> int:
    """An upper bound of what one job with a selfie of this size takes in the broker.

    The selfie travels as base64 inside the JSON payload, which kombu's Redis transport base64-encodes
    once more: 16/9 of its size; twice its size leaves room for Redis's own bookkeeping.  Admission
    control (:mod:`bot.core.admission`) counts a queue's bytes with this.
    """
    return 2 * selfie_bytes + MESSAGE_OVERHEAD_BYTES


@dataclass(frozen=True)
class QueueStatus:
    """Where a job stands as the result backend knows it.

    ``preview`` is the latest live preview of a job being painted (a small JPEG),
    while the worker has sent one; the final result replaces it.
    """

    state: str  # PENDING, STARTED, PROGRESS, SUCCESS, FAILURE, RETRY, REVOKED
    done_steps: int = 0
    total_steps: int = 0
    result: dict[str, Any] | None = None
    preview: bytes | None = field(default=None, repr=False)

    @property
    def ready(self) -> bool:
        return self.state in {"SUCCESS", "FAILURE", "REVOKED"}


def decode_preview(value: Any) -> bytes | None:
    """The JPEG in a PROGRESS state's ``preview_jpeg_b64``; ``None`` for anything else, never an exception.

    The result backend is outside this process: a missing, truncated, oversized or
    non-JPEG value means "no preview", and the job goes on as if none had been sent.
    """
    if not isinstance(value, str) or not value or len(value) > (MAX_PREVIEW_BYTES + 2) // 3 * 4:
        return None
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None
    return data if data.startswith(JPEG_MAGIC) else None


def _step_count(value: Any) -> int:
    """A step count from the backend, 0 where it is not a whole number at least 0."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return 0
    try:
        return max(0, int(value))
    except (ValueError, OverflowError):
        return 0


class JobQueue(Protocol):
    async def submit(self, task_id: str, payload: dict[str, Any], queue: str) -> None: ...

    async def status(self, task_id: str) -> QueueStatus: ...

    async def forget(self, task_id: str) -> None: ...


def make_client(redis_url: str, state_dir: Path) -> Celery:
    broker, backend = broker_urls(redis_url, state_dir)
    app = Celery("mmpp-bot", broker=broker, backend=backend)
    app.conf.update(CELERY_WIRE_SETTINGS)
    return app


class CeleryJobQueue:
    """``expires_after``: seconds after sending when a worker that has not started a job drops it (the bot,
    whose patience is that long, has given up on it by then); ``None``: never."""

    def __init__(self, app: Celery, expires_after: float | None = None) -> None:
        self._app = app
        self._expires_after = expires_after

    async def submit(self, task_id: str, payload: dict[str, Any], queue: str) -> None:
        """Send by name with our own task id, so a re-send after a crash is the same job."""
        await asyncio.to_thread(
            self._app.send_task,
            GENERATE_TASK_NAME,
            args=[payload],
            task_id=task_id,
            queue=queue,
            expires=self._expires_after,
        )

    async def status(self, task_id: str) -> QueueStatus:
        return await asyncio.to_thread(self._status, task_id)

    def _status(self, task_id: str) -> QueueStatus:
        result = AsyncResult(task_id, app=self._app)
        state = result.state
        info = result.info
        if state == "PROGRESS" and isinstance(info, dict):
            return QueueStatus(
                state,
                _step_count(info.get("done", 0)),
                _step_count(info.get("total", 0)),
                preview=decode_preview(info.get("preview_jpeg_b64")),
            )
        if state == "SUCCESS":
            value = result.result
            return QueueStatus(state, result=value if isinstance(value, dict) else None)
        return QueueStatus(state)

    async def forget(self, task_id: str) -> None:
        await asyncio.to_thread(AsyncResult(task_id, app=self._app).forget)

    async def ping(self) -> bool:
        """Whether the broker accepts a connection (for /healthz)."""

        def connect() -> bool:
            with self._app.connection_for_write() as connection:
                connection.ensure_connection(max_retries=1, timeout=3)
            return True

        return await asyncio.to_thread(connect)

    async def depths(self, queues: list[str]) -> dict[str, int]:
        """Messages waiting per queue; only Redis exposes this cheaply."""
        url = self._app.conf.broker_url or ""
        if not url.startswith(("redis://", "rediss://")):
            return {}

        def read() -> dict[str, int]:
            import redis

            client = redis.Redis.from_url(url, socket_timeout=3)
            try:
                return {queue: int(client.llen(queue)) for queue in queues}
            finally:
                client.close()

        return await asyncio.to_thread(read)
