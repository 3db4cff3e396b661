"""The Telegram adapter (python-telegram-bot): updates in, messages out.

Handlers are plain ``async def handler(update, context)`` functions that
translate an update into one core call and the core's answer (or
:class:`MmppError`) into one reply; every decision lives in the core.  The
core reaches Telegram through :class:`TelegramDelivery`.

The bot token is part of every Bot API and file URL, so nothing here logs
URLs or exception texts from the HTTP layer.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import OrderedDict
from typing import Any

from telegram import (
    BotCommand,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    InputMediaPhoto,
    Message,
    ReactionTypeEmoji,
    Update,
)
from telegram.constants import ChatType
from telegram.error import BadRequest, Forbidden, NetworkError, RetryAfter, TimedOut
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

from bot.core import ChatCore, Person, ProfileOrder, parse_caption
from bot.core.service import PostedCallback, score_for_reaction
from bot.settings import BotSettings
from bot.storage import Job, StoredPicture
from mmpp.contract import MAX_UPLOAD_BYTES
from mmpp.errors import ErrorCode, MmppError

logger = logging.getLogger(__name__)

PLATFORM = "telegram"
ALLOWED_UPDATES = ["message", "callback_query", "message_reaction"]
HOW_TO_ORDER = "Send me a selfie with a style as its caption (e.g. anime), or send the photo and pick a style."
COMMANDS = [
    ("start", "what this bot does"),
    ("help", "how to use it"),
    ("profile", "make profile pictures: send a selfie with /profile STYLE as caption"),
    ("styles", "list the styles"),
    ("history", "your recent jobs"),
    ("forget", "delete everything about you"),
]
#: Photos waiting for a style choice, keyed by a short token (callback data
#: holds at most 64 bytes, a file id is longer).  Bounded: a forgotten choice
#: is dropped, and the person simply sends the photo again.
PENDING_LIMIT = 1000
SEND_ATTEMPTS = 4


def person_of(user: Any) -> Person:
    return Person(PLATFORM, str(user.id), user.full_name or user.username or "")


def core_of(context: ContextTypes.DEFAULT_TYPE) -> ChatCore:
    return context.application.bot_data["core"]


def message_ref(chat_id: int | str, message_id: int | str) -> str:
    return f"{chat_id}:{message_id}"


async def with_retries(action: Any, *arguments: Any, **keywords: Any) -> Any:
    """Call the Bot API, waiting out 429s and retrying network failures.

    ``RetryAfter`` means the message was not sent, so retrying cannot post it
    twice; a timeout is retried too, accepting a rare duplicate over a lost
    reply.
    """
    for attempt in range(SEND_ATTEMPTS):
        try:
            return await action(*arguments, **keywords)
        except RetryAfter as error:
            delay = error.retry_after
            await asyncio.sleep(delay.total_seconds() if hasattr(delay, "total_seconds") else float(delay))
        except (TimedOut, NetworkError) as error:
            if isinstance(error, BadRequest | Forbidden) or attempt == SEND_ATTEMPTS - 1:
                raise
            await asyncio.sleep(0.5 * 2**attempt)
    return await action(*arguments, **keywords)


# --------------------------------------------------------------------------- the core → Telegram


class TelegramDelivery:
    platform = PLATFORM
    #: Telegram allows about one message per second per chat; edits count too.
    status_edit_interval = 3.0

    def __init__(self, application: Application) -> None:
        self.application = application

    @property
    def bot(self) -> Any:
        return self.application.bot

    async def post_status(self, job: Job, text: str) -> str | None:
        context = job.reply_context
        message = await with_retries(
            self.bot.send_message, chat_id=context["chat_id"], text=text,
            reply_to_message_id=context.get("message_id"), allow_sending_without_reply=True,
        )  # fmt: skip
        return str(message.message_id)

    async def edit_status(self, job: Job, message_ref: str, text: str) -> None:
        try:
            await with_retries(
                self.bot.edit_message_text, chat_id=job.reply_context["chat_id"], message_id=int(message_ref), text=text
            )
        except BadRequest as error:
            if "not modified" not in str(error).lower():
                raise

    async def post_pictures(
        self, job: Job, pictures: list[StoredPicture], caption: str, on_posted: PostedCallback
    ) -> None:
        chat_id = job.reply_context["chat_id"]
        reply_to = job.reply_context.get("message_id")
        if len(pictures) == 1:
            message = await with_retries(
                self.bot.send_photo, chat_id=chat_id, photo=pictures[0].png, caption=caption,
                reply_markup=rating_keyboard(job, pictures), reply_to_message_id=reply_to,
                allow_sending_without_reply=True,
            )  # fmt: skip
            await on_posted(pictures[0], message_ref(chat_id, message.message_id))
        else:
            media = [
                InputMediaPhoto(picture.png, caption=caption if index == 0 else None)
                for index, picture in enumerate(pictures)
            ]
            messages = await with_retries(
                self.bot.send_media_group, chat_id=chat_id, media=media, reply_to_message_id=reply_to,
                allow_sending_without_reply=True,
            )  # fmt: skip
            for picture, message in zip(pictures, messages, strict=False):
                await on_posted(picture, message_ref(chat_id, message.message_id))
            await with_retries(
                self.bot.send_message, chat_id=chat_id, text="Rate them (1 = poor, 5 = love it):",
                reply_markup=rating_keyboard(job, pictures),
            )  # fmt: skip
        if job.status_message_id:
            try:
                await self.bot.delete_message(chat_id=chat_id, message_id=int(job.status_message_id))
            except (BadRequest, Forbidden, NetworkError):
                logger.info("could not delete the status message of job %s", job.id)

    async def post_notice(self, job: Job, text: str) -> None:
        await with_retries(self.bot.send_message, chat_id=job.reply_context["chat_id"], text=text)

    async def post_failure(self, job: Job, code: ErrorCode, text: str) -> None:
        await with_retries(
            self.bot.send_message, chat_id=job.reply_context["chat_id"], text=failure_text(code, text),
            reply_to_message_id=job.reply_context.get("message_id"), allow_sending_without_reply=True,
        )  # fmt: skip


def failure_text(code: ErrorCode, text: str) -> str:
    """One line, whatever the message held: the code last, where people quote it from."""
    return f"⚠️ {' '.join(text.split())} ({code.value})"


def rating_keyboard(job: Job, pictures: list[StoredPicture]) -> InlineKeyboardMarkup:
    rows = []
    for picture in pictures:
        label = f"#{picture.position} " if len(pictures) > 1 else ""
        rows.append(
            [
                InlineKeyboardButton(
                    f"{label}{stars}★" if stars == 1 else f"{stars}★", callback_data=f"r:{picture.id}:{stars}"
                )
                for stars in range(1, 6)
            ]
        )
    rows.append([InlineKeyboardButton("🔁 Re-roll", callback_data=f"rr:{job.id}")])
    return InlineKeyboardMarkup(rows)


# --------------------------------------------------------------------------- Telegram → the core


async def reply_line(update: Update, text: str) -> None:
    if update.effective_message is not None:
        await with_retries(update.effective_message.reply_text, text)


async def on_start(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    await reply_line(update, core_of(context).help_text(HOW_TO_ORDER))


async def on_styles(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    await reply_line(update, core_of(context).styles_text())


async def on_history(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    await reply_line(update, await core_of(context).history_text(person_of(update.effective_user)))


async def on_forget(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    await reply_line(update, await core_of(context).forget(person_of(update.effective_user)))


async def on_profile_without_photo(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    await reply_line(update, "Send a selfie with the caption /profile STYLE (for example /profile anime).")


def _largest_photo(message: Message) -> tuple[str, int | None] | None:
    if message.photo:
        largest = message.photo[-1]
        return largest.file_id, largest.file_size
    if message.document and (message.document.mime_type or "").startswith("image/"):
        return message.document.file_id, message.document.file_size
    return None


async def _download(context: ContextTypes.DEFAULT_TYPE, file_id: str, size: int | None) -> bytes:
    if size is not None and size > MAX_UPLOAD_BYTES:
        raise MmppError(ErrorCode.IMAGE_TOO_LARGE, f"The photo is over {MAX_UPLOAD_BYTES // 2**20} MiB.")
    try:
        telegram_file = await with_retries(context.bot.get_file, file_id)
        return bytes(await telegram_file.download_as_bytearray())
    except BadRequest as error:
        if "too big" in str(error).lower():
            raise MmppError(ErrorCode.IMAGE_TOO_LARGE, "The photo is too large for Telegram bots (20 MB).") from None
        raise MmppError(ErrorCode.NOT_AN_IMAGE, "I could not download that photo; please send it again.") from None


async def on_photo(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    message = update.effective_message
    if message is None or update.effective_user is None:
        return
    core = core_of(context)
    photo = _largest_photo(message)
    if photo is None:
        return
    is_group = message.chat.type in {ChatType.GROUP, ChatType.SUPERGROUP}
    command = parse_caption(message.caption, context.bot.username or "")
    if command is None or (is_group and not (message.caption or "").startswith("/")):
        return  # a photo in a group that is not addressed to us
    if command.name != "profile":
        return
    if not command.options.get("style"):
        token = secrets.token_urlsafe(6)
        pending: OrderedDict[str, tuple[str, int | None]] = context.application.bot_data.setdefault(
            "pending_photos", OrderedDict()
        )
        pending[token] = photo
        while len(pending) > PENDING_LIMIT:
            pending.popitem(last=False)
        context.application.bot_data.setdefault("pending_options", {})[token] = command.options
        await with_retries(message.reply_text, "Which style?", reply_markup=style_keyboard(core, token))
        return
    core.check_profile(command.options)
    data = await _download(context, *photo)
    order = ProfileOrder(
        requester=person_of(update.effective_user),
        event_key=f"update:{update.update_id}",
        chat_id=str(message.chat_id),
        reply_context={"chat_id": message.chat_id, "message_id": message.message_id},
        options=command.options,
        photo=data,
    )
    await core.order_profile(order)


def style_keyboard(core: ChatCore, token: str) -> InlineKeyboardMarkup:
    buttons = [
        InlineKeyboardButton(f"{item.emoji} {item.display_name}", callback_data=f"s:{token}:{item.name}")
        for item in core.styles.values()
    ]
    return InlineKeyboardMarkup([buttons[index : index + 2] for index in range(0, len(buttons), 2)])


async def on_button(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    query = update.callback_query
    if query is None or query.data is None:
        return
    core = core_of(context)
    rater = person_of(query.from_user)
    kind, _, rest = query.data.partition(":")
    chat_id = query.message.chat.id if query.message else query.from_user.id
    try:
        if kind == "r":
            picture_id, _, stars = rest.partition(":")
            await core.rate(rater, int(picture_id), int(stars), "button")
            await query.answer(f"Thanks: {stars}★")
        elif kind == "rr":
            reply_to = query.message.message_id if query.message else None
            await core.reroll(
                rater, int(rest), f"callback:{query.id}", str(chat_id), {"chat_id": chat_id, "message_id": reply_to}
            )
            await query.answer("Re-rolling…")
        elif kind == "s":
            token, _, style = rest.partition(":")
            photo = context.application.bot_data.get("pending_photos", {}).pop(token, None)
            options = dict(context.application.bot_data.get("pending_options", {}).pop(token, {}))
            if photo is None:
                raise MmppError(ErrorCode.NOT_FOUND, "That photo is no longer waiting; please send it again.")
            options["style"] = style
            core.check_profile(options)
            data = await _download(context, *photo)
            reply_to = query.message.message_id if query.message else None
            reply_context = {"chat_id": chat_id, "message_id": reply_to}
            await core.order_profile(
                ProfileOrder(rater, f"callback:{query.id}", str(chat_id), reply_context, options, data)
            )
            await query.answer(f"{style}: on it")
        else:
            await query.answer()
    except MmppError as error:
        await query.answer(f"{error.message} ({error.code.value})"[:200], show_alert=True)
    except ValueError:
        await query.answer("That button is not valid anymore.", show_alert=True)


async def on_reaction(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    reaction = update.message_reaction
    if reaction is None or reaction.user is None:
        return
    scores = [score_for_reaction(item.emoji) for item in reaction.new_reaction if isinstance(item, ReactionTypeEmoji)]
    known = [score for score in scores if score is not None]
    stars = known[-1] if known else None
    await core_of(context).rate_message(
        person_of(reaction.user), message_ref(reaction.chat.id, reaction.message_id), stars, "reaction"
    )


async def on_error(update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Every failure ends as one line to the person; the exception is logged, the bot goes on."""
    error = context.error
    if isinstance(error, MmppError):
        text = failure_text(error.code, error.message)
    else:
        # Exception texts from the HTTP layer can hold the token-bearing URL.
        logger.error("telegram handler failed: %s", type(error).__name__, exc_info=error)
        text = failure_text(ErrorCode.INTERNAL, "Something went wrong on our side; please try again.")
    if isinstance(update, Update) and update.effective_message is not None:
        try:
            await update.effective_message.reply_text(text)
        except Exception:
            logger.warning("could not send the error reply", exc_info=True)


def build_application(core: ChatCore, settings: BotSettings, token: str | None = None) -> Application:
    application = (
        ApplicationBuilder()
        .token(token or settings.telegram_token.get_secret_value())
        .base_url(settings.telegram_base_url)
        .base_file_url(settings.telegram_base_file_url)
        .rate_limiter(AIORateLimiter(max_retries=3))
        .concurrent_updates(True)
        .build()
    )
    application.bot_data["core"] = core
    application.add_handler(CommandHandler(["start", "help"], on_start))
    application.add_handler(CommandHandler("styles", on_styles))
    application.add_handler(CommandHandler("history", on_history))
    application.add_handler(CommandHandler("forget", on_forget))
    application.add_handler(MessageHandler(filters.PHOTO | filters.Document.IMAGE, on_photo))
    application.add_handler(CommandHandler("profile", on_profile_without_photo))
    application.add_handler(MessageHandler(filters.COMMAND, on_unknown_command))
    application.add_handler(CallbackQueryHandler(on_button))
    application.add_handler(MessageReactionHandler(on_reaction))
    application.add_error_handler(on_error)
    return application


async def on_unknown_command(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    message = update.effective_message
    if message is None or not message.text:
        return
    parse_caption(message.text, context.bot.username or "")  # raises UNKNOWN_COMMAND for what is not ours


class TelegramAdapter:
    """Connects, publishes the command list, polls for updates."""

    def __init__(self, core: ChatCore, settings: BotSettings, token: str | None = None) -> None:
        # httpx logs every request URL at INFO, and Bot API URLs contain the token.
        logging.getLogger("httpx").setLevel(logging.WARNING)
        self.core = core
        self.application = build_application(core, settings, token)
        self.delivery = TelegramDelivery(self.application)
        core.attach(self.delivery)
        self._stopped = asyncio.Event()

    async def open(self) -> None:
        await self.application.initialize()
        await self.application.bot.set_my_commands([BotCommand(name, text) for name, text in COMMANDS])
        await self.application.start()
        assert self.application.updater is not None
        await self.application.updater.start_polling(allowed_updates=ALLOWED_UPDATES, poll_interval=0.0, timeout=10)

    def healthy(self) -> bool:
        updater = self.application.updater
        return self.application.running and updater is not None and updater.running

    async def run(self) -> None:
        await self._stopped.wait()

    def stop(self) -> None:
        self._stopped.set()

    async def close(self) -> None:
        self._stopped.set()
        if self.application.updater is not None and self.application.updater.running:
            await self.application.updater.stop()
        if self.application.running:
            await self.application.stop()
        await self.application.shutdown()
