"""The Telegram fake's rules on inline buttons, as the Bot API states them: a button's callback_data is 1-64 bytes
(bytes, not characters: "✓" takes three), a callback answer's text 0-200 characters, and editing a message to what
it already shows is refused ("message is not modified"), so a bot's keyboard is tested as Telegram would take it."""

from __future__ import annotations

import pytest
from telegram import InlineKeyboardButton, InlineKeyboardMarkup
from telegram.error import BadRequest
from telegram.ext import Application, ApplicationBuilder

from tests.fakes.telegram_api import FakeTelegram, FakeUser

TOKEN = "123456:TEST-secret_token"
ALICE = FakeUser(1001, "Alice", "alice")


def build_app(fake: FakeTelegram) -> Application:
    return ApplicationBuilder().token(fake.token).base_url(fake.base_url).base_file_url(fake.base_file_url).build()


def keyboard(data: str) -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup([[InlineKeyboardButton("press", callback_data=data)]])


async def test_callback_data_is_one_to_64_bytes() -> None:
    async with FakeTelegram(token=TOKEN) as fake, build_app(fake) as app:
        chat = fake.private_chat(ALICE)
        fits = "s:" + "✓" * 20 + "x" * 2  # 2 + 60 + 2 = 64 bytes, 24 characters
        assert len(fits.encode()) == 64
        assert await app.bot.send_message(chat.id, "ok", reply_markup=keyboard(fits))
        for too_long in ("x" * 65, "s:" + "✓" * 21):  # 65 bytes; 65 bytes in 23 characters
            with pytest.raises(BadRequest, match=r"(?i)button_data_invalid"):
                await app.bot.send_message(chat.id, "no", reply_markup=keyboard(too_long))
        message = await app.bot.send_message(chat.id, "edit me", reply_markup=keyboard("a"))
        with pytest.raises(BadRequest, match=r"(?i)button_data_invalid"):
            await app.bot.edit_message_text("edited", chat_id=chat.id, message_id=message.message_id,
                                            reply_markup=keyboard("y" * 65))  # fmt: skip


async def test_an_answer_is_at_most_200_characters_and_an_edit_must_change_something() -> None:
    async with FakeTelegram(token=TOKEN) as fake, build_app(fake) as app:
        chat = fake.private_chat(ALICE)
        message = await app.bot.send_message(chat.id, "Your defaults", reply_markup=keyboard("set:1:mode:fast"))
        query = await fake.press_button(message.to_dict(), ALICE, "set:1:mode:fast")
        with pytest.raises(BadRequest):
            await app.bot.answer_callback_query(query, "x" * 201)
        assert await app.bot.answer_callback_query(query, "x" * 200)
        with pytest.raises(BadRequest, match=r"(?i)message is not modified"):
            await app.bot.edit_message_text(
                "Your defaults",
                chat_id=chat.id,
                message_id=message.message_id,
                reply_markup=keyboard("set:1:mode:fast"),
            )
