"""The real Telegram adapter (python-telegram-bot) against the loopback Bot API, with the real core and database
and a scripted queue in place of the worker: for tests about what the adapter sends and when, not about pictures."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot.core import ChatCore
from bot.storage import Storage
from bot.telegram_app import TelegramAdapter
from tests.bot.conftest import ScriptedQueue
from tests.conftest import REDIS_URL
from tests.fakes.telegram_api import Call, FakeTelegram, FakeUser
from tests.support.telegram import telegram_settings

TOKEN = "123456:TEST-token-abcdefghijklmnopqrstuvwxyz"
BOT_USERNAME = "MmppTestBot"
ALICE = FakeUser(1001, "Alice", username="alice")
BOB = FakeUser(1002, "Bob", username="bob")
CAROL = FakeUser(1003, "Carol", username="carol")
DAN = FakeUser(1004, "Dan", username="dan")
ERIN = FakeUser(1005, "Erin", username="erin")
OTHER_BOT = FakeUser(777, "Other bot", username="OtherBot", is_bot=True)
STATUS_EDITS = frozenset({"editMessageText", "editMessageCaption", "editMessageMedia"})


@dataclass
class Bot:
    fake: FakeTelegram
    core: ChatCore
    storage: Storage
    adapter: TelegramAdapter
    queue: ScriptedQueue


@asynccontextmanager
async def running_bot(
    fake: FakeTelegram, tmp_path: Path, queue: ScriptedQueue | None = None, **settings: Any
) -> AsyncIterator[Bot]:
    """The bot as ``mmpp run`` starts it (adapter open, core started, polling), stopped however the test ends."""
    bot_settings = telegram_settings(fake, tmp_path, redis_url=REDIS_URL, queue="unused", **settings)
    storage = await Storage.open(bot_settings.database)
    job_queue = queue or ScriptedQueue()
    core = ChatCore(storage, job_queue, bot_settings)
    adapter = TelegramAdapter(core, bot_settings, TOKEN)
    try:
        await adapter.open()
        await core.start()
        await fake.wait_polling()
        yield Bot(fake, core, storage, adapter, job_queue)
    finally:
        await core.stop()
        await adapter.close()
        await storage.close()


def texts_sent(fake: FakeTelegram, chat_id: int | None = None) -> list[str]:
    """Every text the bot sent (answered or not), oldest first."""
    return [
        str(call.params.get("text", ""))
        for call in fake.calls("sendMessage")
        if chat_id is None or call.params.get("chat_id") == chat_id
    ]


def in_chat(fake: FakeTelegram, chat_id: int) -> list[Call]:
    return [call for call in fake.calls() if call.params.get("chat_id") == chat_id]
