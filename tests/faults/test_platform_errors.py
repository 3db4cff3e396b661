"""The chat platform answers 429 or 5xx: the send is retried after the delay, nothing is lost, nothing doubled.

The real python-telegram-bot and discord.py talk to the loopback fakes, which inject the errors on the wire;
the job queue is scripted (the worker is not what these tests are about).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import bot.discord_app as discord_app
import bot.telegram_app as telegram_app
from bot import metrics
from bot.core import ChatCore, texts
from bot.settings import BotSettings
from bot.storage import Storage
from tests.bot.conftest import ScriptedQueue
from tests.conftest import SAMPLE_SELFIE
from tests.fakes.discord_api import (
    BOT_PERMISSIONS,
    PERMISSION_ADD_REACTIONS,
    PERMISSION_SEND_MESSAGES,
    FakeDiscord,
    RecordedRequest,
)
from tests.fakes.telegram_api import FakeTelegram
from tests.faults.conftest import ALICE, BOB, BOT_USERNAME, replies_in, telegram_bot, wait_until

CHANNEL_MESSAGES = re.compile(r"^/channels/\d+/messages$")


def photos_sent_to(fake: FakeTelegram, chat_id: int) -> int:
    return sum("photo" in message for message in fake.bot_messages(chat_id))


# ---------------------------------------------------------------------------------------------- Telegram


@pytest.mark.parametrize(
    ("method", "caption", "pictures"), [("sendPhoto", "anime", 1), ("sendMediaGroup", "anime count:2", 2)]
)
async def test_telegram_429_is_waited_out_and_the_pictures_arrive_once(
    fake_telegram: FakeTelegram, tmp_path: Path, method: str, caption: str, pictures: int
) -> None:
    fake = fake_telegram
    fake.fail_next(method, status=429, retry_after=1)
    async with telegram_bot(fake, tmp_path, job_queue=ScriptedQueue()) as bot:
        await fake.send_photo(None, ALICE, SAMPLE_SELFIE.read_bytes(), caption=caption)
        await wait_until(lambda: replies_in(fake, ALICE.id), 30, "a reply")
        await bot.core.wait_idle(timeout=10)
        await asyncio.sleep(0.5)
        calls = fake.calls(method)
        assert [call.status for call in calls] == [429, 200]
        assert calls[1].at - calls[0].at >= 1.0, "retried before retry_after had passed"
        assert replies_in(fake, ALICE.id) == ["pictures"]
        assert photos_sent_to(fake, ALICE.id) == pictures
        job = await bot.storage.job(1)
        assert job is not None and job.delivered_at
        assert await bot.storage.count("pictures", "message_ref IS NOT NULL") == pictures


@pytest.mark.parametrize(
    ("status", "html"), [(502, False), (502, True), (500, False), (503, False)], ids=["502", "502-nginx", "500", "503"]
)
async def test_telegram_5xx_is_retried_and_the_picture_arrives_once(
    fake_telegram: FakeTelegram, tmp_path: Path, status: int, html: bool
) -> None:
    """One 5xx (JSON, or the HTML page Telegram's front end sometimes sends) before the photo is stored."""
    fake = fake_telegram
    fake.fail_next("sendPhoto", status=status, html=html)
    async with telegram_bot(fake, tmp_path, job_queue=ScriptedQueue()) as bot:
        await fake.send_photo(None, ALICE, SAMPLE_SELFIE.read_bytes(), caption="anime")
        await wait_until(lambda: replies_in(fake, ALICE.id), 30, "a reply")
        await bot.core.wait_idle(timeout=10)
        await asyncio.sleep(0.5)
        assert [call.status for call in fake.calls("sendPhoto")] == [status, 200]
        assert replies_in(fake, ALICE.id) == ["pictures"] and photos_sent_to(fake, ALICE.id) == 1
        job = await bot.storage.job(1)
        assert job is not None and job.delivered_at


async def test_telegram_5xx_outage_longer_than_the_send_retries_still_delivers(
    fake_telegram: FakeTelegram, tmp_path: Path
) -> None:
    """Telegram answers 502 for ~5 s (six sends in a row): once it is back, the picture must still arrive, once."""
    fake = fake_telegram
    fake.fail_next("sendPhoto", status=502, times=6)
    async with telegram_bot(fake, tmp_path, job_queue=ScriptedQueue()):
        await fake.send_photo(None, ALICE, SAMPLE_SELFIE.read_bytes(), caption="anime")
        await wait_until(lambda: len(fake.calls("sendPhoto")) >= 4, 30, "the send attempts")
        with contextlib.suppress(AssertionError):
            await wait_until(lambda: replies_in(fake, ALICE.id), 10, "a reply after the outage")
        assert replies_in(fake, ALICE.id) == ["pictures"] and photos_sent_to(fake, ALICE.id) == 1


TELEGRAM_ORDER = f"/profile@{BOT_USERNAME} anime"


async def telegram_job_running(storage: Storage) -> bool:
    """Job 1 has been ordered (its status and any notice are sent) and the worker reports progress."""
    job = await storage.job(1)
    return job is not None and job.state == "running"


@pytest.mark.parametrize(
    ("refusal", "count", "method"),
    [("blocked", 2, "sendMediaGroup"), ("kicked", 1, "sendPhoto"), ("no photo rights", 2, "sendMediaGroup")],
)
async def test_telegram_a_chat_that_refuses_the_bot_for_good_ends_the_job_once(
    fake_telegram: FakeTelegram, tmp_path: Path, refusal: str, count: int, method: str
) -> None:
    """While the job runs the person blocks the bot, or the group removes it or stops it sending photos.
    Telegram's 403 / 400 cannot change by asking again: the pictures are tried once, not up to the retry bound,
    the job ends as DELIVERY_FAILED (recorded, counted once), and where the chat was a group the requester, who
    has a private chat with the bot, is told there."""
    fake = fake_telegram
    before = finished("failed", "DELIVERY_FAILED")
    queue = ScriptedQueue(progress_polls=20)
    async with telegram_bot(fake, tmp_path, job_queue=queue, **QUICK_RETRIES) as bot:
        await fake.send_message(None, ALICE, "/start")  # Alice's private chat with the bot exists
        await fake.wait_for(lambda call: call.method == "sendMessage" and call.params["chat_id"] == ALICE.id)
        chat = fake.private_chat(ALICE) if refusal == "blocked" else fake.group()
        caption = f"anime count:{count}" if refusal == "blocked" else f"{TELEGRAM_ORDER} count:{count}"
        await fake.send_photo(chat, ALICE, SAMPLE_SELFIE.read_bytes(), caption=caption)
        await wait_until(lambda: telegram_job_running(bot.storage), 30, "the job running")
        if refusal == "blocked":
            fake.block_bot(ALICE)
        elif refusal == "kicked":
            fake.remove_bot(chat)
        else:
            fake.forbid_photos(chat)
        await wait_until(lambda: job_delivered(bot.storage), 30, "the job ended")
        await bot.core.wait_idle(timeout=10)
        await asyncio.sleep(0.5)  # nothing more happens afterwards

        job = await bot.storage.job(1)
        assert job is not None and job.state == "failed" and job.error_code == "DELIVERY_FAILED"
        attempts = [call.status for call in fake.calls(method)]
        assert attempts == [400 if refusal == "no photo rights" else 403]  # once: a refusal for good is final
        assert photos_sent_to(fake, chat.id) == 0
        assert finished("failed", "DELIVERY_FAILED") == before + 1
        told = [call for call in fake.calls("sendMessage") if "DELIVERY_FAILED" in str(call.params.get("text"))]
        if refusal == "blocked":
            assert told == []  # the private chat is the one that refused: nowhere else to say it
        else:
            assert [(call.params["chat_id"], call.status) for call in told] == [(ALICE.id, 200)]
            assert "\n" not in told[0].params["text"]


async def test_telegram_a_group_the_requester_never_wrote_privately_in_still_ends_the_job_once(
    fake_telegram: FakeTelegram, tmp_path: Path
) -> None:
    """The bot is removed from the group and may not start a private chat with the requester: the job ends once
    all the same, its DM tried once and refused."""
    fake = fake_telegram
    async with telegram_bot(fake, tmp_path, job_queue=ScriptedQueue(progress_polls=20), **QUICK_RETRIES) as bot:
        group = fake.group()
        await fake.send_photo(group, ALICE, SAMPLE_SELFIE.read_bytes(), caption=TELEGRAM_ORDER)
        await wait_until(lambda: telegram_job_running(bot.storage), 30, "the job running")
        fake.remove_bot(group)
        await wait_until(lambda: job_delivered(bot.storage), 30, "the job ended")
        await bot.core.wait_idle(timeout=10)
        await asyncio.sleep(0.5)
        job = await bot.storage.job(1)
        assert job is not None and job.error_code == "DELIVERY_FAILED"
        assert [call.status for call in fake.calls("sendPhoto")] == [403]
        direct = [call for call in fake.calls("sendMessage") if call.params["chat_id"] == ALICE.id]
        assert [call.status for call in direct] == [400]  # "chat not found": tried once, not retried


@pytest.mark.parametrize("status", [503, 429])
async def test_telegram_an_album_is_not_posted_again_when_the_message_after_it_failed(
    fake_telegram: FakeTelegram, tmp_path: Path, status: int
) -> None:
    """Telegram takes the album (all or nothing), then the rating keyboard's message fails beyond the adapter's
    own retries (5xx, or 429 after its bounded waits): the core tries the delivery again and only the keyboard
    goes out again.  Each picture appears exactly once, the job is delivered, and the keyboard rates them."""
    fake = fake_telegram
    async with telegram_bot(fake, tmp_path, job_queue=ScriptedQueue(progress_polls=20), **QUICK_RETRIES) as bot:
        await fake.send_photo(None, ALICE, SAMPLE_SELFIE.read_bytes(), caption="anime count:3")
        await wait_until(lambda: telegram_job_running(bot.storage), 30, "the job running")
        fake.fail_next("sendMessage", status=status, retry_after=1, times=telegram_app.SEND_ATTEMPTS)
        await wait_until(lambda: job_delivered(bot.storage), 30, "the job delivered")
        await bot.core.wait_idle(timeout=10)
        await asyncio.sleep(0.5)

        albums = fake.calls("sendMediaGroup")
        assert [call.status for call in albums] == [200]  # posted once, never again
        assert photos_sent_to(fake, ALICE.id) == 3
        keyboards = [call for call in fake.calls("sendMessage") if call.params.get("text") == texts.RATE_THEM]
        assert [call.status for call in keyboards] == [status] * telegram_app.SEND_ATTEMPTS + [200]
        job = await bot.storage.job(1)
        assert job is not None and job.state == "done" and job.delivered_at
        pictures = await bot.storage.pictures(1)
        assert [picture.message_ref for picture in pictures] == [
            f"{ALICE.id}:{message['message_id']}" for message in albums[0].result
        ]
        assert job.status_message_id and (ALICE.id, int(job.status_message_id)) not in fake.messages  # removed

        await fake.press_button(keyboards[-1].result, BOB, f"rate:{pictures[2].id}:4")
        await fake.wait_for("answerCallbackQuery")

        async def bobs_rating() -> int | None:
            rater = await bot.storage.find_user("telegram", str(BOB.id))
            return None if rater is None else await bot.storage.rating(pictures[2].id, rater)

        await wait_until(lambda: _equals(bobs_rating, 4), 10, "the rating stored")


# ---------------------------------------------------------------------------------------------- Discord


@contextlib.asynccontextmanager
async def discord_bot(fake: FakeDiscord, tmp_path: Path, **overrides: Any) -> AsyncIterator[tuple[ChatCore, Storage]]:
    settings = BotSettings(
        _env_file=None, database=tmp_path / "mmpp.sqlite3", state_dir=tmp_path / "state",
        discord_api_base=fake.api_base, discord_gateway_url=fake.gateway_url, discord_guild_ready_timeout=0.05,
        poll_interval_seconds=0.05, **overrides,
    )  # fmt: skip
    storage = await Storage.open(settings.database)
    core = ChatCore(storage, ScriptedQueue(), settings)
    adapter = discord_app.DiscordAdapter(core, settings, fake.token)
    try:
        await asyncio.wait_for(adapter.open(), 30)
        await core.start()
        yield core, storage
    finally:
        await core.stop()
        await adapter.close()
        await storage.close()


def picture_messages(fake: FakeDiscord) -> list[dict[str, Any]]:
    return [
        message
        for message in fake.messages.values()
        if any(attachment["filename"].startswith("mmpp-") for attachment in message.get("attachments", []))
    ]


def channel_posts(fake: FakeDiscord) -> list[Any]:
    return [request for request in fake.requests if request.method == "POST" and CHANNEL_MESSAGES.match(request.path)]


async def wait_marked_delivered_once(fake: FakeDiscord, storage: Storage) -> None:
    """Job 1 ends marked delivered, with one picture message on the channel."""

    async def delivered() -> bool:
        job = await storage.job(1)
        return job is not None and job.delivered_at is not None

    await wait_until(delivered, 10, "the job marked delivered")
    assert len(picture_messages(fake)) == 1


@pytest.fixture
def expired_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every interaction token counts as expired, so pictures go through POST /channels/{id}/messages."""
    monkeypatch.setattr(discord_app, "TOKEN_LIFETIME_SECONDS", -1)


@pytest.mark.parametrize("status", [500, 502, 504])
async def test_discord_lost_answer_on_a_channel_message_is_retried_without_a_duplicate(
    tmp_path: Path, expired_tokens: None, status: int
) -> None:
    """Discord stores the message but the answer is a 5xx: discord.py sends again with the same nonce
    (enforce_nonce), and Discord answers with the message it already has, so the channel shows one picture."""
    async with FakeDiscord() as fake, discord_bot(fake, tmp_path) as (core, storage):
        fake.fail_next("POST", CHANNEL_MESSAGES.pattern, status=status, when="after")
        await fake.send_slash_command("profile", {"style": "anime"}, attachments={
            "photo": ("selfie.jpg", SAMPLE_SELFIE.read_bytes(), "image/jpeg")
        })  # fmt: skip
        await fake.wait_until(lambda: picture_messages(fake) or None, timeout=30)
        await core.wait_idle(timeout=30)
        await asyncio.sleep(0.5)
        posts = channel_posts(fake)
        assert [post.status for post in posts] == [status, 200]
        assert posts[0].json["nonce"] == posts[1].json["nonce"] and posts[0].json.get("enforce_nonce")
        assert posts[1].time - posts[0].time >= 1.0, "discord.py waits 1 s before retrying a 5xx"
        assert len(picture_messages(fake)) == 1
        await wait_marked_delivered_once(fake, storage)
        picture = (await storage.pictures(1))[0]
        assert picture.message_ref == picture_messages(fake)[0]["id"]


async def test_discord_503_on_a_channel_message_still_delivers_once(tmp_path: Path, expired_tokens: None) -> None:
    async with FakeDiscord() as fake, discord_bot(fake, tmp_path) as (_, storage):
        fake.fail_next("POST", CHANNEL_MESSAGES.pattern, status=503)
        await fake.send_slash_command("profile", {"style": "anime"}, attachments={
            "photo": ("selfie.jpg", SAMPLE_SELFIE.read_bytes(), "image/jpeg")
        })  # fmt: skip
        await wait_until(lambda: channel_posts(fake), 30, "the first send")
        with contextlib.suppress(AssertionError):
            await wait_until(lambda: picture_messages(fake), 10, "the picture after the 503")
        assert len(picture_messages(fake)) == 1
        await wait_marked_delivered_once(fake, storage)


SELFIE = {"photo": ("selfie.jpg", SAMPLE_SELFIE.read_bytes(), "image/jpeg")}
#: Delivery retries in a test: quick pauses, few attempts (the defaults wait minutes).
QUICK_RETRIES = {"delivery_pause_first_seconds": 0.05, "delivery_pause_max_seconds": 0.2}


def picture_posts(fake: FakeDiscord) -> list[RecordedRequest]:
    """Every request that tried to post a picture (webhook follow-up or channel send), answered or refused."""
    return [
        request
        for request in fake.requests
        if request.method == "POST" and any(file.filename.startswith("mmpp-") for file in request.files)
    ]


def finished(outcome: str, code: str) -> float:
    return metrics.JOBS_FINISHED.labels(outcome, code)._value.get()


async def job_delivered(storage: Storage, job_id: int = 1) -> bool:
    job = await storage.job(job_id)
    return job is not None and job.delivered_at is not None


async def test_discord_refused_reactions_post_each_picture_once_and_ratings_still_work(tmp_path: Path) -> None:
    """A channel where the bot may post but not add reactions (common in real servers): each picture is posted
    exactly once, the job is delivered, and people rate with the buttons under the pictures or their own
    reactions."""
    async with FakeDiscord() as fake, discord_bot(fake, tmp_path, **QUICK_RETRIES) as (core, storage):
        fake.app_permissions = BOT_PERMISSIONS & ~PERMISSION_ADD_REACTIONS
        await fake.send_slash_command("profile", {"style": "anime", "count": 2}, attachments=SELFIE)
        await wait_until(lambda: job_delivered(storage), 20, "the job marked delivered")
        await core.wait_idle(timeout=10)
        posted = sorted(file.filename for request in picture_posts(fake) for file in request.files)
        assert posted == ["mmpp-1-1.png", "mmpp-1-2.png"]  # each picture posted exactly once
        assert len(picture_messages(fake)) == 2
        assert not [request for request in fake.requests if "/reactions/" in request.path]  # none seeded

        pictures = await storage.pictures(1)
        assert [picture.message_ref for picture in pictures] == [message["id"] for message in picture_messages(fake)]
        carol = fake.add_user("carol")
        click = await fake.click_button(int(pictures[1].message_ref or 0), f"mmpp:rate:{pictures[1].id}:4", user=carol)
        reply = await fake.wait_for_callback(click)
        assert reply.accepted and reply.ephemeral and "\n" not in reply.data["content"]
        await fake.add_reaction(int(pictures[0].message_ref or 0), "5️⃣", carol)

        async def ratings() -> list[int | None]:
            rater = await storage.find_user("discord", str(carol.id))
            return [None, None] if rater is None else [await storage.rating(p.id, rater) for p in pictures]

        await wait_until(lambda: _equals(ratings, [5, 4]), 10, "both ratings stored")


async def _equals(read: Any, expected: Any) -> bool:
    return await read() == expected


async def test_discord_a_failed_picture_is_sent_again_without_reposting_the_ones_before(tmp_path: Path) -> None:
    """Picture 2's follow-up is rate limited until discord.py gives up on it: the core tries the delivery again,
    and only picture 2 goes out again; picture 1, which already has its message, is never posted twice."""
    async with FakeDiscord() as fake, discord_bot(fake, tmp_path, **QUICK_RETRIES) as (core, storage):
        fake.fail_next(
            "POST", r"^/webhooks/\d+/[^/]+$", status=429, retry_after=0.01, times=5,
            where=lambda request: any(file.filename == "mmpp-1-2.png" for file in request.files),
        )  # fmt: skip
        await fake.send_slash_command("profile", {"style": "anime", "count": 2}, attachments=SELFIE)
        await wait_until(lambda: job_delivered(storage), 20, "the job marked delivered")
        await core.wait_idle(timeout=10)
        sent = [(file.filename, request.status) for request in picture_posts(fake) for file in request.files]
        assert sent == [("mmpp-1-1.png", 200), *[("mmpp-1-2.png", 429)] * 5, ("mmpp-1-2.png", 200)]
        assert len(picture_messages(fake)) == 2


async def test_discord_past_the_token_without_send_permission_the_job_ends_once_with_a_dm(
    tmp_path: Path, expired_tokens: None
) -> None:
    """The interaction token has expired and the bot may not post in the channel: Discord's 403 is final, so the
    job ends at once, recorded as DELIVERY_FAILED and counted, and the requester is told in a direct message."""
    before = finished("failed", "DELIVERY_FAILED")
    async with FakeDiscord() as fake, discord_bot(fake, tmp_path, **QUICK_RETRIES) as (core, storage):
        fake.app_permissions = BOT_PERMISSIONS & ~PERMISSION_SEND_MESSAGES
        await fake.send_slash_command("profile", {"style": "anime"}, attachments=SELFIE)
        await wait_until(lambda: job_delivered(storage), 20, "the job ended")
        await core.wait_idle(timeout=10)
        await asyncio.sleep(0.5)  # nothing more happens afterwards
        job = await storage.job(1)
        assert job is not None and job.state == "failed" and job.error_code == "DELIVERY_FAILED"
        assert job.error_message
        refused = [
            request for request in channel_posts(fake) if request.path.startswith(f"/channels/{fake.channel_id}")
        ]
        assert [request.status for request in refused] == [403]  # one attempt: a permanent refusal is not retried
        assert refused[0].response["code"] == 50013
        assert finished("failed", "DELIVERY_FAILED") == before + 1
        direct = fake.dm_messages(fake.default_user)
        assert len(direct) == 1 and "DELIVERY_FAILED" in direct[0]["content"] and "\n" not in direct[0]["content"]


async def test_discord_past_the_token_with_dms_closed_the_job_still_ends_once(
    tmp_path: Path, expired_tokens: None
) -> None:
    async with FakeDiscord() as fake, discord_bot(fake, tmp_path, **QUICK_RETRIES) as (core, storage):
        fake.app_permissions = BOT_PERMISSIONS & ~PERMISSION_SEND_MESSAGES
        fake.closed_dms.add(fake.default_user.id)
        await fake.send_slash_command("profile", {"style": "anime"}, attachments=SELFIE)
        await wait_until(lambda: job_delivered(storage), 20, "the job ended")
        await core.wait_idle(timeout=10)
        await asyncio.sleep(0.5)
        job = await storage.job(1)
        assert job is not None and job.error_code == "DELIVERY_FAILED"
        dm_channel = fake.dm_channels[fake.default_user.id]
        dm_attempts = [request for request in channel_posts(fake) if request.path == f"/channels/{dm_channel}/messages"]
        assert [request.status for request in dm_attempts] == [403]  # tried once, refused, not retried
        assert len(channel_posts(fake)) == 2


async def test_discord_a_channel_that_keeps_failing_is_given_up_within_the_bound(
    tmp_path: Path, expired_tokens: None
) -> None:
    """503 on every channel send (discord.py does not retry a 503 itself): the core tries again with growing
    pauses, at most ``delivery_attempts`` times, then ends the job as DELIVERY_FAILED, once."""
    async with FakeDiscord() as fake, discord_bot(fake, tmp_path, delivery_attempts=3, **QUICK_RETRIES) as (
        core, storage,
    ):  # fmt: skip
        fake.fail_next("POST", CHANNEL_MESSAGES.pattern, status=503, times=1000)
        await fake.send_slash_command("profile", {"style": "anime"}, attachments=SELFIE)
        await wait_until(lambda: job_delivered(storage), 20, "the job given up")
        await core.wait_idle(timeout=10)
        await asyncio.sleep(0.5)
        attempts = [request for request in picture_posts(fake) if request.path.startswith("/channels/")]
        assert [request.status for request in attempts] == [503, 503, 503]
        pauses = [later.time - earlier.time for earlier, later in itertools.pairwise(attempts)]
        assert pauses[1] > pauses[0]  # growing pauses
        job = await storage.job(1)
        assert job is not None and job.error_code == "DELIVERY_FAILED"
