"""The Telegram adapter (python-telegram-bot): updates in, messages out.

Handlers are plain ``async def handler(update, context)`` functions that
translate an update into one core call and the core's answer (or
:class:`MmppError`) into one reply; every decision lives in the core.  The
core reaches Telegram through :class:`TelegramDelivery`.

The status message starts as text; the first live preview turns it into a
photo with the status as its caption (``editMessageMedia`` replaces a text
message with media, Bot API 10.1), later previews replace the photo and later
texts the caption (``editMessageCaption``).  One message from the first reply
to the last, so nothing is left behind: when the pictures are posted (or the
job fails) the status message is deleted, as before.

The bot token is part of every Bot API and file URL, so nothing here logs
URLs or exception texts from the HTTP layer.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from telegram import (
    BotCommand,
    CallbackQuery,
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

from bot.core import (
    CHAT_KIND,
    ChatCore,
    EditPace,
    Person,
    PostedCallback,
    ProfileOrder,
    parse_caption,
    photo_order,
    texts,
)
from bot.settings import BotSettings
from bot.storage import Job, StoredPicture
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
SEND_ATTEMPTS = 4
#: ``rate_limit_args`` of a request made once: a 429 comes straight back (see :class:`RateLimiter`).
ONE_ATTEMPT = -1
NO_TEXT_TO_EDIT = "there is no text in the message to edit"
#: Callback data of the inline buttons (at most 64 bytes), one kind per button, each routed to its own
#: handler by pattern.  The short tags of earlier versions (r, rr, s) are still understood, so buttons
#: under pictures posted before keep working.
RATE_BUTTON = "rate:{picture_id}:{stars}"
REROLL_BUTTON = "reroll:{job_id}"
STYLE_BUTTON = "style:{token}:{style}"
RATE_PATTERN = r"^(?:rate|r):(?P<picture>[0-9]+):(?P<stars>[1-5])$"
REROLL_PATTERN = r"^(?:reroll|rr):(?P<job>[0-9]+)$"
STYLE_PATTERN = r"^(?:style|s):(?P<token>[A-Za-z0-9_-]+):(?P<style>[a-z0-9-]+)$"


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


class _RefusedOnceError(Exception):
    def __init__(self, error: RetryAfter) -> None:
        super().__init__()
        self.error = error


class RateLimiter(AIORateLimiter):
    """PTB's AIORateLimiter (throttling to Telegram's limits, waiting out 429s and retrying), except for
    requests sent with ``rate_limit_args=ONE_ATTEMPT``: those are throttled alike but tried once, their
    429 raised at once instead of held up (and holding up every other request) until Telegram allows
    them.  Best-effort edits use it; PTB itself reads ``0`` as "the default number of retries".
    """

    async def process_request(
        self,
        callback: Callable[..., Coroutine[Any, Any, bool | dict[str, Any] | list[dict[str, Any]]]],
        args: Any,
        kwargs: dict[str, Any],
        endpoint: str,
        data: dict[str, Any],
        rate_limit_args: int | None,
    ) -> bool | dict[str, Any] | list[dict[str, Any]]:
        if rate_limit_args != ONE_ATTEMPT:
            return await super().process_request(callback, args, kwargs, endpoint, data, rate_limit_args)

        async def once(*arguments: Any, **keywords: Any) -> bool | dict[str, Any] | list[dict[str, Any]]:
            try:
                return await callback(*arguments, **keywords)
            except RetryAfter as error:
                raise _RefusedOnceError(error) from None  # not a RetryAfter: the limiter does not retry it

        try:
            return await super().process_request(once, args, kwargs, endpoint, data, None)
        except _RefusedOnceError as refused:
            raise refused.error from None


# --------------------------------------------------------------------------- the core → Telegram


class TelegramDelivery:
    platform = PLATFORM
    #: Telegram allows a bot about one message a second per chat and 20 a minute in a group, edits included.
    #: Status edits take half of that (one per 2 s in private chats, 10 a minute elsewhere), shared by every
    #: job of the chat, so the pictures and replies to others still fit.
    status_edit_pace = EditPace(6.0, per="chat", by_chat_kind={ChatType.PRIVATE.value: 2.0})

    def __init__(self, application: Application) -> None:
        self.application = application
        #: Status messages that carry a photo now, so their text is a caption.
        self._captioned: set[str] = set()

    @property
    def bot(self) -> Any:
        return self.application.bot

    def _once(self) -> dict[str, Any]:
        """Keywords for a request made once (only a bot with a rate limiter takes ``rate_limit_args``)."""
        return {"rate_limit_args": ONE_ATTEMPT} if getattr(self.bot, "rate_limiter", None) is not None else {}

    async def post_status(self, job: Job, text: str) -> str | None:
        context = job.reply_context
        message = await with_retries(
            self.bot.send_message, chat_id=context["chat_id"], text=text,
            reply_to_message_id=context.get("message_id"), allow_sending_without_reply=True,
        )  # fmt: skip
        return str(message.message_id)

    async def edit_status(self, job: Job, message_ref: str, text: str, preview: bytes | None = None) -> None:
        """One attempt, no retries: the core paces these and carries on when one fails."""
        chat_id = job.reply_context["chat_id"]
        where = {"chat_id": chat_id, "message_id": int(message_ref), **self._once()}
        key = f"{chat_id}:{message_ref}"
        try:
            if preview is not None:
                photo = InputMediaPhoto(preview, caption=text, filename=f"preview-{job.id}.jpg")
                await self.bot.edit_message_media(media=photo, **where)
                self._captioned.add(key)
            elif key in self._captioned:
                await self.bot.edit_message_caption(caption=text, **where)
            else:
                try:
                    await self.bot.edit_message_text(text=text, **where)
                except BadRequest as error:
                    if NO_TEXT_TO_EDIT not in str(error).lower():
                        raise
                    self._captioned.add(key)  # a photo already (a preview shown before a restart)
                    await self.bot.edit_message_caption(caption=text, **where)
        except BadRequest as error:
            if "not modified" not in str(error).lower():
                raise

    async def _remove_status(self, job: Job) -> None:
        chat_id = job.reply_context["chat_id"]
        if not job.status_message_id:
            return
        self._captioned.discard(f"{chat_id}:{job.status_message_id}")
        try:
            await self.bot.delete_message(chat_id=chat_id, message_id=int(job.status_message_id))
        except (BadRequest, Forbidden, NetworkError):
            logger.info("could not delete the status message of job %s", job.id)

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
                self.bot.send_message, chat_id=chat_id, text=texts.RATE_THEM,
                reply_markup=rating_keyboard(job, pictures),
            )  # fmt: skip
        await self._remove_status(job)

    async def post_notice(self, job: Job, text: str) -> None:
        await with_retries(self.bot.send_message, chat_id=job.reply_context["chat_id"], text=text)

    async def post_failure(self, job: Job, code: ErrorCode, text: str) -> None:
        await with_retries(
            self.bot.send_message, chat_id=job.reply_context["chat_id"], text=failure_text(code, text),
            reply_to_message_id=job.reply_context.get("message_id"), allow_sending_without_reply=True,
        )  # fmt: skip
        await self._remove_status(job)  # the failure says it all; no half-painted preview is left above it


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
                    f"{label}{stars}★" if stars == 1 else f"{stars}★",
                    callback_data=RATE_BUTTON.format(picture_id=picture.id, stars=stars),
                )
                for stars in range(1, 6)
            ]
        )
    rows.append([InlineKeyboardButton("🔁 Re-roll", callback_data=REROLL_BUTTON.format(job_id=job.id))])
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


def _largest_photo(message: Message) -> tuple[str, int | None, str | None] | None:
    """``(file_id, size, declared type)``; a photo Telegram compressed declares none (it is a JPEG)."""
    if message.photo:
        largest = message.photo[-1]
        return largest.file_id, largest.file_size, None
    if message.document and (message.document.mime_type or "").startswith("image/"):
        return message.document.file_id, message.document.file_size, message.document.mime_type
    return None


async def _download(context: ContextTypes.DEFAULT_TYPE, file_id: str, size: int | None, mime_type: str | None) -> bytes:
    core_of(context).check_photo(size, mime_type)  # before downloading it
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
    in_group = message.chat.type in {ChatType.GROUP, ChatType.SUPERGROUP}
    options = photo_order(message.caption, context.bot.username or "", in_group=in_group)
    if options is None:
        return  # not an order for us (in a group, only a /profile caption is)
    requester = person_of(update.effective_user)
    if not options.get("style"):
        token = core.await_style(requester, photo, options)
        await with_retries(message.reply_text, texts.ASK_FOR_STYLE, reply_markup=style_keyboard(core, token))
        return
    core.check_profile(options)
    data = await _download(context, *photo)
    order = ProfileOrder(
        requester=requester,
        event_key=f"update:{update.update_id}",
        chat_id=str(message.chat_id),
        reply_context={"chat_id": message.chat_id, "message_id": message.message_id, CHAT_KIND: str(message.chat.type)},
        options=options,
        photo=data,
        photo_type=photo[2],
    )
    await core.order_profile(order)


def style_keyboard(core: ChatCore, token: str) -> InlineKeyboardMarkup:
    buttons = [
        InlineKeyboardButton(
            f"{item.emoji} {item.display_name}", callback_data=STYLE_BUTTON.format(token=token, style=item.name)
        )
        for item in core.styles.values()
    ]
    return InlineKeyboardMarkup([buttons[index : index + 2] for index in range(0, len(buttons), 2)])


ButtonHandler = Callable[[CallbackQuery, re.Match[str], ContextTypes.DEFAULT_TYPE], Awaitable[None]]


def button(handler: ButtonHandler) -> Callable[[Update, ContextTypes.DEFAULT_TYPE], Coroutine[Any, Any, None]]:
    """A handler for one kind of button: the pattern's match goes in, an error comes back as an alert."""

    @functools.wraps(handler)
    async def answer(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        query = update.callback_query
        if query is None or context.match is None:
            return
        try:
            await handler(query, context.match, context)
        except MmppError as error:
            await query.answer(f"{error.message} ({error.code.value})"[:200], show_alert=True)

    return answer


def _where(query: CallbackQuery) -> tuple[int, dict[str, Any]]:
    chat_id = query.message.chat.id if query.message else query.from_user.id
    reply_to = query.message.message_id if query.message else None
    kind = str(query.message.chat.type) if query.message else ChatType.PRIVATE.value  # no message: the user's chat
    return chat_id, {"chat_id": chat_id, "message_id": reply_to, CHAT_KIND: kind}


@button
async def on_rate_button(query: CallbackQuery, match: re.Match[str], context: ContextTypes.DEFAULT_TYPE) -> None:
    stars = int(match["stars"])
    await core_of(context).rate(person_of(query.from_user), int(match["picture"]), stars, "button")
    await query.answer(texts.thanks_for_rating(stars))


@button
async def on_reroll_button(query: CallbackQuery, match: re.Match[str], context: ContextTypes.DEFAULT_TYPE) -> None:
    chat_id, reply_context = _where(query)
    await core_of(context).reroll(
        person_of(query.from_user), int(match["job"]), f"callback:{query.id}", str(chat_id), reply_context
    )
    await query.answer(texts.REROLLING)


@button
async def on_style_button(query: CallbackQuery, match: re.Match[str], context: ContextTypes.DEFAULT_TYPE) -> None:
    core = core_of(context)
    chooser = person_of(query.from_user)
    choice = core.take_style_choice(match["token"], chooser, match["style"])
    data = await _download(context, *choice.photo)
    chat_id, reply_context = _where(query)
    await core.order_profile(
        ProfileOrder(
            chooser, f"callback:{query.id}", str(chat_id), reply_context, choice.options, data,
            photo_type=choice.photo[2],
        )
    )  # fmt: skip
    await query.answer(texts.order_taken(match["style"]))


async def on_stale_button(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Any other button data: not one of ours, or from a version that is gone."""
    if update.callback_query is not None:
        await update.callback_query.answer(texts.STALE_BUTTON, show_alert=True)


async def on_reaction(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    reaction = update.message_reaction
    if reaction is None or reaction.user is None:
        return
    emojis = [item.emoji for item in reaction.new_reaction if isinstance(item, ReactionTypeEmoji)]
    await core_of(context).reactions_now(
        person_of(reaction.user), message_ref(reaction.chat.id, reaction.message_id), emojis
    )


async def on_error(update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Every failure ends as one line to the person; the exception is logged, the bot goes on."""
    error = context.error
    if isinstance(error, MmppError):
        text = failure_text(error.code, error.message)
    else:
        # Exception texts from the HTTP layer can hold the token-bearing URL.
        logger.error("telegram handler failed: %s", type(error).__name__, exc_info=error)
        text = failure_text(ErrorCode.INTERNAL, texts.SOMETHING_WENT_WRONG)
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
        .rate_limiter(RateLimiter(max_retries=3))
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
    application.add_handler(CallbackQueryHandler(on_rate_button, pattern=RATE_PATTERN))
    application.add_handler(CallbackQueryHandler(on_reroll_button, pattern=REROLL_PATTERN))
    application.add_handler(CallbackQueryHandler(on_style_button, pattern=STYLE_PATTERN))
    application.add_handler(CallbackQueryHandler(on_stale_button))
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
