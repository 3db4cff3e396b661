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

The pictures are recorded as posted the moment their message exists (an
album, which Telegram takes all or nothing, as soon as it is sent); a retried
delivery posts only what has no message yet, and the rating keyboard that
follows an album.  What Telegram refuses for good (400, 403: the bot was
blocked, removed from the group, may not send photos there) is raised as the
core's :class:`DeliveryRefused`, so the core stops instead of asking again.

The bot token is part of every Bot API and file URL, so nothing here logs
URLs or exception texts from the HTTP layer.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
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
from telegram.constants import ChatMemberStatus, ChatType
from telegram.error import BadRequest, ChatMigrated, Forbidden, NetworkError, RetryAfter, TelegramError, TimedOut
from telegram.ext import (
    Application,
    ApplicationBuilder,
    BaseRateLimiter,
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
from bot.core.person_settings import SettingsRequest
from bot.core.platform import DeliveryRefused
from bot.settings import BotSettings
from bot.storage import Job, PersonSettings, StoredPicture
from mmpp.contract import MAX_PICTURES, MIN_PICTURES
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
    ("settings", "your defaults: style, mode, picture count, prompt suffix"),
    ("forget", "delete everything about you"),
]
#: Attempts at one request (the first included) when Telegram answers 429 or the network fails.
SEND_ATTEMPTS = 4
#: The longest ``retry_after`` waited out; a longer one is raised at once (the core's delivery retries, bounded,
#: come back later), so no reply sits in a loop for an hour.
MAX_RETRY_AFTER_SECONDS = 60.0
#: ``rate_limit_args`` of a best-effort request (a status edit): never waits, tried once (see :class:`FloodLimits`).
ONE_ATTEMPT = -1
NO_TEXT_TO_EDIT = "there is no text in the message to edit"
#: Callback data of the inline buttons (at most 64 bytes), one kind per button, each routed to its own
#: handler by pattern.  The short tags of earlier versions (r, rr, s) are still understood, so buttons
#: under pictures posted before keep working.
RATE_BUTTON = "rate:{picture_id}:{stars}"
REROLL_BUTTON = "reroll:{job_id}"
STYLE_BUTTON = "style:{token}:{style}"
UPSCALE_BUTTON = "upscale:{picture_id}"
RATE_PATTERN = r"^(?:rate|r):(?P<picture>[0-9]+):(?P<stars>[1-5])$"
REROLL_PATTERN = r"^(?:reroll|rr):(?P<job>[0-9]+)$"
STYLE_PATTERN = r"^(?:style|s):(?P<token>[A-Za-z0-9_-]+):(?P<style>[a-z0-9-]+)$"
UPSCALE_PATTERN = r"^upscale:(?P<picture>[0-9]+)$"
#: A /settings keyboard's button: whose keyboard it is (only they may press it), which default, which value.
SETTINGS_BUTTON = "set:{owner}:{key}:{value}"
SETTINGS_PATTERN = r"^set:(?P<owner>[0-9]+):(?P<key>style|mode|count|clear):(?P<value>[a-z0-9-]+)$"
#: The longest callback data Telegram takes (bytes); a button that would need more is left out.
MAX_CALLBACK_DATA_BYTES = 64
#: The longest text of a callback query's answer (Bot API: 0-200 characters).
MAX_ANSWER_CHARACTERS = 200
GROUP_CHATS = frozenset({ChatType.GROUP.value, ChatType.SUPERGROUP.value})
#: The key of a job's reply context that holds the requester's Telegram user id (their private chat's id).
REQUESTER = "user_id"
ADMINISTRATORS = frozenset({ChatMemberStatus.ADMINISTRATOR.value, ChatMemberStatus.OWNER.value})


def person_of(user: Any) -> Person:
    return Person(PLATFORM, str(user.id), user.full_name or user.username or "")


def core_of(context: ContextTypes.DEFAULT_TYPE) -> ChatCore:
    return context.application.bot_data["core"]


def message_ref(chat_id: int | str, message_id: int | str) -> str:
    return f"{chat_id}:{message_id}"


def retry_after_seconds(error: RetryAfter) -> float:
    delay = error.retry_after
    return delay.total_seconds() if isinstance(delay, timedelta) else float(delay)


async def with_retries(action: Any, *arguments: Any, **keywords: Any) -> Any:
    """Call the Bot API at most :data:`SEND_ATTEMPTS` times, waiting out a 429 or a network failure between.

    ``RetryAfter`` means the message was not sent, so retrying cannot post it twice; its
    ``retry_after`` is honoured up to :data:`MAX_RETRY_AFTER_SECONDS` (a longer one is raised at
    once).  A timeout is retried too, accepting a rare duplicate over a lost reply; a refusal
    (400, 403) is final.  The last attempt's error is raised.
    """
    for attempt in range(1, SEND_ATTEMPTS + 1):
        try:
            return await action(*arguments, **keywords)
        except RetryAfter as error:
            pause = retry_after_seconds(error)
            if attempt == SEND_ATTEMPTS or pause > MAX_RETRY_AFTER_SECONDS:
                raise
        except (TimedOut, NetworkError) as error:
            if isinstance(error, BadRequest | Forbidden) or attempt == SEND_ATTEMPTS:
                raise
            pause = 0.5 * 2 ** (attempt - 1)
        await asyncio.sleep(pause)
    raise AssertionError("unreachable: the last attempt returns or raises")


@contextmanager
def refusals_are_final() -> Iterator[None]:
    """Telegram's refusals that asking again cannot change, as the core's :class:`DeliveryRefused`: 403 (the
    bot was blocked by the user, kicked from the group, is no member of it), 400 (chat not found, not enough
    rights to send photos, a request it will never take) and a group that became a supergroup (a new chat
    id).  A 429 beyond :func:`with_retries`, a 5xx and a network failure pass as they are: retried, bounded."""
    try:
        yield
    except (BadRequest, Forbidden, ChatMigrated) as error:
        # Telegram's description only (it never holds the token-bearing URL).
        raise DeliveryRefused(f"Telegram refused it: {error.message}") from error


class NoRoomError(Exception):
    """A best-effort request was not sent: the chat's flood budget had no room for it beside the sends."""


@dataclass
class SlidingWindow:
    """At most ``count`` requests in any ``seconds``: how Telegram is believed to count (and the fake counts).

    Not a leaky bucket: a bucket that refills steadily lets nearly twice its size through within
    one window, which a limit per window refuses.
    """

    count: int
    seconds: float
    times: deque[float] = field(default_factory=deque)

    def _expire(self, now: float) -> None:
        while self.times and now - self.times[0] >= self.seconds:
            self.times.popleft()

    def free(self, now: float) -> int:
        self._expire(now)
        return self.count - len(self.times)

    def wait(self, now: float, amount: int) -> float:
        """Seconds until ``amount`` more fit (0: now)."""
        self._expire(now)
        leaving = len(self.times) + min(amount, self.count) - self.count
        return 0.0 if leaving <= 0 else self.times[leaving - 1] + self.seconds - now

    def take(self, now: float, amount: int) -> None:
        self.times.extend([now] * min(amount, self.count))


#: Telegram's flood limits as this bot keeps them (Telegram publishes no exact rule): about 30 requests a
#: second overall; about one message a second per chat, short bursts tolerated (here: 3 in 3 s); 20
#: messages a minute in a group, an album counting each of its messages.  Each window is a little
#: longer than the rule, so the time a request takes to reach Telegram never makes two look closer there.
OVERALL_PER_SECOND = 30
CHAT_BURST = 3
CHAT_BURST_SECONDS = 3.0
GROUP_PER_MINUTE = 20
WINDOW_MARGIN_SECONDS = 0.25
#: What a best-effort request must leave free of each limit for the sends that may come right after it.
OVERALL_RESERVE = 10
CHAT_RESERVE = 1
GROUP_RESERVE = 5
#: The most times one send re-checks the limits before going anyway (another chat's sends can take the
#: overall budget meanwhile); a 429 then is still handled by the caller.
MAX_TURN_WAITS = 50
_COUNTED = ("send", "edit", "copy", "forward")


class FloodLimits(BaseRateLimiter[int]):
    """Telegram's flood limits kept on the bot's side, so a request waits its turn here instead of being refused.

    Sends (pictures, replies, notices) wait for their turn, in order within a chat.  Best-effort
    requests, sent with ``rate_limit_args=ONE_ATTEMPT`` (the status edits), never wait: when the
    chat lacks room for them and a reserve for the sends (or a send is waiting there), they are
    refused at once with :class:`NoRoomError`, without reaching Telegram, so a picture never
    queues behind a status edit; :meth:`has_room` lets the core see that before it tries.  A 429
    that Telegram still answers blocks the chat's best-effort requests for its ``retry_after``,
    goes to ``on_refused(chat_id, seconds)`` (the core holds the chat's status edits) and is
    raised: nothing here retries, the callers do, bounded (:func:`with_retries`).
    """

    def __init__(
        self,
        on_refused: Callable[[str, float], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        self.on_refused = on_refused
        self._clock = clock
        self._sleep = sleep
        self._overall = SlidingWindow(OVERALL_PER_SECOND, 1.0 + WINDOW_MARGIN_SECONDS)
        self._chats: dict[str, SlidingWindow] = {}
        self._groups: dict[str, SlidingWindow] = {}
        self._blocked_until: dict[str, float] = {}
        self._turns: dict[str, asyncio.Lock] = {}

    async def initialize(self) -> None:
        """Nothing to set up."""

    async def shutdown(self) -> None:
        """Nothing to close."""

    @staticmethod
    def is_group(chat_id: str) -> bool:
        """Groups, supergroups (and channels) have negative ids or are named by ``@username``."""
        return chat_id.startswith(("-", "@"))

    def _windows(self, chat_id: str) -> list[tuple[SlidingWindow, int, int]]:
        """Each limit a request in the chat counts against: ``(window, reserve, counts an album as its size)``."""
        if len(self._chats) > 1024:
            now = self._clock()
            for name in [name for name, window in self._chats.items() if window.free(now) == window.count]:
                del self._chats[name]
                self._groups.pop(name, None)
        chat = self._chats.setdefault(chat_id, SlidingWindow(CHAT_BURST, CHAT_BURST_SECONDS + WINDOW_MARGIN_SECONDS))
        windows = [(self._overall, OVERALL_RESERVE, 0), (chat, CHAT_RESERVE, 0)]
        if self.is_group(chat_id):
            group = self._groups.setdefault(chat_id, SlidingWindow(GROUP_PER_MINUTE, 60.0 + WINDOW_MARGIN_SECONDS))
            windows.append((group, GROUP_RESERVE, 1))
        return windows

    def has_room(self, chat_id: str) -> bool:
        """Whether a best-effort request in the chat would be sent now (and leave the reserves free)."""
        now = self._clock()
        if now < self._blocked_until.get(chat_id, 0.0):
            return False
        turn = self._turns.get(chat_id)
        if turn is not None and turn.locked():
            return False  # a send is waiting for its turn: it gets the next slot
        return all(window.free(now) >= 1 + reserve for window, reserve, _ in self._windows(chat_id))

    def _turn(self, chat_id: str) -> asyncio.Lock:
        if len(self._turns) > 1024:
            for name in [name for name, lock in self._turns.items() if not lock.locked()]:
                del self._turns[name]
        return self._turns.setdefault(chat_id, asyncio.Lock())

    def _take(self, chat_id: str, messages: int) -> None:
        now = self._clock()
        for window, _, by_size in self._windows(chat_id):
            window.take(now, messages if by_size else 1)

    def _delay(self, chat_id: str, messages: int) -> float:
        now = self._clock()
        waits = [window.wait(now, messages if by_size else 1) for window, _, by_size in self._windows(chat_id)]
        return max([self._blocked_until.get(chat_id, 0.0) - now, *waits])

    async def _wait_turn(self, chat_id: str, messages: int) -> None:
        async with self._turn(chat_id):
            for _ in range(MAX_TURN_WAITS):
                delay = self._delay(chat_id, messages)
                if delay <= 0:
                    break
                await self._sleep(delay)
            self._take(chat_id, messages)

    def _refused(self, chat_id: str, seconds: float) -> None:
        self._blocked_until[chat_id] = max(self._blocked_until.get(chat_id, 0.0), self._clock() + seconds)
        if self.on_refused is not None:
            try:
                self.on_refused(chat_id, seconds)
            except Exception:  # reporting must never turn a 429 into another error
                logger.warning("reporting a 429 in a chat failed", exc_info=True)

    async def process_request(
        self,
        callback: Callable[..., Coroutine[Any, Any, bool | dict[str, Any] | list[dict[str, Any]]]],
        args: Any,
        kwargs: dict[str, Any],
        endpoint: str,
        data: dict[str, Any],
        rate_limit_args: int | None,
    ) -> bool | dict[str, Any] | list[dict[str, Any]]:
        chat = data.get("chat_id")
        if chat is None or not endpoint.startswith(_COUNTED) or endpoint == "sendChatAction":
            return await callback(*args, **kwargs)  # Telegram counts messages sent and edited, not the rest
        chat_id = str(chat)
        messages = len(data.get("media") or ()) if endpoint == "sendMediaGroup" else 1
        if rate_limit_args == ONE_ATTEMPT:
            if not self.has_room(chat_id):
                raise NoRoomError(f"no room in the chat's flood budget for {endpoint}")
            self._take(chat_id, messages)
        else:
            await self._wait_turn(chat_id, messages)
        try:
            return await callback(*args, **kwargs)
        except RetryAfter as error:
            self._refused(chat_id, retry_after_seconds(error))
            raise


# --------------------------------------------------------------------------- the core → Telegram


class TelegramDelivery:
    platform = PLATFORM
    #: Telegram allows a bot about one message a second per chat and 20 a minute in a group, edits included.
    #: Status edits take at most half of a private chat's (one per 2 s) and a quarter of a group's (5 a
    #: minute), shared by every job of the chat, and only when the chat's budget has room for them beside
    #: the pictures and replies (the instance's pace asks its :class:`FloodLimits`).
    status_edit_pace = EditPace(12.0, per="chat", by_chat_kind={ChatType.PRIVATE.value: 2.0})

    def __init__(self, application: Application) -> None:
        self.application = application
        #: Status messages that carry a photo now, so their text is a caption.
        self._captioned: set[str] = set()
        limits = application.bot.rate_limiter
        self.limits = limits if isinstance(limits, FloodLimits) else None
        if self.limits is not None:
            self.status_edit_pace = dataclasses.replace(type(self).status_edit_pace, room=self._room_for_status)

    def _room_for_status(self, job: Job) -> bool:
        return self.limits is None or self.limits.has_room(str(job.reply_context["chat_id"]))

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
        with refusals_are_final():
            await self._post_pictures(job, pictures, caption, on_posted)

    async def _post_pictures(
        self, job: Job, pictures: list[StoredPicture], caption: str, on_posted: PostedCallback
    ) -> None:
        """The pictures not posted yet, then (for several) the rating keyboard, which an album cannot carry.

        One picture goes with its keyboard in one message.  Several go as an album, which Telegram
        takes all or nothing: each is recorded as posted as soon as it returns, so when the keyboard
        fails after it, the retry sends only the keyboard.  (A bot stopped halfway through recording
        leaves a few unrecorded: only those go again, as one album or one photo.)
        """
        chat_id = job.reply_context["chat_id"]
        reply_to = job.reply_context.get("message_id")
        unposted = [picture for picture in pictures if picture.message_ref is None]
        # The caption goes with the first picture; once that is out, it is not repeated.
        first_caption = caption if unposted and unposted[0] is pictures[0] else None
        if job.is_upscale:  # a file, so Telegram does not recompress the picture it was made to sharpen
            if unposted:
                message = await with_retries(
                    self.bot.send_document, chat_id=chat_id, document=pictures[0].png,
                    filename=f"mmpp-{job.id}-2x.png", caption=caption, reply_markup=rating_keyboard(job, pictures),
                    reply_to_message_id=reply_to, allow_sending_without_reply=True,
                )  # fmt: skip
                await on_posted(pictures[0], message_ref(chat_id, message.message_id))
            await self._remove_status(job)
            return
        if len(pictures) == 1:
            if unposted:
                message = await with_retries(
                    self.bot.send_photo, chat_id=chat_id, photo=pictures[0].png, caption=caption,
                    reply_markup=rating_keyboard(job, pictures), reply_to_message_id=reply_to,
                    allow_sending_without_reply=True,
                )  # fmt: skip
                await on_posted(pictures[0], message_ref(chat_id, message.message_id))
            await self._remove_status(job)
            return
        if len(unposted) == 1:  # an album needs two at least
            message = await with_retries(
                self.bot.send_photo, chat_id=chat_id, photo=unposted[0].png, caption=first_caption,
                reply_to_message_id=reply_to, allow_sending_without_reply=True,
            )  # fmt: skip
            await on_posted(unposted[0], message_ref(chat_id, message.message_id))
        elif unposted:
            media = [
                InputMediaPhoto(picture.png, caption=first_caption if index == 0 else None)
                for index, picture in enumerate(unposted)
            ]
            messages = await with_retries(
                self.bot.send_media_group, chat_id=chat_id, media=media, reply_to_message_id=reply_to,
                allow_sending_without_reply=True,
            )  # fmt: skip
            for picture, message in zip(unposted, messages, strict=True):
                await on_posted(picture, message_ref(chat_id, message.message_id))
        await with_retries(
            self.bot.send_message, chat_id=chat_id, text=texts.RATE_THEM, reply_markup=rating_keyboard(job, pictures),
        )  # fmt: skip
        await self._remove_status(job)

    async def post_notice(self, job: Job, text: str) -> None:
        await with_retries(self.bot.send_message, chat_id=job.reply_context["chat_id"], text=text)

    async def post_failure(self, job: Job, code: ErrorCode, text: str) -> None:
        with refusals_are_final():
            await with_retries(
                self.bot.send_message, chat_id=job.reply_context["chat_id"], text=failure_text(code, text),
                reply_to_message_id=job.reply_context.get("message_id"), allow_sending_without_reply=True,
            )  # fmt: skip
        await self._remove_status(job)  # the failure says it all; no half-painted preview is left above it

    async def post_direct(self, job: Job, code: ErrorCode, text: str) -> None:
        """Where the job's chat is a group that refused the bot: the requester's private chat with it, the one
        place left to say how the job ended.  Telegram lets a bot write there only to someone who started it
        (else 403 "bot can't initiate conversation with a user", raised).  A job ordered in private has no
        other chat (the one that refused is the private one), nor has one whose requester is not known."""
        requester = job.reply_context.get(REQUESTER)
        if requester is None or str(requester) == str(job.reply_context["chat_id"]):
            return
        await with_retries(self.bot.send_message, chat_id=requester, text=failure_text(code, text))


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
    if job.is_upscale:  # nothing to make from an upscale but its rating
        return InlineKeyboardMarkup(rows)
    rows.append(
        [
            InlineKeyboardButton(
                f"#{picture.position} {texts.UPSCALE_LABEL}" if len(pictures) > 1 else f"⬆️ {texts.UPSCALE_LABEL}",
                callback_data=UPSCALE_BUTTON.format(picture_id=picture.id),
            )
            for picture in pictures
        ]
    )
    rows.append([InlineKeyboardButton("🔁 Re-roll", callback_data=REROLL_BUTTON.format(job_id=job.id))])
    return InlineKeyboardMarkup(rows)


# --------------------------------------------------------------------------- Telegram → the core


async def reply_line(update: Update, text: str) -> None:
    if update.effective_message is not None:
        await with_retries(update.effective_message.reply_text, text)


def in_a_group(message: Message | None) -> bool:
    return message is not None and str(message.chat.type) in GROUP_CHATS


async def on_start(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """``/start`` and ``/help``; in a group they name ``/profile@ThisBot``, the form that reaches this bot
    whichever bot spoke last (privacy mode gives a plain ``/profile`` only to the last bot that wrote)."""
    how_to_order = HOW_TO_ORDER
    if in_a_group(update.effective_message):
        how_to_order = texts.how_to_order_in_a_group(f"/profile@{context.bot.username}")
    core = core_of(context)
    if update.effective_user is None:
        await reply_line(update, core.help_text(how_to_order))
        return
    await reply_line(update, await core.help_for(person_of(update.effective_user), how_to_order))


async def on_group_command(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Before anything else a command in a group does: once per group, say so where reactions never reach the bot.

    Telegram sends ``message_reaction`` updates from a group only to bots that administer it; the
    core asks (through ``getChatMember``) only while the group has not been told, and remembers.
    Best effort: a failure here never stops the command itself.
    """
    message = update.effective_message
    if message is None:
        return
    chat_id = message.chat.id

    async def bot_sees_reactions() -> bool:
        member = await with_retries(context.bot.get_chat_member, chat_id, context.bot.id)
        return str(member.status) in ADMINISTRATORS

    try:
        notice = await core_of(context).reactions_notice(PLATFORM, str(chat_id), bot_sees_reactions)
        if notice is not None:
            await with_retries(context.bot.send_message, chat_id=chat_id, text=notice)
    except Exception as error:  # noqa: BLE001 - the command goes on whatever happened to the notice
        logger.warning("the reactions notice in a group failed (%s)", type(error).__name__)


async def on_styles(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    await reply_line(update, core_of(context).styles_text())


async def on_history(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    await reply_line(update, await core_of(context).history_text(person_of(update.effective_user)))


async def on_forget(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    await reply_line(update, await core_of(context).forget(person_of(update.effective_user)))


async def on_settings(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """``/settings key:value ...`` or ``/settings clear`` as typed; a bare ``/settings`` shows the defaults with a
    keyboard to change them (only its owner's presses count)."""
    message = update.effective_message
    if message is None or update.effective_user is None:
        return
    core = core_of(context)
    person = person_of(update.effective_user)
    command = parse_caption(message.text, context.bot.username or "")
    if command is None:
        return  # /settings@AnotherBot
    if command.arguments or command.options:
        await reply_line(update, await core.settings_command(person, command.arguments, command.options))
        return
    current = await core.settings_of(person)
    keyboard = settings_keyboard(core, update.effective_user.id, current)
    await with_retries(message.reply_text, texts.settings_text(current), reply_markup=keyboard)


def settings_keyboard(core: ChatCore, owner: int, current: PersonSettings | None) -> InlineKeyboardMarkup:
    """The styles two a row, the modes, the counts, and clear; the value in force marked ✓.  A button whose
    data would not fit Telegram's 64 bytes (a very long style name) is left out rather than refused."""

    def choice(label: str, key: str, value: str, chosen: bool) -> InlineKeyboardButton | None:
        data = SETTINGS_BUTTON.format(owner=owner, key=key, value=value)
        if len(data.encode()) > MAX_CALLBACK_DATA_BYTES:
            return None
        return InlineKeyboardButton(f"✓ {label}" if chosen else label, callback_data=data)

    style = current.style if current else None
    styles = [choice(texts.style_label(item, item.name), "style", item.name, item.name == style)
              for item in core.styles.values()]  # fmt: skip
    fitting = [button for button in styles if button is not None]
    rows = [fitting[index : index + 2] for index in range(0, len(fitting), 2)]
    mode = current.mode if current else None
    rows.append([item for value in ("fast", "quality") if (item := choice(value, "mode", value, mode == value))])
    count = current.picture_count if current else None
    rows.append(
        [
            item
            for value in range(MIN_PICTURES, MAX_PICTURES + 1)
            if (item := choice(f"{value} 🖼", "count", str(value), count == value))
        ]
    )
    clear = choice("Clear my defaults", "clear", "all", False)
    if clear is not None:
        rows.append([clear])
    return InlineKeyboardMarkup([row for row in rows if row])


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
    completed = await core.order_options(requester, options)  # a default style, if they set one, is the style
    if not completed.get("style"):
        token = core.await_style(requester, photo, options)
        await with_retries(message.reply_text, texts.ASK_FOR_STYLE, reply_markup=style_keyboard(core, token))
        return
    core.check_profile(completed)
    data = await _download(context, *photo)
    where = {"chat_id": message.chat_id, "message_id": message.message_id, CHAT_KIND: str(message.chat.type)}
    order = ProfileOrder(
        requester=requester,
        event_key=f"update:{update.update_id}",
        chat_id=str(message.chat_id),
        reply_context={**where, REQUESTER: update.effective_user.id},
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


class QueryAnswer:
    """Answers one callback query, once, in one attempt, and never fails.

    Telegram takes the answer only for a few seconds after the press ("query is too old and
    response timeout expired" after that), so each button answers first and works after; a late
    or refused answer is logged, and what the button did is then shown in the chat instead.
    """

    def __init__(self, query: CallbackQuery) -> None:
        self._query = query
        self.tried = False

    async def __call__(self, text: str | None = None, *, alert: bool = False) -> bool:
        """Whether Telegram took the answer; ``False`` also when the query was answered (or tried) before."""
        if self.tried:
            return False
        self.tried = True
        try:
            await self._query.answer(text[:MAX_ANSWER_CHARACTERS] if text else None, show_alert=alert)
        except TelegramError as error:  # mostly BadRequest: "query is too old and response timeout expired"
            logger.info("could not answer a callback query (%s)", type(error).__name__)
            return False
        return True


ButtonHandler = Callable[[CallbackQuery, re.Match[str], ContextTypes.DEFAULT_TYPE, QueryAnswer], Awaitable[None]]


async def post_button_outcome(query: CallbackQuery, context: ContextTypes.DEFAULT_TYPE, text: str) -> None:
    """What a button did, as a message under the button's message (its query answered already, or too old)."""
    if query.message is not None:
        chat_id: int = query.message.chat.id
        reply_to: int | None = query.message.message_id
    else:
        chat_id, reply_to = query.from_user.id, None
    await with_retries(
        context.bot.send_message, chat_id=chat_id, text=text, reply_to_message_id=reply_to,
        allow_sending_without_reply=True,
    )  # fmt: skip


def button(handler: ButtonHandler) -> Callable[[Update, ContextTypes.DEFAULT_TYPE], Coroutine[Any, Any, None]]:
    """A handler for one kind of button.  It answers the query itself (as soon as it can, see
    :class:`QueryAnswer`); an error before that becomes an alert, one after (or one that does not fit
    an alert) a one-line message in the chat; an unanswered query is answered empty at the end."""

    @functools.wraps(handler)
    async def on_press(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        query = update.callback_query
        if query is None or context.match is None:
            return
        answer = QueryAnswer(query)
        try:
            await handler(query, context.match, context, answer)
        except MmppError as error:
            alert = f"{error.message} ({error.code.value})"
            if answer.tried or len(alert) > MAX_ANSWER_CHARACTERS or not await answer(alert, alert=True):
                await post_button_outcome(query, context, failure_text(error.code, error.message))
        finally:
            await answer()

    return on_press


def _where(query: CallbackQuery) -> tuple[int, dict[str, Any]]:
    chat_id = query.message.chat.id if query.message else query.from_user.id
    reply_to = query.message.message_id if query.message else None
    kind = str(query.message.chat.type) if query.message else ChatType.PRIVATE.value  # no message: the user's chat
    return chat_id, {"chat_id": chat_id, "message_id": reply_to, CHAT_KIND: kind, REQUESTER: query.from_user.id}


@button
async def on_rate_button(
    query: CallbackQuery, match: re.Match[str], context: ContextTypes.DEFAULT_TYPE, answer: QueryAnswer
) -> None:
    """A rating is one local write (milliseconds, no request), so its outcome can ride on the answer."""
    stars = int(match["stars"])
    await core_of(context).rate(person_of(query.from_user), int(match["picture"]), stars, "button")
    await answer(texts.thanks_for_rating(stars))


@button
async def on_reroll_button(
    query: CallbackQuery, match: re.Match[str], context: ContextTypes.DEFAULT_TYPE, answer: QueryAnswer
) -> None:
    """Answered first: ordering (the database, the status message, the queue) can outlast Telegram's wait.
    The job's status message, or a one-line error, is the outcome."""
    await answer(texts.REROLLING)
    chat_id, reply_context = _where(query)
    await core_of(context).reroll(
        person_of(query.from_user), int(match["job"]), f"callback:{query.id}", str(chat_id), reply_context
    )


@button
async def on_style_button(
    query: CallbackQuery, match: re.Match[str], context: ContextTypes.DEFAULT_TYPE, answer: QueryAnswer
) -> None:
    """The waiting photo is taken from memory (a stale button still gets an alert), then the query is
    answered, before the download (up to 20 MB) and the order; their outcome shows in the chat."""
    core = core_of(context)
    chooser = person_of(query.from_user)
    choice = core.take_style_choice(match["token"], chooser, match["style"])
    await answer(texts.order_taken(match["style"]))
    data = await _download(context, *choice.photo)
    chat_id, reply_context = _where(query)
    await core.order_profile(
        ProfileOrder(
            chooser, f"callback:{query.id}", str(chat_id), reply_context, choice.options, data,
            photo_type=choice.photo[2],
        )
    )  # fmt: skip


@button
async def on_settings_button(
    query: CallbackQuery, match: re.Match[str], context: ContextTypes.DEFAULT_TYPE, answer: QueryAnswer
) -> None:
    """One default changed by a press (a local write, so its outcome rides on the answer), then the keyboard's
    message shows the new defaults; a press on someone else's keyboard changes nothing."""
    if int(match["owner"]) != query.from_user.id:
        raise MmppError(ErrorCode.NOT_ALLOWED, "These buttons are someone else's; send /settings for your own.")
    core = core_of(context)
    person = person_of(query.from_user)
    key = match["key"]
    request = SettingsRequest({}, clear=True) if key == "clear" else SettingsRequest({key: match["value"]})
    text = await core.change_settings(person, request)
    await answer(texts.shorten(text, MAX_ANSWER_CHARACTERS))
    if query.message is None:
        return
    keyboard = settings_keyboard(core, query.from_user.id, await core.settings_of(person))
    try:
        await with_retries(query.edit_message_text, text, reply_markup=keyboard)
    except BadRequest as error:
        if "not modified" not in error.message.lower():  # the same value pressed again: nothing to show
            raise


@button
async def on_upscale_button(
    query: CallbackQuery, match: re.Match[str], context: ContextTypes.DEFAULT_TYPE, answer: QueryAnswer
) -> None:
    """Checked first (a few reads), so a stranger's press is refused in an alert only they see; then answered,
    before the order (which can outlast Telegram's wait); the job's status message is the outcome."""
    core = core_of(context)
    presser = person_of(query.from_user)
    await core.check_upscale(presser, int(match["picture"]))
    await answer(texts.UPSCALING)
    chat_id, reply_context = _where(query)
    await core.upscale(presser, int(match["picture"]), str(chat_id), reply_context)


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
    if isinstance(error, RetryAfter):
        # Telegram kept refusing after the bounded retries: a reply about it would be refused too.
        logger.warning("telegram kept refusing a reply as too many requests; it was not sent")
        return
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
        .rate_limiter(FloodLimits(on_refused=functools.partial(core.rate_limited, PLATFORM)))
        .concurrent_updates(True)
        .build()
    )
    application.bot_data["core"] = core
    # Group -1 runs before the handlers below, for every command (or command caption) in a group.
    group_command = filters.ChatType.GROUPS & (filters.COMMAND | filters.CaptionRegex(r"^/"))
    application.add_handler(MessageHandler(group_command, on_group_command), group=-1)
    application.add_handler(CommandHandler(["start", "help"], on_start))
    application.add_handler(CommandHandler("styles", on_styles))
    application.add_handler(CommandHandler("history", on_history))
    application.add_handler(CommandHandler("forget", on_forget))
    application.add_handler(CommandHandler("settings", on_settings))
    application.add_handler(MessageHandler(filters.PHOTO | filters.Document.IMAGE, on_photo))
    application.add_handler(CommandHandler("profile", on_profile_without_photo))
    application.add_handler(MessageHandler(filters.COMMAND, on_unknown_command))
    application.add_handler(CallbackQueryHandler(on_rate_button, pattern=RATE_PATTERN))
    application.add_handler(CallbackQueryHandler(on_reroll_button, pattern=REROLL_PATTERN))
    application.add_handler(CallbackQueryHandler(on_style_button, pattern=STYLE_PATTERN))
    application.add_handler(CallbackQueryHandler(on_upscale_button, pattern=UPSCALE_PATTERN))
    application.add_handler(CallbackQueryHandler(on_settings_button, pattern=SETTINGS_PATTERN))
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
