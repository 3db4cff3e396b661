"""Telegram groups as they are: flood limits per chat and per group (the fake enforces them, 429 with retry_after),
no reaction updates for a bot that is not an administrator, and privacy mode with several bots in the group."""

from __future__ import annotations

import itertools
from pathlib import Path

from bot.core import texts
from bot.telegram_app import CHAT_BURST, CHAT_RESERVE, GROUP_PER_MINUTE, GROUP_RESERVE
from tests.bot.conftest import ScriptedQueue
from tests.bot.telegram_app.conftest import (
    ALICE,
    BOB,
    BOT_USERNAME,
    CAROL,
    DAN,
    ERIN,
    OTHER_BOT,
    STATUS_EDITS,
    TOKEN,
    in_chat,
    running_bot,
    texts_sent,
)
from tests.conftest import SAMPLE_SELFIE
from tests.fakes.telegram_api import Call, FakeTelegram

ORDER = f"/profile@{BOT_USERNAME} anime"


def telegram_with_flood_limits() -> FakeTelegram:
    """About one message a second per chat with short bursts, 20 a minute per group: Telegram's limits."""
    return FakeTelegram(token=TOKEN, per_chat_interval=1.0, per_chat_burst=CHAT_BURST, group_per_minute=20)


def counted(calls: list[Call]) -> list[Call]:
    """What Telegram's flood limits count: messages sent and edited (an album counts its size)."""
    return [
        call
        for call in calls
        if call.ok and call.method.startswith(("send", "edit")) and call.method != "sendChatAction"
    ]


def size(call: Call) -> int:
    return len(call.result) if call.method == "sendMediaGroup" else 1


def most_in_a_window(calls: list[Call], seconds: float) -> int:
    times = sorted(itertools.chain.from_iterable([call.at] * size(call) for call in calls))
    return max((sum(1 for other in times if start <= other < start + seconds) for start in times), default=0)


async def test_a_busy_group_gets_every_picture_and_reply_and_status_edits_leave_them_room(tmp_path: Path) -> None:
    """Five people order at once in one group, one asks for help meanwhile; live status edits with previews.
    Every picture and reply arrives once, nothing is refused as too many, no error reaches anyone, and each
    status edit was made only while the chat and the group had room left for a picture right after it."""
    queue = ScriptedQueue(progress_polls=200, previews_every=1)
    async with telegram_with_flood_limits() as fake, running_bot(fake, tmp_path, queue) as bot:
        group = fake.group()
        people = (ALICE, BOB, CAROL, DAN, ERIN)
        for person in people:
            await fake.send_photo(group, person, SAMPLE_SELFIE.read_bytes(), caption=ORDER)
        await fake.send_message(group, ALICE, f"/help@{BOT_USERNAME}")
        await fake.wait_for(lambda call: len([c for c in fake.calls("sendPhoto") if c.ok]) == len(people), timeout=120)
        await bot.core.wait_idle(timeout=60)

        calls = in_chat(fake, group.id)
        assert not [call for call in calls if call.status == 429], "a request was refused as too many"
        pictures = [call for call in fake.calls("sendPhoto") if call.ok]
        assert len(pictures) == len(people) and len(fake.calls("sendPhoto")) == len(people)  # once each
        for job in await bot.storage.recent_jobs(1) + [
            job for n in range(2, 6) for job in await bot.storage.recent_jobs(n)
        ]:
            assert job.delivered_at and [picture.message_ref for picture in await bot.storage.pictures(job.id)]
        sent = texts_sent(fake, group.id)
        assert any(f"/profile@{BOT_USERNAME}" in text for text in sent)  # the help reply
        assert sent.count(texts.REACTIONS_UNSEEN) == 1
        assert not [text for text in sent if text.startswith("⚠️")]

        edits = [call for call in counted(calls) if call.method in STATUS_EDITS]
        assert edits, "no status edit at all: the test would show nothing"
        assert most_in_a_window(edits, 60.0) <= 60 / 12  # a quarter of the group's 20 a minute at most
        assert most_in_a_window(counted(calls), 60.0) <= GROUP_PER_MINUTE
        for edit in edits:
            before = [call for call in counted(calls) if call.at <= edit.at]
            in_the_minute = sum(size(call) for call in before if edit.at - call.at < 60.0)
            in_the_burst = sum(1 for call in before if edit.at - call.at < CHAT_BURST * 1.0)
            assert in_the_minute <= GROUP_PER_MINUTE - GROUP_RESERVE, "an edit took the group's reserve"
            assert in_the_burst <= CHAT_BURST - CHAT_RESERVE, "an edit took the chat's last slot"


async def test_a_429_stops_the_chats_status_edits_for_its_retry_after(tmp_path: Path) -> None:
    """Telegram refuses a status edit as too many (retry after 5 s): no status edit in that chat for 5 s (the
    pace alone would edit every 2 s), then they resume; the picture comes once, nobody sees an error."""
    async with FakeTelegram(token=TOKEN) as fake, running_bot(fake, tmp_path, ScriptedQueue(progress_polls=150)) as bot:
        fake.fail_next("editMessageText", 429, retry_after=5)
        chat = fake.private_chat(ALICE)
        await fake.send_photo(chat, ALICE, SAMPLE_SELFIE.read_bytes(), caption="anime")
        await fake.wait_for("sendPhoto", timeout=60)
        await bot.core.wait_idle(timeout=30)

        edits = [call for call in in_chat(fake, chat.id) if call.method in STATUS_EDITS]
        refused = edits[0]
        assert refused.status == 429
        after = [call for call in edits[1:]]
        assert after, "the status edits never resumed"
        assert after[0].at - refused.at >= 5.0  # held for the retry_after
        assert all(call.ok for call in after)
        assert len(fake.calls("sendPhoto")) == 1
        assert not [text for text in texts_sent(fake, chat.id) if text.startswith("⚠️")]


async def test_a_group_where_reactions_never_arrive_is_told_once_and_the_buttons_still_rate(tmp_path: Path) -> None:
    async with FakeTelegram(token=TOKEN) as fake:
        group = fake.group()  # the bot is a member, not an administrator: Telegram sends it no reactions from here
        async with running_bot(fake, tmp_path) as bot:
            await fake.send_message(group, ALICE, f"/start@{BOT_USERNAME}")
            await fake.wait_for(lambda call: call.method == "sendMessage" and "selfie" in call.params["text"])
            await fake.send_message(group, BOB, f"/styles@{BOT_USERNAME}")
            await fake.send_photo(group, BOB, SAMPLE_SELFIE.read_bytes(), caption=ORDER)
            picture = await fake.wait_for("sendPhoto", timeout=30)
            await bot.core.wait_idle(timeout=30)
            assert texts_sent(fake, group.id).count(texts.REACTIONS_UNSEEN) == 1
            assert len(fake.calls("getChatMember")) == 1  # asked once; then the notice is remembered

            (job,) = await bot.storage.recent_jobs(await bot.storage.find_user("telegram", str(BOB.id)))
            (stored,) = await bot.storage.pictures(job.id)
            assert await fake.react(group, picture.result["message_id"], ALICE, new=["🔥"]) is None  # never arrives
            await fake.press_button(picture.result, ALICE, f"rate:{stored.id}:5")
            await fake.wait_for(lambda call: call.method == "answerCallbackQuery" and call.ok)
            assert await bot.storage.rating(stored.id, await bot.storage.find_user("telegram", str(ALICE.id))) == 5

        start = len(fake.calls())
        async with running_bot(fake, tmp_path) as bot:  # a restart: the notice is remembered in the database
            await fake.send_message(group, ALICE, f"/help@{BOT_USERNAME}")
            await fake.wait_for(lambda call: call.method == "sendMessage", start=start)
            assert texts_sent(fake, group.id).count(texts.REACTIONS_UNSEEN) == 1
            assert len(fake.calls("getChatMember")) == 1

            administered = fake.group(-1007770001, "Admins", bot_is_admin=True)
            for count, command in enumerate(("/start", "/styles"), start=1):
                await fake.send_message(administered, ALICE, f"{command}@{BOT_USERNAME}")
                await fake.wait_for(lambda call, count=count: len(texts_sent(fake, administered.id)) == count)
            assert texts.REACTIONS_UNSEEN not in texts_sent(fake, administered.id)
            assert len(fake.calls("getChatMember")) == 2  # once for this group too; a group that sees is not re-asked


async def test_help_in_a_group_names_the_form_that_reaches_this_bot(tmp_path: Path) -> None:
    """With another bot in the group that wrote last, a plain /help goes to that bot (privacy mode); /help@ThisBot
    reaches this one, and its answer names /profile@ThisBot, which works in captions too, in any case."""
    async with FakeTelegram(token=TOKEN) as fake, running_bot(fake, tmp_path) as bot:
        group = fake.group(other_bots=[OTHER_BOT])
        fake.bot_writes(group, OTHER_BOT, "I am the other bot")
        await fake.send_message(group, ALICE, "/help")
        await fake.send_message(group, ALICE, f"/help@{BOT_USERNAME}")
        reply = await fake.wait_for(lambda call: call.method == "sendMessage" and "selfie" in call.params["text"])
        assert f"/profile@{BOT_USERNAME} anime" in reply.params["text"]
        assert [dropped.payload.get("text") for dropped in fake.dropped if dropped.kind == "message"] == ["/help"]

        await fake.send_message(group, BOB, f"/profile@{BOT_USERNAME}")
        await fake.wait_for(lambda call: call.method == "sendMessage" and "Send a selfie" in call.params["text"])
        await fake.send_photo(group, BOB, SAMPLE_SELFIE.read_bytes(), caption=f"/profile@{BOT_USERNAME.lower()} comic")
        sent = await fake.wait_for("sendPhoto", timeout=30)
        assert "Comic" in sent.params["caption"]
        await bot.core.wait_idle(timeout=30)

        await fake.send_message(None, ALICE, "/help")
        private = await fake.wait_for(
            lambda call: (
                call.method == "sendMessage" and call.params["chat_id"] == ALICE.id and "selfie" in call.params["text"]
            )
        )
        assert f"@{BOT_USERNAME}" not in private.params["text"]  # in a private chat every command is this bot's
