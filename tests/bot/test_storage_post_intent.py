"""A picture's started post (migration 0011) on both engines: what makes a picture "in doubt" after a crash."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bot.storage import Storage


@pytest.fixture(params=["sqlite", "postgresql"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> Path | str:
    if request.param == "sqlite":
        return tmp_path / "db.sqlite3"
    return str(request.getfixturevalue("postgres_url"))


async def test_a_started_post_without_a_message_is_in_doubt_and_keeps_its_first_start(location: Path | str) -> None:
    storage = await Storage.open(location)
    try:
        owner = await storage.ensure_user("test", f"owner-{uuid.uuid4().hex[:6]}")
        job, _ = await storage.create_job(
            task_id=str(uuid.uuid4()), user_id=owner, platform="test", event_key=uuid.uuid4().hex, chat_id="chat",
            style="anime", prompt="", mode=None, picture_count=2, seed=1, selfie=b"x", reply_context={},
            queue="mmpp",
        )  # fmt: skip
        first, second = await storage.store_pictures(job.id, [(1, b"a"), (2, b"b")])
        assert not first.in_doubt and first.post_started_at is None  # never tried: just unposted
        await storage.set_picture_message(first.id, "message-1")
        started = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
        await storage.mark_posts_started(job.id, started)
        await storage.mark_posts_started(job.id, started + timedelta(minutes=5))  # a later attempt
        first, second = await storage.pictures(job.id)
        assert first.post_started_at is None and not first.in_doubt  # posted before: not touched
        assert second.in_doubt and datetime.fromisoformat(second.post_started_at or "") == started
        await storage.set_picture_message(second.id, "message-2")
        assert not (await storage.pictures(job.id))[1].in_doubt
    finally:
        await storage.close()
