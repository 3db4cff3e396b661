"""The Telegram fake, driven by the real python-telegram-bot ``Application`` with a tiny handler set.

These tests pin two things: that PTB runs unchanged against the fake (so the Telegram adapter's
tests can trust it), and what PTB itself does at the edges the adapter must handle (a 429, a
repeated update, a command in a photo caption, the token in download URLs and in httpx's logs).
"""

from __future__ import annotations

import asyncio
import importlib.util
import io
import logging
import struct
import zlib
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from telegram import BotCommand, InlineKeyboardButton, InlineKeyboardMarkup, InputMediaPhoto, Update
from telegram.error import BadRequest, EndPointNotFound, NetworkError, RetryAfter, TimedOut
from telegram.ext import (
    AIORateLimiter,
    Application,
    ApplicationBuilder,
    CallbackQueryHandler,
    CommandHandler,
    ContextTypes,
    MessageHandler,
    MessageReactionHandler,
    filters,
)

from tests.fakes.telegram_api import CLIENT_CLOSED, MAX_DOWNLOAD_BYTES, MAX_PHOTO_BYTES, FakeTelegram, FakeUser

TOKEN = "123456:TEST-secret_token"
ALICE = FakeUser(1001, "Alice", "alice")
BOB = FakeUser(1002, "Bob")
Context = ContextTypes.DEFAULT_TYPE


def png(width: int, height: int, rgb: tuple[int, int, int] = (200, 80, 40)) -> bytes:
    """A valid single-colour PNG, built by hand so the test needs no imaging library."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + bytes(rgb) * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


async def until(condition: Callable[[], Any], timeout: float = 3.0) -> None:
    """Wait, bounded, for something a handler does; fails with the timeout instead of hanging."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


@pytest.fixture
async def fake() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram(token=TOKEN, max_long_poll=1.0) as server:
        yield server


def build_app(fake: FakeTelegram) -> Application:
    return ApplicationBuilder().token(fake.token).base_url(fake.base_url).base_file_url(fake.base_file_url).build()


@asynccontextmanager
async def polling(
    app: Application, fake: FakeTelegram, allowed_updates: Sequence[str] = (Update.MESSAGE, Update.CALLBACK_QUERY)
) -> AsyncIterator[Application]:
    """Run the bot the way production does (long polling), and always stop it within a bounded time.

    ``timeout=1`` keeps each long poll short; ``updater.stop()`` cancels the poll in flight and
    makes one last ``getUpdates`` (timeout 0) that confirms the offset of everything fetched.
    """
    async with asyncio.timeout(10):
        await app.initialize()
        await app.start()
        await app.updater.start_polling(allowed_updates=list(allowed_updates), poll_interval=0, timeout=1)
        await fake.wait_polling()
    try:
        yield app
    finally:
        async with asyncio.timeout(10):
            if app.updater.running:
                await app.updater.stop()
            if app.running:
                await app.stop()
            await app.shutdown()


async def test_start_gets_a_reply_and_offsets_are_confirmed(fake: FakeTelegram) -> None:
    async def start(update: Update, context: Context) -> None:
        await update.message.reply_text(f"Hi {update.effective_user.first_name}")

    app = build_app(fake)
    app.add_handler(CommandHandler("start", start))
    async with polling(app, fake):
        sent = await fake.send_message(None, ALICE, "/start")
        call = await fake.wait_for("sendMessage")

    assert sent["entities"] == [{"type": "bot_command", "offset": 0, "length": 6}]
    assert call.params["chat_id"] == ALICE.id
    assert call.params["text"] == "Hi Alice"
    assert call.result["chat"] == {"id": ALICE.id, "type": "private", "username": "alice", "first_name": "Alice"}
    assert [c.method for c in fake.calls()[:2]] == ["getMe", "deleteWebhook"]
    assert fake.allowed_updates_history[0] == ["message", "callback_query"]
    assert fake.pending_updates == []  # the final getUpdates on stop confirmed the offset


async def test_photo_with_caption_downloads_the_same_bytes(fake: FakeTelegram, selfie_bytes: bytes) -> None:
    got: dict[str, Any] = {}

    async def on_photo(update: Update, context: Context) -> None:
        message = update.message
        file = await message.photo[-1].get_file()
        got.update(data=bytes(await file.download_as_bytearray()), url=file.file_path, caption=message.caption)
        got["sizes"] = [(size.width, size.height) for size in message.photo]
        await message.reply_text("working on it")

    async def on_command(update: Update, context: Context) -> None:
        got["command_handler"] = True

    app = build_app(fake)
    app.add_handler(CommandHandler("profile", on_command))
    app.add_handler(MessageHandler(filters.PHOTO, on_photo))
    async with polling(app, fake):
        sent = await fake.send_photo(None, ALICE, selfie_bytes, caption="/profile watercolor")
        await fake.wait_for("sendMessage")

    assert got["data"] == selfie_bytes
    assert got["caption"] == "/profile watercolor"
    assert sent["caption_entities"] == [{"type": "bot_command", "offset": 0, "length": 8}]
    # PTB's CommandHandler only reads message.text: a command in a caption needs a MessageHandler.
    assert "command_handler" not in got
    # Telegram's variants: small thumbnails first, the original last.
    assert max(got["sizes"][0]) <= 90
    assert got["sizes"] == sorted(got["sizes"])
    # The download URL carries the bot token, so it must never be logged.
    assert got["url"].startswith(fake.base_file_url + TOKEN + "/")
    assert TOKEN in fake.calls("downloadFile")[-1].path


async def test_send_media_group_returns_two_messages(fake: FakeTelegram) -> None:
    red, blue = png(64, 64, (255, 0, 0)), png(48, 32, (0, 0, 255))
    result: dict[str, Any] = {}

    async def album(update: Update, context: Context) -> None:
        media = [InputMediaPhoto(red, caption="two styles"), InputMediaPhoto(blue)]
        result["messages"] = await context.bot.send_media_group(update.effective_chat.id, media)
        again = await context.bot.get_file(result["messages"][1].photo[-1].file_id)
        result["again"] = bytes(await again.download_as_bytearray())

    app = build_app(fake)
    app.add_handler(CommandHandler("album", album))
    async with polling(app, fake):
        await fake.send_message(None, ALICE, "/album")
        await fake.wait_for("downloadFile")
        await until(lambda: "again" in result)

    first, second = result["messages"]
    assert first.media_group_id == second.media_group_id is not None
    assert second.message_id == first.message_id + 1
    assert first.caption == "two styles" and second.caption is None
    assert (second.photo[-1].width, second.photo[-1].height) == (48, 32)
    call = fake.calls("sendMediaGroup")[0]
    assert sorted(part.data for part in call.files.values()) == sorted([red, blue])
    assert [item["media"].startswith("attach://") for item in call.params["media"]] == [True, True]
    assert result["again"] == blue  # the bot can fetch its own uploads by file_id


async def test_inline_button_press_reaches_callback_handler(fake: FakeTelegram) -> None:
    pressed: list[str] = []

    async def rate(update: Update, context: Context) -> None:
        keyboard = [
            [
                InlineKeyboardButton("👍", callback_data="rate:1:up"),
                InlineKeyboardButton("👎", callback_data="rate:1:down"),
            ]
        ]
        await update.message.reply_text("Rate it", reply_markup=InlineKeyboardMarkup(keyboard))

    async def on_button(update: Update, context: Context) -> None:
        query = update.callback_query
        pressed.append(query.data)
        await query.answer("Thanks!")
        await query.edit_message_text(f"Rated {query.data}")

    app = build_app(fake)
    app.add_handler(CommandHandler("rate", rate))
    app.add_handler(CallbackQueryHandler(on_button, pattern=r"^rate:"))
    async with polling(app, fake):
        await fake.send_message(None, ALICE, "/rate")
        await fake.wait_for("sendMessage")
        message = fake.last_bot_message(ALICE.id)
        query_id = await fake.press_button(message, ALICE, "rate:1:up")
        await fake.wait_for("editMessageText")

    assert pressed == ["rate:1:up"]
    assert fake.calls("answerCallbackQuery")[0].ok
    assert fake.callback_answers[query_id]["text"] == "Thanks!"
    edited = fake.messages[(ALICE.id, message["message_id"])]
    assert edited["text"] == "Rated rate:1:up"
    assert "reply_markup" not in edited  # editing text without reply_markup drops the keyboard, as on Telegram
    with pytest.raises(ValueError, match="no button"):
        await fake.press_button(message, ALICE, "rate:1:down")


async def test_message_reaction_reaches_handler_when_asked_for(fake: FakeTelegram) -> None:
    seen: list[tuple[int, list[str], list[str]]] = []

    async def start(update: Update, context: Context) -> None:
        await update.message.reply_text("here is your picture")

    async def on_reaction(update: Update, context: Context) -> None:
        reaction = update.message_reaction
        old = [r.emoji for r in reaction.old_reaction]
        seen.append((reaction.message_id, old, [r.emoji for r in reaction.new_reaction]))

    app = build_app(fake)
    app.add_handler(CommandHandler("start", start))
    app.add_handler(MessageReactionHandler(on_reaction))
    async with polling(app, fake, allowed_updates=[Update.MESSAGE, Update.MESSAGE_REACTION]):
        await fake.send_message(None, ALICE, "/start")
        message_id = (await fake.wait_for("sendMessage")).result["message_id"]
        await fake.react(None, message_id, ALICE, new=["👍"])
        await fake.react(None, message_id, ALICE, old=["👍"], new=["🔥"])
        await until(lambda: len(seen) == 2)

    assert seen == [(message_id, [], ["👍"]), (message_id, ["👍"], ["🔥"])]


async def test_message_reaction_is_not_delivered_unless_asked_for(fake: FakeTelegram) -> None:
    seen: list[Update] = []

    async def on_reaction(update: Update, context: Context) -> None:
        seen.append(update)

    app = build_app(fake)
    app.add_handler(MessageReactionHandler(on_reaction))
    group = fake.group(bot_is_admin=False)
    async with polling(app, fake, allowed_updates=[Update.MESSAGE]):
        picture = await fake.send_message(None, ALICE, "hello")
        await fake.react(None, picture["message_id"], ALICE, new=["👍"])
        await until(lambda: any(d.kind == "message_reaction" for d in fake.dropped))
        in_group = await fake.send_message(group, ALICE, "/start")
        assert await fake.react(group, in_group["message_id"], ALICE, new=["👍"]) is None  # bot is no admin there

    assert seen == []
    assert [d.reason for d in fake.dropped if d.kind == "message_reaction"] == [
        "'message_reaction' is not in the bot's allowed_updates",
        "the bot is not an administrator of the group",
    ]


async def test_set_my_commands_is_recorded(fake: FakeTelegram) -> None:
    app = build_app(fake)
    async with app:  # initialize/shutdown without polling: enough for plain API calls
        await app.bot.set_my_commands([BotCommand("start", "Begin"), BotCommand("profile", "Make a picture")])
        commands = await app.bot.get_my_commands()
        with pytest.raises(BadRequest, match=r"(?i)bot_command_invalid"):
            await app.bot.set_my_commands([BotCommand("Profile-Pic", "uppercase and dashes are refused")])

    assert [(c.command, c.description) for c in commands] == [("start", "Begin"), ("profile", "Make a picture")]
    assert fake.calls("setMyCommands")[0].params["commands"] == [
        {"command": "start", "description": "Begin"},
        {"command": "profile", "description": "Make a picture"},
    ]
    assert fake.my_commands() == fake.calls("setMyCommands")[0].params["commands"]


async def test_retry_after_is_raised_and_not_retried(fake: FakeTelegram) -> None:
    errors: list[BaseException] = []

    async def start(update: Update, context: Context) -> None:
        await update.message.reply_text("hello")

    async def on_error(update: object, context: Context) -> None:
        errors.append(context.error)

    app = build_app(fake)
    app.add_handler(CommandHandler("start", start))
    app.add_error_handler(on_error)
    fake.fail_next("sendMessage", 429, retry_after=2)
    async with polling(app, fake):
        await fake.send_message(None, ALICE, "/start")
        await until(lambda: errors)
        await asyncio.sleep(0.3)  # room for a retry, had PTB made one

    assert isinstance(errors[0], RetryAfter)
    # (``.retry_after`` is an int with a PTBDeprecationWarning in 22.x, a timedelta later; the text is stable.)
    assert str(errors[0]) == "Flood control exceeded. Retry in 2 seconds"
    [call] = fake.calls("sendMessage")
    assert call.status == 429
    assert call.response == {
        "ok": False,
        "error_code": 429,
        "description": "Too Many Requests: retry after 2",
        "parameters": {"retry_after": 2},
    }


async def test_aio_rate_limiter_retries_a_429(fake: FakeTelegram) -> None:
    """PTB retries a 429 only through ``AIORateLimiter`` (extra ``python-telegram-bot[rate-limiter]``)."""
    if importlib.util.find_spec("aiolimiter") is None:
        with pytest.raises(RuntimeError, match="rate-limiter"):
            AIORateLimiter()
        pytest.skip("aiolimiter is not installed: AIORateLimiter cannot be built")
    chat = fake.private_chat(ALICE)
    fake.fail_next("sendMessage", 429, retry_after=1)
    app = (
        ApplicationBuilder()
        .token(fake.token)
        .base_url(fake.base_url)
        .base_file_url(fake.base_file_url)
        .rate_limiter(AIORateLimiter(max_retries=1))
        .build()
    )
    async with app:
        sent = await app.bot.send_message(chat.id, "hello")

    refused, accepted = fake.calls("sendMessage")
    assert (refused.status, accepted.status, sent.text) == (429, 200, "hello")
    assert accepted.at - refused.at >= 1.0  # it waited retry_after before trying again


async def test_a_repeated_update_is_handled_twice(fake: FakeTelegram) -> None:
    handled: list[int] = []

    async def start(update: Update, context: Context) -> None:
        handled.append(update.update_id)
        await update.message.reply_text("hello")

    app = build_app(fake)
    app.add_handler(CommandHandler("start", start))
    async with polling(app, fake):
        await fake.send_message(None, ALICE, "/start")
        await fake.wait_for("sendMessage")
        update_id = fake.duplicate_last_update()
        await until(lambda: len(handled) == 2)

    assert handled == [update_id, update_id]  # PTB does not deduplicate: the bot must
    assert len(fake.calls("sendMessage")) == 2


async def test_group_privacy_mode_and_addressed_commands(fake: FakeTelegram) -> None:
    handled: list[str] = []

    async def profile(update: Update, context: Context) -> None:
        handled.append(update.message.text)

    async def photo(update: Update, context: Context) -> None:
        handled.append("photo")

    app = build_app(fake)
    app.add_handler(CommandHandler("profile", profile))
    app.add_handler(MessageHandler(filters.PHOTO, photo))
    group = fake.group(-1009876543210, "Friends")
    async with polling(app, fake):
        await fake.send_message(group, ALICE, "/profile@OtherBot")
        await fake.send_photo(group, BOB, png(32, 32))
        sent = await fake.send_message(group, ALICE, f"/profile@{fake.bot_user.username} anime")
        await until(lambda: handled)

    assert handled == ["/profile@MmppTestBot anime"]
    assert sent["chat"] == {"id": -1009876543210, "type": "supergroup", "title": "Friends"}
    assert sent["entities"] == [{"type": "bot_command", "offset": 0, "length": len("/profile@MmppTestBot")}]
    assert [d.reason for d in fake.dropped] == [
        "privacy mode: the command is addressed to @OtherBot",
        "privacy mode: in groups the bot sees only commands and replies to its messages",
    ]


async def test_without_privacy_mode_ptb_itself_ignores_other_bots_commands() -> None:
    handled: list[str] = []

    async def profile(update: Update, context: Context) -> None:
        handled.append(update.message.text)

    async with FakeTelegram(token=TOKEN, privacy_mode=False, max_long_poll=1.0) as fake:
        app = build_app(fake)
        app.add_handler(CommandHandler("profile", profile))
        group = fake.group()
        async with polling(app, fake):
            await fake.send_message(group, ALICE, "/profile@OtherBot")
            await fake.send_message(group, ALICE, "/profile")
            await until(lambda: handled)
            await until(lambda: len(fake.delivered) == 2)

    assert handled == ["/profile"]


async def test_limits_and_errors_read_like_telegram(fake: FakeTelegram) -> None:
    chat = fake.private_chat(ALICE)
    huge = fake.add_file(b"\0" * (MAX_DOWNLOAD_BYTES + 1), "huge.png", "image/png")
    too_long_data = InlineKeyboardMarkup([[InlineKeyboardButton("x", callback_data="x" * 65)]])
    app = build_app(fake)
    async with app:
        with pytest.raises(BadRequest, match="File is too big"):
            await app.bot.get_file(huge.file_id)
        with pytest.raises(BadRequest, match="Photo_save_file_invalid"):
            await app.bot.send_photo(chat.id, png(64, 64) + b"\0" * MAX_PHOTO_BYTES)
        with pytest.raises(BadRequest, match="Image_process_failed"):
            await app.bot.send_photo(chat.id, b"not an image")
        with pytest.raises(BadRequest, match="Button_data_invalid"):
            await app.bot.send_message(chat.id, "x", reply_markup=too_long_data)
        with pytest.raises(BadRequest, match="Chat not found"):
            await app.bot.send_message(999, "x")
        with pytest.raises(BadRequest, match=r"(?i)can't find end of the tag"):
            await app.bot.send_message(chat.id, "I <3 it", parse_mode="HTML")
        with pytest.raises(BadRequest, match=r"(?i)unsupported start tag"):
            await app.bot.send_message(chat.id, "a <prompt> in angle brackets", parse_mode="HTML")
        with pytest.raises(BadRequest, match="reserved and must be escaped"):
            await app.bot.send_message(chat.id, "Done.", parse_mode="MarkdownV2")
        done = await app.bot.send_message(chat.id, "<b>Done</b> &amp; dusted", parse_mode="HTML")
        with pytest.raises(BadRequest, match="Message is not modified"):
            await app.bot.edit_message_text("<b>Done</b> &amp; dusted", chat.id, done.message_id, parse_mode="HTML")
        with pytest.raises(EndPointNotFound):
            await app.bot.do_api_request("fooBar")

    assert done.text == "Done & dusted"
    assert [(e.type, e.offset, e.length) for e in done.entities] == [("bold", 0, 4)]
    assert fake.calls("fooBar")[0].status == 404


async def test_injected_server_errors(fake: FakeTelegram) -> None:
    chat = fake.private_chat(ALICE)
    fake.fail_next("sendMessage", 502, html=True)
    fake.fail_next("sendMessage", 400, description="Bad Request: have no rights to send a message")
    app = build_app(fake)
    async with app:
        with pytest.raises(NetworkError, match="Bad Gateway"):
            await app.bot.send_message(chat.id, "one")
        with pytest.raises(BadRequest, match="Have no rights to send a message"):
            await app.bot.send_message(chat.id, "two")
        sent = await app.bot.send_message(chat.id, "three")

    assert sent.text == "three"
    assert [c.status for c in fake.calls("sendMessage")] == [502, 400, 200]


async def test_get_updates_wire_semantics(fake: FakeTelegram) -> None:
    """Confirm-by-offset, remembered allowed_updates and the 409 for a second poller, on the raw wire."""
    url = f"{fake.base_url}{TOKEN}/getUpdates"
    async with httpx.AsyncClient(timeout=5) as client:
        assert (await client.post(f"{fake.base_url}{TOKEN}/nope")).json() == {
            "ok": False,
            "error_code": 404,
            "description": "Not Found",
        }
        assert (await client.get(f"{fake.base_url}999:wrong/getMe")).status_code == 401
        assert (await client.get(f"{fake.base_url}{TOKEN}/getme")).json()["result"]["username"] == "MmppTestBot"

        await fake.send_message(None, ALICE, "one")
        await fake.send_message(None, ALICE, "two")
        first = (await client.post(url, json={"timeout": 0})).json()["result"]
        again = (await client.post(url, data={"offset": "0", "timeout": "0"})).json()["result"]
        assert [u["message"]["text"] for u in first] == ["one", "two"]
        assert again == first  # not confirmed yet: handed out again
        confirmed = (await client.post(url, json={"offset": first[-1]["update_id"] + 1, "timeout": 0})).json()
        assert confirmed == {"ok": True, "result": []}
        assert fake.pending_updates == []

        waiting = asyncio.create_task(client.post(url, json={"timeout": 1}))
        await until(lambda: len([c for c in fake.calls("getUpdates") if not c.done]) == 1)
        second = await client.post(url, json={"timeout": 0})
        older = await waiting
        assert second.json() == {"ok": True, "result": []}
        assert older.status_code == 409
        assert older.json()["description"].startswith("Conflict: terminated by other getUpdates request")


async def test_httpx_info_logs_carry_the_token(fake: FakeTelegram, caplog: pytest.LogCaptureFixture) -> None:
    """httpx logs every request URL at INFO, and Bot API URLs contain the token: the bot must quiet httpx."""
    caplog.set_level(logging.INFO, logger="httpx")
    app = build_app(fake)
    async with app:
        await app.bot.get_me()

    assert any(TOKEN in record.getMessage() for record in caplog.records if record.name == "httpx")


async def test_other_bot_methods_round_trip(fake: FakeTelegram) -> None:
    chat = fake.private_chat(ALICE)
    picture = png(40, 30)
    keyboard = InlineKeyboardMarkup([[InlineKeyboardButton("Again", callback_data="again")]])
    app = build_app(fake)
    async with app:
        bot = app.bot
        assert await bot.send_chat_action(chat.id, "upload_photo")
        photo = await bot.send_photo(chat.id, picture, caption="first", reply_markup=keyboard)
        recaptioned = await bot.edit_message_caption(chat.id, photo.message_id, caption="second", reply_markup=keyboard)
        unbuttoned = await bot.edit_message_reply_markup(chat.id, photo.message_id)
        document = await bot.send_document(chat.id, picture, filename="full.png", reply_to_message_id=photo.message_id)
        assert await bot.set_message_reaction(chat.id, photo.message_id, "👍")
        with pytest.raises(BadRequest, match=r"(?i)reaction_invalid"):
            await bot.set_message_reaction(chat.id, photo.message_id, "🦖")
        assert await bot.delete_message(chat.id, document.message_id)
        with pytest.raises(BadRequest, match="Message to delete not found"):
            await bot.delete_message(chat.id, document.message_id)
        resent = await bot.send_photo(chat.id, photo.photo[-1].file_id)

    assert (recaptioned.caption, recaptioned.reply_markup.inline_keyboard[0][0].text) == ("second", "Again")
    assert unbuttoned.reply_markup is None and unbuttoned.edit_date is not None
    assert (document.document.file_name, document.reply_to_message.message_id) == ("full.png", photo.message_id)
    assert fake.file_bytes(document.document.file_id) == picture
    assert fake.bot_reactions[(chat.id, photo.message_id)] == [{"type": "emoji", "emoji": "👍"}]
    assert resent.photo[-1].file_unique_id == photo.photo[-1].file_unique_id
    assert fake.calls("sendChatAction")[0].params == {"chat_id": ALICE.id, "action": "upload_photo"}


async def test_user_side_album_document_and_flood_control() -> None:
    async with FakeTelegram(token=TOKEN, per_chat_interval=1.0) as fake:
        album = await fake.send_media_group(None, ALICE, [png(20, 20), png(30, 20)], caption="/profile anime")
        document = await fake.send_document(None, BOB, png(25, 25), "selfie.png", "image/png", caption="/profile")
        chat = fake.private_chat(ALICE)
        app = build_app(fake)
        async with app:
            await app.bot.send_message(chat.id, "one")
            with pytest.raises(RetryAfter):
                await app.bot.send_message(chat.id, "two")
            fake.slow_next("getMe", 0.5)
            with pytest.raises(TimedOut):
                await app.bot.get_me(read_timeout=0.1)
            await fake.wait_for(lambda call: call.method == "getMe" and call.status == CLIENT_CLOSED, timeout=2)

    first, second = (update["message"] for update in fake.pending_updates[:2])
    assert first["media_group_id"] == second["media_group_id"] == album[1]["media_group_id"]
    assert first["caption"] == "/profile anime" and "caption" not in second
    assert document["document"]["mime_type"] == "image/png" and document["chat"]["id"] == BOB.id
    assert fake.calls("sendMessage")[1].response["parameters"] == {"retry_after": 1}


def jpeg(shade: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (48, 32), (shade, 90, 160)).save(buffer, "JPEG")
    return buffer.getvalue()


async def test_edit_message_media_turns_text_into_a_photo_and_replaces_it(fake: FakeTelegram) -> None:
    """editMessageMedia as in Bot API 10.1: a text message becomes a photo with a caption; later calls
    replace the photo; the text methods then follow the message's kind, as on Telegram."""
    chat = fake.private_chat(ALICE)
    app = build_app(fake)
    async with app:
        bot = app.bot
        status = await bot.send_message(chat.id, "queued")
        first = await bot.edit_message_media(
            InputMediaPhoto(jpeg(10), caption="painting 20%", filename="p.jpg"), chat.id, status.message_id
        )
        assert first.text is None and first.caption == "painting 20%" and first.photo
        with pytest.raises(BadRequest, match=r"(?i)there is no text in the message to edit"):
            await bot.edit_message_text("painting 30%", chat.id, status.message_id)
        captioned = await bot.edit_message_caption(chat.id, status.message_id, caption="painting 30%")
        second = await bot.edit_message_media(InputMediaPhoto(jpeg(200)), chat.id, status.message_id)
        assert second.caption is None  # the new media's caption (none) replaces the old one
        assert second.photo[-1].file_unique_id != first.photo[-1].file_unique_id
        with pytest.raises(BadRequest, match=r"(?i)caption is too long"):
            await bot.edit_message_media(InputMediaPhoto(jpeg(1), caption="x" * 1025), chat.id, status.message_id)
        with pytest.raises(BadRequest, match=r"(?i)message to edit not found"):
            await bot.edit_message_media(InputMediaPhoto(jpeg(1)), chat.id, 9999)
        with pytest.raises(BadRequest, match=r"(?i)IMAGE_PROCESS_FAILED"):
            await bot.edit_message_media(InputMediaPhoto(b"not a picture"), chat.id, status.message_id)
        with pytest.raises(BadRequest, match=r"(?i)message can't be edited"):
            user_message = await fake.send_message(None, ALICE, "mine")
            await bot.edit_message_media(InputMediaPhoto(jpeg(1)), chat.id, user_message["message_id"])
        text_only = await bot.send_message(chat.id, "text")
        with pytest.raises(BadRequest, match=r"(?i)there is no caption in the message to edit"):
            await bot.edit_message_caption(chat.id, text_only.message_id, caption="no")

    assert captioned.caption == "painting 30%"
    edits = fake.calls("editMessageMedia")
    assert [call.status for call in edits] == [200, 200, 400, 400, 400, 400]
    media = edits[0].params["media"]
    assert media["type"] == "photo" and media["media"].startswith("attach://") and media["caption"] == "painting 20%"
    assert next(iter(edits[0].files.values())).data == jpeg(10)
    assert fake.file_bytes(fake.messages[(chat.id, status.message_id)]["photo"][-1]["file_id"]) == jpeg(200)


async def test_raw_edit_message_media_refusals(fake: FakeTelegram) -> None:
    chat = fake.private_chat(ALICE)
    url = f"{fake.base_url}{TOKEN}/editMessageMedia"
    app = build_app(fake)
    async with app:
        status = await app.bot.send_message(chat.id, "queued")
    where = {"chat_id": chat.id, "message_id": status.message_id}
    async with httpx.AsyncClient(timeout=5) as client:
        missing = (await client.post(url, json=where)).json()
        video = (await client.post(url, json={**where, "media": {"type": "video", "media": "attach://v"}})).json()
        strange = (await client.post(url, json={**where, "media": {"type": "sticker", "media": "x"}})).json()
        no_part = (await client.post(url, json={**where, "media": {"type": "photo", "media": "attach://gone"}})).json()
        inline = (await client.post(url, json={"inline_message_id": "1", "media": {"type": "photo"}})).json()
    assert [body["ok"] for body in (missing, video, strange, no_part, inline)] == [False] * 5
    assert "media" in missing["description"] and "unsupported" in video["description"]
    assert "InputMedia" in strange["description"] and "no photo" in no_part["description"]
    assert fake.messages[(chat.id, status.message_id)]["text"] == "queued"


async def test_flood_control_counts_edits_and_group_minutes() -> None:
    async with FakeTelegram(token=TOKEN, per_chat_interval=1.0, group_per_minute=3) as fake:
        private = fake.private_chat(ALICE)
        group = fake.group()
        app = build_app(fake)
        async with app:
            sent = await app.bot.send_message(private.id, "one")
            with pytest.raises(RetryAfter):
                await app.bot.edit_message_text("two", private.id, sent.message_id)  # an edit counts too
            fake.per_chat_interval = None
            for n in range(3):
                await app.bot.send_message(group.id, f"group {n}")
            with pytest.raises(RetryAfter):
                await app.bot.send_message(group.id, "a fourth within the minute")
    assert fake.calls("sendMessage")[-1].response["parameters"]["retry_after"] >= 59


OTHER_BOT = FakeUser(555, "Other bot", "OtherBot", is_bot=True)


async def test_a_callback_query_is_answered_once_and_only_in_time() -> None:
    """Telegram takes an answer only for a few seconds after the press, and only once; then the 400 it sends."""
    async with FakeTelegram(token=TOKEN, max_long_poll=1.0, callback_query_timeout=0.3) as fake:
        app = build_app(fake)
        async with app:
            chat = fake.private_chat(ALICE)
            keyboard = InlineKeyboardMarkup([[InlineKeyboardButton("1★", callback_data="rate:1:1")]])
            message = (await app.bot.send_message(chat.id, "Rate it", reply_markup=keyboard)).to_dict()
            in_time = await fake.press_button(message, ALICE, "rate:1:1")
            late = await fake.press_button(message, ALICE, "rate:1:1")
            assert await app.bot.answer_callback_query(in_time, "Thanks")
            with pytest.raises(BadRequest, match=r"(?i)query is too old and response timeout expired"):
                await app.bot.answer_callback_query(in_time, "again")  # once only
            await asyncio.sleep(0.4)
            with pytest.raises(BadRequest, match=r"(?i)query is too old and response timeout expired"):
                await app.bot.answer_callback_query(late, "Thanks")

    refused = fake.calls("answerCallbackQuery")[-1]
    assert refused.status == 400 and refused.response == {
        "ok": False,
        "error_code": 400,
        "description": "Bad Request: query is too old and response timeout expired or query ID is invalid",
    }
    assert list(fake.callback_answers) == [in_time]


async def test_privacy_mode_with_several_bots_in_a_group(fake: FakeTelegram) -> None:
    """A plain /command reaches only the last bot that wrote in the group; /command@ThisBot always reaches it;
    replies to messages meant for the bot reach it; an administrator bot gets everything."""
    handled: list[str] = []

    async def anything(update: Update, context: Context) -> None:
        handled.append(update.message.text or update.message.caption or "photo")

    app = build_app(fake)
    app.add_handler(MessageHandler(filters.ALL, anything))
    group = fake.group(-1005550001, "Two bots", other_bots=[OTHER_BOT])
    alone = fake.group(-1005550002, "One bot")
    async with polling(app, fake):
        await fake.send_message(alone, ALICE, "/help")  # the only bot there: a plain command is for it
        fake.bot_writes(group, OTHER_BOT, "I am the other bot")
        await fake.send_message(group, ALICE, "/help")
        addressed = await fake.send_message(group, ALICE, "/help@MmppTestBot")
        await fake.send_message(group, BOB, "and me?", reply_to=addressed)  # a reply to a message meant for it
        await until(lambda: len(handled) == 3)
        await app.bot.send_message(group.id, "here is the help")  # now this bot wrote last
        await fake.send_message(group, ALICE, "/styles")
        await until(lambda: len(handled) == 4)
        fake.bot_writes(group, OTHER_BOT, "me again")
        await fake.send_message(group, ALICE, "/history")
        group.bot_is_admin = True
        await fake.send_photo(group, BOB, png(32, 32))
        await until(lambda: len(handled) == 5)

    assert handled == ["/help", "/help@MmppTestBot", "and me?", "/styles", "photo"]
    plain = "privacy mode: a plain command goes only to the last bot that wrote in the group"
    assert [(d.payload.get("text"), d.reason) for d in fake.dropped] == [("/help", plain), ("/history", plain)]
    with pytest.raises(ValueError, match="not one of the group's other bots"):
        fake.bot_writes(alone, OTHER_BOT, "not here")


async def test_chat_members_administrators_and_who_gets_reactions(fake: FakeTelegram) -> None:
    """getChatMember / getChatAdministrators as the Bot API answers them, read by PTB; reactions from a group
    exist only for a bot that administers it."""
    from telegram import ChatMemberAdministrator, ChatMemberMember, ChatMemberOwner

    owner = FakeUser(1003, "Olga", "olga")
    group = fake.group(owner=owner)
    app = build_app(fake)
    async with polling(app, fake, allowed_updates=[Update.MESSAGE, Update.MESSAGE_REACTION]):
        bot_id = app.bot.id
        assert isinstance(await app.bot.get_chat_member(group.id, bot_id), ChatMemberMember)
        assert [member.user.id for member in await app.bot.get_chat_administrators(group.id)] == [owner.id]
        sent = await app.bot.send_message(group.id, "a picture")
        assert await fake.react(group, sent.message_id, ALICE, new=["👍"]) is None
        group.bot_is_admin = True
        administrator = await app.bot.get_chat_member(group.id, bot_id)
        assert isinstance(administrator, ChatMemberAdministrator) and administrator.can_delete_messages
        owners, bots = await app.bot.get_chat_administrators(group.id)
        assert isinstance(owners, ChatMemberOwner) and bots.user.id == bot_id
        assert await fake.react(group, sent.message_id, ALICE, new=["👍"]) is not None
        assert (await app.bot.get_chat_member(group.id, 424242)).status == "left"
        with pytest.raises(BadRequest, match="no administrators in the private chat"):
            await app.bot.get_chat_administrators(fake.private_chat(ALICE).id)
        with pytest.raises(BadRequest, match=r"(?i)chat not found"):
            await app.bot.get_chat_member(-1009999, bot_id)
    assert [d.reason for d in fake.dropped] == ["the bot is not an administrator of the group"]


async def test_flood_control_allows_short_bursts_and_counts_album_messages() -> None:
    async with FakeTelegram(token=TOKEN, per_chat_interval=1.0, per_chat_burst=3, group_per_minute=6) as fake:
        private, group = fake.private_chat(ALICE), fake.group()
        app = build_app(fake)
        async with app:
            for n in range(3):
                await app.bot.send_message(private.id, f"burst {n}")
            with pytest.raises(RetryAfter):
                await app.bot.send_message(private.id, "a fourth within three seconds")
            fake.per_chat_interval = None
            album = [InputMediaPhoto(png(20, 20)) for _ in range(4)]
            await app.bot.send_media_group(group.id, album)
            await app.bot.send_message(group.id, "the fifth message")
            with pytest.raises(RetryAfter):
                await app.bot.send_media_group(group.id, album[:2])  # 7 messages within the minute
            await app.bot.send_message(group.id, "the sixth")
    refused = [call for call in fake.calls() if call.status == 429]
    assert [call.method for call in refused] == ["sendMessage", "sendMediaGroup"]
    assert refused[0].response["parameters"]["retry_after"] == 3
    assert refused[1].response["parameters"]["retry_after"] >= 59


async def test_a_chat_that_refused_the_bot_refuses_every_request_as_telegram_does(fake: FakeTelegram) -> None:
    """A user who blocked the bot, a group that removed it: 403 with Telegram's words on every request naming the
    chat; a group that does not let it send photos: 400 on photos only, text still goes."""
    from telegram.error import Forbidden

    private, group = fake.private_chat(ALICE), fake.group()
    basic, restricted = fake.group(-4242, supergroup=False), fake.group(-1005555)
    app = build_app(fake)
    async with app:
        before = await app.bot.send_message(private.id, "before the block")
        fake.block_bot(ALICE)
        with pytest.raises(Forbidden, match="bot was blocked by the user"):
            await app.bot.send_message(private.id, "after the block")
        with pytest.raises(Forbidden, match="bot was blocked by the user"):
            await app.bot.edit_message_text("edited", private.id, before.message_id)
        with pytest.raises(Forbidden, match="bot was blocked by the user"):
            await app.bot.send_media_group(private.id, [InputMediaPhoto(png(20, 20)) for _ in range(2)])
        fake.remove_bot(group)
        fake.remove_bot(basic)
        with pytest.raises(Forbidden, match="bot was kicked from the supergroup chat"):
            await app.bot.send_photo(group.id, png(20, 20))
        with pytest.raises(Forbidden, match="bot was kicked from the group chat"):
            await app.bot.send_message(basic.id, "hello?")
        fake.forbid_photos(restricted)
        with pytest.raises(BadRequest, match="Not enough rights to send photos to the chat"):
            await app.bot.send_photo(restricted.id, png(20, 20))
        with pytest.raises(BadRequest, match="Not enough rights to send photos to the chat"):
            await app.bot.send_media_group(restricted.id, [InputMediaPhoto(png(20, 20)) for _ in range(2)])
        await app.bot.send_message(restricted.id, "text still goes")
    with pytest.raises(ValueError, match="only a group"):
        fake.remove_bot(private)
    assert [call.status for call in fake.calls() if call.method.startswith(("send", "edit"))] == [
        200, 403, 403, 403, 403, 403, 400, 400, 200,
    ]  # fmt: skip
    assert fake.calls("sendMediaGroup")[0].response["description"] == "Forbidden: bot was blocked by the user"


async def test_a_group_that_forbids_files_refuses_documents_and_still_takes_photos(fake: FakeTelegram) -> None:
    """``can_send_documents`` off: sendDocument and a document album answer Telegram's 400; photos still go,
    and a document sent where files are allowed keeps its bytes and its name."""
    from telegram import InputMediaDocument

    open_group, restricted = fake.group(), fake.group(-1007777)
    fake.forbid_documents(restricted)
    picture = png(64, 64)
    app = build_app(fake)
    async with app:
        sent = await app.bot.send_document(open_group.id, picture, filename="mmpp-1-2x.png")
        with pytest.raises(BadRequest, match="Not enough rights to send documents to the chat"):
            await app.bot.send_document(restricted.id, picture, filename="mmpp-1-2x.png")
        with pytest.raises(BadRequest, match="Not enough rights to send documents to the chat"):
            await app.bot.send_media_group(restricted.id, [InputMediaDocument(picture) for _ in range(2)])
        await app.bot.send_photo(restricted.id, picture)
    assert sent.document is not None and sent.document.file_name == "mmpp-1-2x.png"
    (upload,) = fake.calls("sendDocument")[0].files.values()
    assert upload.data == picture
    with pytest.raises(ValueError, match="only a group"):
        fake.forbid_documents(fake.private_chat(ALICE))
