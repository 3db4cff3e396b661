"""A real ``mmpp run`` process (Discord, SQLite) SIGKILLed after Discord created a picture's follow-up message but
before the bot heard its id (the fake holds the answer back), then started again.

What must hold: the picture whose message exists but was never recorded ("in doubt": its post started, no message
reference) is found in the channel's messages and recorded, not posted again, so every picture is there once; where
the bot may not read the channel back, it is posted again (at least once, one line in the log) and the job is still
delivered.  Webhook follow-ups, the path while the interaction token lives, carry no nonce: without the look in the
channel the person would get the picture twice.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from bot.storage import Storage
from tests.bot.discord_app.test_discord import selfie_attachment
from tests.fakes.discord_api import BOT_PERMISSIONS, PERMISSION_VIEW_CHANNEL, FakeDiscord, RecordedRequest
from tests.faults.conftest import wait_until
from tests.faults.test_postgres_processes import BotProcess, connected, fake, pictures_posted, processes

__all__ = ["fake", "processes"]  # the fixtures, shared with the PostgreSQL processes' tests

FIRST_PICTURE = "mmpp-1-1.png"


def sqlite_process(fake: FakeDiscord, queue: str, folder: Path, processes: list[BotProcess]) -> BotProcess:
    """Shard 0 of two (its claimant's name stays the same across restarts), on an SQLite file."""
    process = BotProcess(fake, 0, "", queue, folder)
    process.environment.pop("MMPP_DATABASE_URL")
    process.environment["MMPP_DATABASE"] = str(folder / "mmpp.sqlite3")
    processes.append(process)
    return process


def first_picture_upload(request: RecordedRequest) -> bool:
    return any(file.filename == FIRST_PICTURE for file in request.files)


@pytest.mark.parametrize("readable", [True, False], ids=["history-readable", "history-refused"])
async def test_a_process_killed_before_hearing_of_its_followup_posts_that_picture_once(
    fake: FakeDiscord, redis_worker: str, tmp_path: Path, processes: list[BotProcess], readable: bool
) -> None:
    _, channel = fake.add_guild(shard=(0, 2))
    bot = sqlite_process(fake, redis_worker, tmp_path, processes)
    bot.start()
    await connected(fake, bot)
    # The first picture's follow-up is created at once; its answer (the message id) never reaches this process.
    held = fake.fail_next("POST", r"^/webhooks/\d+/[^/]+$", when="held", retry_after=600, where=first_picture_upload)
    await fake.send_slash_command(
        "profile", {"style": "anime", "count": 2}, attachments=selfie_attachment(), channel_id=channel
    )
    await wait_until(lambda: held.hits and pictures_posted(fake)[(1, 1)], 120, f"the first picture\n{bot.log_tail()}")
    bot.kill()

    storage = await Storage.open(tmp_path / "mmpp.sqlite3")
    try:
        first, second = await storage.pictures(1)
        assert first.in_doubt and second.message_ref is None  # the window: a message exists, none recorded
        assert pictures_posted(fake) == Counter({(1, 1): 1})
        if not readable:
            fake.app_permissions = BOT_PERMISSIONS & ~PERMISSION_VIEW_CHANNEL  # follow-ups need no permission

        starts = bot.connections()
        bot.start()
        await connected(fake, bot, starts_before=starts)

        async def delivered() -> bool:
            job = await storage.job(1)
            return job is not None and job.delivered_at is not None

        await wait_until(delivered, 60, f"the job to be delivered\n{bot.log_tail()}")
        reads = [r for r in fake.requests if r.method == "GET" and r.path == f"/channels/{channel}/messages"]
        log = bot.log.read_text(errors="replace")
        held_message = next(
            m for m in fake.channel_messages(channel) if any(a["filename"] == FIRST_PICTURE for a in m["attachments"])
        )
        first, second = await storage.pictures(1)
        if readable:
            assert pictures_posted(fake) == Counter({(1, 1): 1, (1, 2): 1}), "a picture posted twice"
            assert [read.status for read in reads] == [200]  # one look, for the job's pictures in doubt
            assert first.message_ref == held_message["id"]  # its ratings reach it
            assert "posted before its message was recorded" in log
        else:  # at least once: the person may see the first picture twice, but gets every picture
            assert [(read.status, read.response["code"]) for read in reads] == [(403, 50001)]
            assert pictures_posted(fake) == Counter({(1, 1): 2, (1, 2): 1})
            assert first.message_ref is not None and first.message_ref != held_message["id"]
            assert log.count(f"cannot read channel {channel} back") == 1
        assert second.message_ref is not None
        assert "Traceback" not in log[log.rfind("resuming job 1") :], bot.log_tail()
        assert bot.alive(), bot.log_tail()
    finally:
        await storage.close()
