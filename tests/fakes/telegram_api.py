"""Loopback fake of the Telegram Bot API, for running the real python-telegram-bot against it.

Why a fake server instead of mocks: the Telegram adapter's bugs live in the wire details (which
``allowed_updates`` it asks for, whether it takes ``photo[-1]`` or the 90 px thumbnail, what it does
with a 429, whether its callback data fits in 64 bytes, whether its HTML is escaped). A mock of
``telegram.Bot`` checks none of that; a server speaking the Bot API's real wire format lets the
real ``Application`` (polling with ``getUpdates``) run unchanged, with only its base URLs moved::

    async with FakeTelegram(token="123:ABC") as fake:
        app = (ApplicationBuilder().token(fake.token)
               .base_url(fake.base_url).base_file_url(fake.base_file_url).build())

The server answers ``POST``/``GET /bot<TOKEN>/<method>`` with JSON, form-urlencoded or multipart
bodies exactly as PTB sends them, and ``GET /file/bot<TOKEN>/<file_path>`` for downloads. Every
request is recorded as a :class:`Call` (method, typed parameters, uploaded files' bytes, time).
Users act through async helpers (:meth:`FakeTelegram.send_message`, :meth:`~FakeTelegram.send_photo`,
:meth:`~FakeTelegram.press_button`, :meth:`~FakeTelegram.react`, ...) that queue genuine ``Update``
JSON, which the bot then fetches with ``getUpdates``.

Kept from the real server, because bots depend on it:

* ``getUpdates`` long-polls, confirms updates by ``offset`` (an update is forgotten only when a
  later call's offset passes it), remembers ``allowed_updates`` between calls, leaves out
  ``message_reaction``/``message_reaction_count``/``chat_member`` unless asked for, and answers an
  older, still-waiting poll with 409 Conflict when a new one arrives.
* Group privacy mode (on by default, as for every new bot), by Telegram's documented rules: in a
  group the bot gets commands addressed to it (``/cmd@ThisBot``, also in a photo's caption), plain
  commands (``/cmd``) only while it is the group's only bot or the last bot that wrote there (see
  :meth:`FakeTelegram.bot_writes`), and replies to its messages or to messages meant for it; a
  plain photo never reaches it.  A bot that administers the group gets every message.
  ``message_reaction`` updates from a group exist only for bots that administer it, and
  ``getChatMember`` / ``getChatAdministrators`` say whether it does.
* Callback queries: ``answerCallbackQuery`` is taken once per query and only within
  ``callback_query_timeout`` seconds of the press; later (or twice) it is the 400 Telegram answers,
  "query is too old and response timeout expired or query ID is invalid".
* Limits: ``getFile`` refuses files over 20 MB, ``sendPhoto`` photos over 10 MB, multipart requests
  over 50 MB; text 4096, caption 1024, callback data 64 bytes, callback answer text 200.
* ``editMessageMedia`` (Bot API 10.1): replaces the photo or document of a message, or turns a text
  message into a media message (its text and entities go, the new caption comes); uploads go as
  ``attach://<part>``, as for ``sendMediaGroup``; album messages keep their kind (documents stay
  documents); an inline keyboard not given again is removed, as with every edit. ``editMessageText``
  on a media message and ``editMessageCaption`` on a text message are refused as on Telegram.
* Photos come back as several ``PhotoSize`` variants (90/320/800/1280 px thumbnails, made with
  Pillow when it is installed, plus the original), each with its own ``file_id``.
* A chat the bot may no longer write to: a user who blocked the bot (:meth:`FakeTelegram.block_bot`) or a
  group that removed it (:meth:`FakeTelegram.remove_bot`) refuses every request naming it with
  Telegram's 403 ("Forbidden: bot was blocked by the user", "... was kicked from the supergroup
  chat"); a group that does not let the bot send photos (:meth:`FakeTelegram.forbid_photos`)
  refuses them with 400 "not enough rights to send photos to the chat", one that does not let it send
  files (:meth:`FakeTelegram.forbid_documents`) refuses documents likewise; an unknown chat is 400
  "chat not found".
* ``parse_mode="HTML"`` is parsed (tags become entities; a stray ``<`` is a 400), MarkdownV2's
  reserved characters must be escaped; editing to identical content is "message is not modified";
  editing text without ``reply_markup`` removes the inline keyboard.

Deliberate differences (see the module's tests for what they mean in practice):

* ``allowed_updates`` is applied when an update is handed out, not when it is created (the real
  server decides at creation time, so its first seconds are fuzzier); updates it filters out are
  dropped and listed in :attr:`FakeTelegram.dropped`.
* The largest ``PhotoSize`` keeps the uploaded bytes unchanged (Telegram recompresses to JPEG and
  caps the side at 1280/2560 px); its ``file_path`` still ends in ``.jpg``.
* The flood limits are off unless ``per_chat_interval`` / ``group_per_minute`` are given; then they
  are plain rules ("at most ``per_chat_burst`` requests in any ``per_chat_burst`` intervals per
  chat", "at most N messages per rolling minute in a group", an album counting each of its
  messages), counting sends and edits alike as Telegram does; Telegram publishes no exact rule.
* Inline-mode messages, channels, forum topics, videos and other media are not modelled.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import io
import itertools
import json
import math
import re
import secrets
import struct
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from types import TracebackType
from typing import Any

from aiohttp import web

from tests.fakes.spec_validation import telegram_refusal

try:  # The official list of reactions a bot may set; without PTB the fake accepts any emoji.
    from telegram.constants import ReactionEmoji

    _BOT_REACTIONS: frozenset[str] | None = frozenset(str(emoji.value) for emoji in ReactionEmoji)
except ImportError:  # pragma: no cover - PTB is installed wherever this fake is used
    _BOT_REACTIONS = None

Json = dict[str, Any]

MAX_DOWNLOAD_BYTES = 20 * 1024 * 1024
"""``getFile`` answers "file is too big" above this (the public Bot API server's download limit)."""
MAX_PHOTO_BYTES = 10 * 1024 * 1024
"""``sendPhoto`` refuses uploaded photos above this."""
MAX_REQUEST_BYTES = 50 * 1024 * 1024
"""Multipart uploads above this answer 413 Request Entity Too Large."""
MAX_TEXT = 4096
MAX_CAPTION = 1024
MAX_CALLBACK_DATA = 64
MAX_CALLBACK_ANSWER = 200
MEDIA_TYPES = frozenset({"animation", "audio", "document", "live_photo", "photo", "video"})
"""``InputMedia`` types of Bot API 10.1 (``InputMediaAnimation`` ... ``InputMediaVideo``)."""
PHOTO_SIDES = (90, 320, 800, 1280)
"""Longest side of the thumbnails Telegram makes for a photo (the original comes last)."""

ALL_UPDATE_TYPES = frozenset(
    {
        "message", "edited_message", "channel_post", "edited_channel_post", "business_connection",
        "business_message", "edited_business_message", "deleted_business_messages", "message_reaction",
        "message_reaction_count", "inline_query", "chosen_inline_result", "callback_query", "shipping_query",
        "pre_checkout_query", "purchased_paid_media", "poll", "poll_answer", "my_chat_member", "chat_member",
        "chat_join_request", "chat_boost", "removed_chat_boost",
    }
)  # fmt: skip
DEFAULT_EXCLUDED_UPDATES = frozenset({"chat_member", "message_reaction", "message_reaction_count"})
"""What Telegram leaves out while a bot has never asked for ``allowed_updates`` (or asked for ``[]``)."""

CHAT_ACTIONS = frozenset(
    {
        "typing", "upload_photo", "record_video", "upload_video", "record_voice", "upload_voice",
        "upload_document", "choose_sticker", "find_location", "record_video_note", "upload_video_note",
    }
)  # fmt: skip

CLIENT_CLOSED = 499
"""``Call.status`` of a request whose client disconnected before the answer (nginx's code for it)."""
CONFLICT = "Conflict: terminated by other getUpdates request; make sure that only one bot instance is running"
QUERY_TOO_OLD = "Bad Request: query is too old and response timeout expired or query ID is invalid"
NOT_MODIFIED = (
    "Bad Request: message is not modified: specified new message content and reply markup are exactly the same "
    "as a current content and reply markup of the message"
)
PHOTO_TOO_BIG = "Bad Request: PHOTO_SAVE_FILE_INVALID"
"""What oversized ``sendPhoto`` uploads get (the MTProto error the Bot API passes through)."""
BLOCKED_BY_THE_USER = "Forbidden: bot was blocked by the user"
KICKED_FROM_THE_GROUP = "Forbidden: bot was kicked from the group chat"
KICKED_FROM_THE_SUPERGROUP = "Forbidden: bot was kicked from the supergroup chat"
NO_RIGHTS_TO_SEND_PHOTOS = "Bad Request: not enough rights to send photos to the chat"
NO_RIGHTS_TO_SEND_DOCUMENTS = "Bad Request: not enough rights to send documents to the chat"

_STATUS_DESCRIPTIONS = {
    400: "Bad Request: injected by FakeTelegram.fail_next",
    401: "Unauthorized",
    403: BLOCKED_BY_THE_USER,
    404: "Not Found",
    409: CONFLICT,
    413: "Request Entity Too Large",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}

# Parameters that stay strings even when they look like JSON ("123" as a message text is text).
_STRING_PARAMS = frozenset(
    {
        "text", "caption", "callback_query_id", "file_id", "parse_mode", "language_code", "action",
        "inline_message_id", "url", "business_connection_id", "message_effect_id", "description",
        "short_description", "name", "title", "photo", "document", "emoji", "certificate", "secret_token",
    }
)  # fmt: skip

_API_PATH = re.compile(r"/bot([^/]+)/([^/]*)")
_FILE_PATH = re.compile(r"/file/bot([^/]+)/(.+)")
_COMMAND = re.compile(r"(?<!\S)/[A-Za-z0-9_]{1,64}(?:@[A-Za-z0-9_]{1,64})?")
_BOT_COMMAND_NAME = re.compile(r"[a-z0-9_]{1,32}")
_ADMINISTRATOR_RIGHTS = (
    "can_manage_chat", "can_delete_messages", "can_manage_video_chats", "can_restrict_members",
    "can_promote_members", "can_change_info", "can_invite_users", "can_post_stories", "can_edit_stories",
    "can_delete_stories", "can_pin_messages",
)  # fmt: skip
"""The rights of a ``ChatMemberAdministrator`` (those Bot API 10.1 requires, and pinning)."""
_INLINE_BUTTON_ACTIONS = frozenset(
    {
        "callback_data", "url", "web_app", "login_url", "switch_inline_query", "switch_inline_query_current_chat",
        "switch_inline_query_chosen_chat", "copy_text", "callback_game", "pay",
    }
)  # fmt: skip


class ApiError(Exception):
    """A refusal as the Bot API words it; becomes ``{"ok": false, "error_code": ..., ...}``."""

    def __init__(self, status: int, description: str, parameters: Json | None = None) -> None:
        super().__init__(description)
        self.status = status
        self.description = description
        self.parameters = parameters

    def body(self) -> Json:
        """The JSON body Telegram sends with this error."""
        body: Json = {"ok": False, "error_code": self.status, "description": self.description}
        if self.parameters:
            body["parameters"] = self.parameters
        return body


def bad_request(text: str) -> ApiError:
    """A 400 with Telegram's "Bad Request: " prefix, which PTB turns into ``BadRequest``."""
    return ApiError(400, f"Bad Request: {text}")


def too_many_requests(retry_after: int) -> ApiError:
    """A 429 with ``parameters.retry_after``, which PTB turns into ``RetryAfter``."""
    return ApiError(429, f"Too Many Requests: retry after {retry_after}", {"retry_after": retry_after})


@dataclass
class UploadedFile:
    """One file part of a multipart request."""

    field_name: str
    filename: str | None
    content_type: str | None
    data: bytes = field(repr=False)

    def __repr__(self) -> str:
        return f"UploadedFile({self.field_name!r}, {self.filename!r}, {self.content_type!r}, {len(self.data)} bytes)"


@dataclass(eq=False)
class Call:
    """One request the bot made, as the fake understood it.

    ``method`` is the canonical Bot API name (``"sendMessage"`` even if sent as ``sendmessage``);
    file downloads are recorded as ``"downloadFile"`` and unknown methods under their raw name.
    ``params`` holds typed values (numbers, dicts and lists decoded from form fields); ``files``
    the uploaded parts by field name. ``path`` is the raw URL path, which contains the bot token.
    ``status`` stays 0 while the request is still being answered (a long poll) and becomes 499
    (:data:`CLIENT_CLOSED`) when the client hung up first (a cancelled poll, a client-side timeout).
    """

    method: str
    params: Json
    files: dict[str, UploadedFile]
    path: str
    http_method: str
    at: float
    """``time.monotonic()`` when the request arrived."""
    wall: float
    """``time.time()`` when the request arrived."""
    status: int = 0
    response: Json | None = None

    @property
    def done(self) -> bool:
        return self.status != 0

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def result(self) -> Any:
        """The ``result`` the bot received (None for errors and downloads)."""
        return (self.response or {}).get("result")

    @property
    def error(self) -> str | None:
        """The error ``description`` the bot received, if any."""
        return None if self.ok or self.response is None else self.response.get("description")


@dataclass(frozen=True)
class FakeUser:
    """A Telegram user (or bot) as it appears in ``from``/``user`` fields."""

    id: int
    first_name: str
    username: str | None = None
    last_name: str | None = None
    language_code: str | None = "en"
    is_bot: bool = False

    def to_api(self) -> Json:
        data: Json = {"id": self.id, "is_bot": self.is_bot, "first_name": self.first_name}
        for key in ("last_name", "username", "language_code"):
            if getattr(self, key) is not None:
                data[key] = getattr(self, key)
        return data


@dataclass
class FakeChat:
    """A chat. ``bot_is_admin`` matters for groups: reaction updates need it, as on Telegram, and an
    administrator bot sees every message; ``other_bots`` are the group's other bots (privacy mode then
    gives a plain ``/command`` only to the last bot that wrote); ``owner`` its creator.  ``forbidden``:
    the bot may not write here any more (the user blocked it, the group removed it), and every request
    naming the chat answers Telegram's 403 with this description; ``bot_can_send_photos``: whether the
    group's permissions let the bot send photos (Telegram's 400 "not enough rights" otherwise);
    ``bot_can_send_documents`` the same for files (``can_send_documents``)."""

    id: int
    type: str
    title: str | None = None
    username: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    bot_is_admin: bool = False
    other_bots: list[FakeUser] = field(default_factory=list)
    owner: FakeUser | None = None
    forbidden: str | None = None
    bot_can_send_photos: bool = True
    bot_can_send_documents: bool = True

    def to_api(self) -> Json:
        data: Json = {"id": self.id, "type": self.type}
        for key in ("title", "username", "first_name", "last_name"):
            if getattr(self, key) is not None:
                data[key] = getattr(self, key)
        return data

    @property
    def is_group(self) -> bool:
        return self.type in ("group", "supergroup")


@dataclass
class StoredFile:
    """A file the fake can hand out through ``getFile`` and the download URL."""

    file_id: str
    file_unique_id: str
    file_path: str
    data: bytes = field(repr=False)
    width: int | None = None
    height: int | None = None
    file_name: str | None = None
    mime_type: str | None = None

    def photo_size(self) -> Json:
        return {
            "file_id": self.file_id,
            "file_unique_id": self.file_unique_id,
            "file_size": len(self.data),
            "width": self.width,
            "height": self.height,
        }

    def document(self) -> Json:
        data: Json = {"file_id": self.file_id, "file_unique_id": self.file_unique_id, "file_size": len(self.data)}
        if self.file_name:
            data["file_name"] = self.file_name
        if self.mime_type:
            data["mime_type"] = self.mime_type
        return data


@dataclass
class Dropped:
    """An update the bot did not get, and why (privacy mode, allowed_updates, not an admin)."""

    kind: str
    payload: Json
    reason: str
    update_id: int | None = None


@dataclass
class _Fault:
    status: int | None
    description: str | None = None
    retry_after: int = 1
    delay: float = 0.0
    html: bool = False


Handler = Callable[[Call, web.Request], Awaitable[Any]]


class FakeTelegram:
    """The fake Bot API server; use as ``async with FakeTelegram() as fake``.

    Args:
        token: the bot token; its number before the colon is the bot's user id.
        bot_username: what ``getMe`` answers, hence what ``/cmd@Name`` must name.
        privacy_mode: Telegram's group privacy mode (on for every new bot).
        max_long_poll: cap in seconds on how long ``getUpdates`` holds a request, whatever
            ``timeout`` the bot asked for, so tests never wait long.
        per_chat_interval: if set, a send or edit in a chat that would be the ``per_chat_burst``+1st
            within ``per_chat_burst`` of these intervals answers 429 with ``retry_after``, like
            Telegram's flood control (about one a second per chat, short bursts tolerated).
        per_chat_burst: how many sends or edits in a row a chat takes (1: one per interval, no burst).
        group_per_minute: if set, a send or edit in a group that would make more than N messages
            within 60 s answers 429 (Telegram: about 20 a minute per group; an album counts its size).
        callback_query_timeout: seconds after a button press within which ``answerCallbackQuery``
            is taken (Telegram does not publish its figure; clients give up after about 10-15 s).
    """

    def __init__(
        self,
        token: str = "123:ABC",
        *,
        bot_username: str = "MmppTestBot",
        bot_name: str = "MMPP test bot",
        privacy_mode: bool = True,
        max_long_poll: float = 5.0,
        per_chat_interval: float | None = None,
        per_chat_burst: int = 1,
        group_per_minute: int | None = None,
        callback_query_timeout: float = 10.0,
    ) -> None:
        bot_id, _, secret = token.partition(":")
        if not bot_id.isdigit() or not secret:
            raise ValueError("a bot token looks like '<bot id>:<secret>'")
        self.token = token
        self.bot_user = FakeUser(int(bot_id), bot_name, bot_username, language_code=None, is_bot=True)
        self.privacy_mode = privacy_mode
        self.max_long_poll = max_long_poll
        self.per_chat_interval = per_chat_interval
        self.per_chat_burst = per_chat_burst
        self.group_per_minute = group_per_minute
        self.callback_query_timeout = callback_query_timeout

        self.dropped: list[Dropped] = []
        """Updates the bot never got, with the reason."""
        self.delivered: list[int] = []
        """update_ids in the order ``getUpdates`` handed them out (repeats when re-delivered)."""
        self.allowed_updates_history: list[list[str]] = []
        """Every ``allowed_updates`` list the bot sent, in order."""
        self.messages: dict[tuple[int, int], Json] = {}
        """Every message in every chat, by (chat_id, message_id), in its current (edited) state."""
        self.bot_reactions: dict[tuple[int, int], list[Json]] = {}
        """Reactions the bot set with ``setMessageReaction``."""
        self.callback_answers: dict[str, Json] = {}
        """``answerCallbackQuery`` parameters by callback query id."""

        self._port = 0
        self._runner: web.AppRunner | None = None
        self._closing = False
        self._changed = asyncio.Event()
        self._calls: list[Call] = []
        self._pending: list[Json] = []
        self._forced: list[Json] = []
        self._history: dict[int, Json] = {}
        self._update_ids = itertools.count(700_000_001)
        self._last_update_id: int | None = None
        self._allowed: frozenset[str] | None = None
        self._poll_generation = 0
        self._polls_started = 0
        self._chats: dict[int, FakeChat] = {}
        self._message_ids: dict[int, itertools.count[int]] = {}
        self._files: dict[str, StoredFile] = {}
        self._photo_sets: dict[str, list[StoredFile]] = {}
        self._paths: dict[str, StoredFile] = {}
        self._file_numbers = itertools.count(1)
        self._media_group_ids = itertools.count(13_700_000_000_000_001)
        self._faults: dict[str, deque[_Fault]] = {}
        self._commands: dict[tuple[str, str], list[Json]] = {}
        self._open_queries: dict[str, float] = {}
        self._chat_sends: dict[int, deque[float]] = {}
        self._group_sends: dict[int, deque[float]] = {}
        self._last_bot_to_write: dict[int, int] = {}
        self._meant_for_bot: set[tuple[int, int]] = set()
        handlers: dict[str, Handler] = {
            "getMe": self._get_me,
            "getUpdates": self._get_updates,
            "deleteWebhook": self._delete_webhook,
            "getWebhookInfo": self._get_webhook_info,
            "setMyCommands": self._set_my_commands,
            "getMyCommands": self._get_my_commands,
            "deleteMyCommands": self._delete_my_commands,
            "getFile": self._get_file,
            "sendMessage": self._send_message,
            "editMessageText": self._edit_message_text,
            "editMessageCaption": self._edit_message_caption,
            "editMessageReplyMarkup": self._edit_message_reply_markup,
            "editMessageMedia": self._edit_message_media,
            "sendPhoto": self._send_photo,
            "sendDocument": self._send_document,
            "sendMediaGroup": self._send_media_group,
            "sendChatAction": self._send_chat_action,
            "answerCallbackQuery": self._answer_callback_query,
            "setMessageReaction": self._set_message_reaction,
            "deleteMessage": self._delete_message,
            "getChatMember": self._get_chat_member,
            "getChatAdministrators": self._get_chat_administrators,
        }
        # Bot API method names are case-insensitive.
        self._methods = {name.lower(): (name, handler) for name, handler in handlers.items()}

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> FakeTelegram:
        app = web.Application(client_max_size=MAX_REQUEST_BYTES)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # No access log: it would print every URL, and every URL contains the token.
        # handler_cancellation: a long poll whose client hung up stops waiting, as on Telegram.
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self._port = self._runner.addresses[0][1]
        self._closing = False
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._closing = True
        self._bump()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def port(self) -> int:
        if not self._port:
            raise RuntimeError("FakeTelegram is not running; use it as `async with FakeTelegram() as fake`")
        return self._port

    @property
    def base_url(self) -> str:
        """For ``ApplicationBuilder().base_url(...)``; PTB appends the token."""
        return f"http://127.0.0.1:{self.port}/bot"

    @property
    def base_file_url(self) -> str:
        """For ``ApplicationBuilder().base_file_url(...)``; PTB appends the token."""
        return f"http://127.0.0.1:{self.port}/file/bot"

    # ------------------------------------------------------------------ inspection

    def calls(self, method: str | None = None) -> list[Call]:
        """Recorded calls, all or of one method (case-insensitive), oldest first."""
        if method is None:
            return list(self._calls)
        wanted = method.lower()
        return [call for call in self._calls if call.method.lower() == wanted]

    async def wait_for(self, predicate: str | Callable[[Call], bool], timeout: float = 5.0, *, start: int = 0) -> Call:
        """Wait until an answered call (from index ``start`` on) matches; a string matches a method name.

        Raises ``TimeoutError`` listing what was called instead, which is usually the diagnosis.
        """
        if isinstance(predicate, str):
            wanted = predicate.lower()

            def match(call: Call) -> bool:
                return call.method.lower() == wanted
        else:
            match = predicate
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            changed = self._changed
            for call in self._calls[start:]:
                if call.done and match(call):
                    return call
            remaining = deadline - loop.time()
            if remaining <= 0:
                seen = [f"{c.method}:{c.status}" for c in self._calls[start:] if c.method != "getUpdates"]
                raise TimeoutError(f"no matching call within {timeout} s; calls other than getUpdates: {seen}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), remaining)

    async def wait_polling(self, timeout: float = 5.0) -> None:
        """Wait until the bot has started a ``getUpdates`` (so its ``allowed_updates`` are in force)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self._polls_started:
            changed = self._changed
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"the bot did not call getUpdates within {timeout} s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), remaining)

    @property
    def allowed_updates(self) -> frozenset[str]:
        """The update types the bot currently receives."""
        return self._allowed if self._allowed is not None else ALL_UPDATE_TYPES - DEFAULT_EXCLUDED_UPDATES

    @property
    def pending_updates(self) -> list[Json]:
        """Updates not yet confirmed by an offset (copies)."""
        return copy.deepcopy(self._forced + self._pending)

    def bot_messages(self, chat_id: int | None = None) -> list[Json]:
        """Messages the bot sent (current state, copies), oldest first."""
        return [
            copy.deepcopy(msg)
            for (cid, _), msg in sorted(self.messages.items())
            if msg["from"]["id"] == self.bot_user.id and (chat_id is None or cid == chat_id)
        ]

    def last_bot_message(self, chat_id: int | None = None) -> Json:
        """The bot's latest message (in a chat); ``LookupError`` if it sent none."""
        sent = [(c.at, c.result) for c in self._calls if c.ok and c.method.startswith("send")]
        for _, result in reversed(sent):
            for msg in reversed(result if isinstance(result, list) else [result]):
                if isinstance(msg, dict) and (chat_id is None or msg["chat"]["id"] == chat_id):
                    stored = self.messages.get((msg["chat"]["id"], msg["message_id"]))
                    if stored is not None:
                        return copy.deepcopy(stored)
        raise LookupError("the bot has sent no message" + ("" if chat_id is None else f" to chat {chat_id}"))

    def my_commands(self, scope: Json | None = None, language_code: str = "") -> list[Json]:
        """The command list stored by ``setMyCommands`` for a scope and language."""
        return copy.deepcopy(self._commands.get(_scope_key(scope, language_code), []))

    # ------------------------------------------------------------------ fault injection

    def fail_next(
        self,
        method: str,
        status: int = 429,
        *,
        retry_after: int = 1,
        description: str | None = None,
        times: int = 1,
        delay: float = 0.0,
        html: bool = False,
    ) -> None:
        """Make the next ``times`` calls of ``method`` fail with ``status``.

        429 carries ``parameters.retry_after`` (PTB raises ``RetryAfter``); other statuses get
        Telegram's usual description unless one is given. ``html=True`` answers with an nginx-style
        HTML page instead of JSON, as Telegram's front end does for some 5xx. ``method`` may also be
        ``"downloadFile"`` for the file URL.
        """
        for _ in range(times):
            fault = _Fault(status, description, retry_after, delay, html)
            self._faults.setdefault(method.lower(), deque()).append(fault)

    def slow_next(self, method: str, seconds: float, *, times: int = 1) -> None:
        """Delay the next ``times`` calls of ``method`` by ``seconds``, then answer normally (for timeouts)."""
        for _ in range(times):
            self._faults.setdefault(method.lower(), deque()).append(_Fault(None, delay=seconds))

    # ------------------------------------------------------------------ chats, users, files

    def private_chat(self, user: FakeUser) -> FakeChat:
        """The private chat between ``user`` and the bot (its id is the user's id)."""
        chat = self._chats.get(user.id)
        if chat is None:
            chat = FakeChat(user.id, "private", None, user.username, user.first_name, user.last_name)
            self._chats[chat.id] = chat
        return chat

    def group(
        self,
        chat_id: int = -1001234567890,
        title: str = "MMPP testers",
        *,
        supergroup: bool = True,
        bot_is_admin: bool = False,
        username: str | None = None,
        other_bots: Sequence[FakeUser] = (),
        owner: FakeUser | None = None,
    ) -> FakeChat:
        """A group the bot is a member of (supergroup ids start with -100), with the other bots in it."""
        if any(not bot.is_bot for bot in other_bots):
            raise ValueError("other_bots are bots: FakeUser(..., is_bot=True)")
        chat = FakeChat(
            chat_id, "supergroup" if supergroup else "group", title, username, bot_is_admin=bot_is_admin,
            other_bots=list(other_bots), owner=owner,
        )  # fmt: skip
        self._chats[chat_id] = chat
        return chat

    def block_bot(self, user: FakeUser) -> FakeChat:
        """``user`` blocks the bot: from now on every request in their private chat is refused with Telegram's
        403 "Forbidden: bot was blocked by the user"."""
        chat = self.private_chat(user)
        chat.forbidden = BLOCKED_BY_THE_USER
        return chat

    def remove_bot(self, chat: FakeChat) -> None:
        """Someone removes the bot from the group: from now on every request naming it is refused with
        Telegram's 403 "Forbidden: bot was kicked from the (super)group chat"."""
        if not chat.is_group:
            raise ValueError("only a group can remove the bot; a person blocks it (block_bot)")
        chat.forbidden = KICKED_FROM_THE_SUPERGROUP if chat.type == "supergroup" else KICKED_FROM_THE_GROUP

    def forbid_photos(self, chat: FakeChat) -> None:
        """The group's permissions no longer let the bot send photos: ``sendPhoto``, a photo album and a photo
        edit are refused with Telegram's 400 "not enough rights to send photos to the chat"."""
        if not chat.is_group:
            raise ValueError("only a group restricts what members may send")
        chat.bot_can_send_photos = False

    def forbid_documents(self, chat: FakeChat) -> None:
        """The group's permissions no longer let the bot send files (``can_send_documents``): ``sendDocument``, a
        document album and a document edit are refused with Telegram's 400 "not enough rights to send documents
        to the chat"."""
        if not chat.is_group:
            raise ValueError("only a group restricts what members may send")
        chat.bot_can_send_documents = False

    def bot_writes(self, chat: FakeChat, bot: FakeUser, text: str) -> Json:
        """Another bot of ``chat`` posts ``text``: this bot never sees it (bots do not see bots' messages), but
        it is now the last bot that wrote, so privacy mode gives plain ``/commands`` to it, not to this bot."""
        if bot not in chat.other_bots:
            raise ValueError(f"{bot.username or bot.id} is not one of the group's other bots")
        return self._new_message(chat, bot, text=text)

    def add_photo(self, data: bytes, width: int | None = None, height: int | None = None) -> str:
        """Register a photo as if a user had sent it; returns the largest size's ``file_id``.

        The width and height are read from the image when not given. Smaller ``PhotoSize``
        variants are made as Telegram does (real thumbnails when Pillow can decode the bytes).
        """
        return self._register_photo(data, *self._dimensions(data, width, height))[-1].file_id

    def add_file(self, data: bytes, file_name: str | None = None, mime_type: str | None = None) -> StoredFile:
        """Register a document (any bytes) and return it, e.g. to test the 20 MB ``getFile`` limit."""
        return self._store_file(data, "BQACAgIAAxkBAAI", "documents", _extension(file_name), file_name, mime_type)

    def photo_sizes(self, file_id: str) -> list[Json]:
        """All ``PhotoSize`` objects of the photo that ``file_id`` belongs to, smallest first."""
        return [stored.photo_size() for stored in self._photo_sets[file_id]]

    def file_bytes(self, file_id: str) -> bytes:
        """The bytes stored under ``file_id`` (what a download of it returns)."""
        return self._files[file_id].data

    # ------------------------------------------------------------------ users acting

    async def send_message(
        self,
        chat: FakeChat | int | None,
        user: FakeUser,
        text: str,
        *,
        reply_to: Json | None = None,
        entities: list[Json] | None = None,
    ) -> Json:
        """``user`` writes ``text`` in ``chat`` (None: their private chat with the bot).

        ``bot_command`` entities are added for every ``/command`` as Telegram's clients do, with
        offsets in UTF-16 code units. Returns the message; in groups, privacy mode may keep it from
        the bot (see :attr:`dropped`).
        """
        where = self._resolve_chat(chat, user)
        auto = _command_entities(text) if entities is None else entities
        msg = self._new_message(
            where, user, reply_to_message=self._reply_copy(reply_to), text=text, entities=auto or None
        )
        await self._deliver_message(where, msg)
        return copy.deepcopy(msg)

    async def send_photo(
        self,
        chat: FakeChat | int | None,
        user: FakeUser,
        photo: bytes,
        *,
        caption: str | None = None,
        width: int | None = None,
        height: int | None = None,
        reply_to: Json | None = None,
        media_group_id: str | None = None,
    ) -> Json:
        """``user`` sends a compressed photo, optionally with a caption (commands in it get entities)."""
        where = self._resolve_chat(chat, user)
        sizes = self._register_photo(photo, *self._dimensions(photo, width, height))
        entities = _command_entities(caption) if caption else []
        msg = self._new_message(
            where,
            user,
            reply_to_message=self._reply_copy(reply_to),
            media_group_id=media_group_id,
            photo=[s.photo_size() for s in sizes],
            caption=caption,
            caption_entities=entities or None,
        )
        await self._deliver_message(where, msg)
        return copy.deepcopy(msg)

    async def send_media_group(
        self, chat: FakeChat | int | None, user: FakeUser, photos: Sequence[bytes], *, caption: str | None = None
    ) -> list[Json]:
        """``user`` sends an album: one update per photo, sharing a ``media_group_id``; caption on the first."""
        group_id = str(next(self._media_group_ids))
        return [
            await self.send_photo(chat, user, data, caption=caption if i == 0 else None, media_group_id=group_id)
            for i, data in enumerate(photos)
        ]

    async def send_document(
        self,
        chat: FakeChat | int | None,
        user: FakeUser,
        data: bytes,
        file_name: str = "selfie.jpg",
        mime_type: str = "image/jpeg",
        *,
        caption: str | None = None,
    ) -> Json:
        """``user`` sends a file uncompressed ("send as file"), the way people send full-quality photos."""
        where = self._resolve_chat(chat, user)
        stored = self.add_file(data, file_name, mime_type)
        entities = _command_entities(caption) if caption else []
        msg = self._new_message(
            where, user, document=stored.document(), caption=caption, caption_entities=entities or None
        )
        await self._deliver_message(where, msg)
        return copy.deepcopy(msg)

    async def press_button(self, message: Json | Any, user: FakeUser, callback_data: str) -> str:
        """``user`` presses the inline button carrying ``callback_data`` under the bot's ``message``.

        ``message`` is a message dict (e.g. :meth:`last_bot_message`) or a PTB ``Message``. The
        ``callback_query`` carries the message in its current state. Returns the query id.
        ``ValueError`` if no such button exists, since no user could press it.
        """
        data = message.to_dict() if hasattr(message, "to_dict") else message
        key = (int(data["chat"]["id"]), int(data["message_id"]))
        stored = self.messages.get(key)
        if stored is None:
            raise ValueError(f"no message {key[1]} in chat {key[0]}")
        rows = stored.get("reply_markup", {}).get("inline_keyboard", [])
        offered = [button.get("callback_data") for row in rows for button in row]
        if callback_data not in offered:
            raise ValueError(f"message {key[1]} has no button with callback_data {callback_data!r}; it has {offered}")
        query_id = str(secrets.randbits(62))
        self._open_queries[query_id] = time.monotonic()
        payload = {
            "id": query_id,
            "from": user.to_api(),
            "message": copy.deepcopy(stored),
            "chat_instance": str(4_611_686_018_427_387_904 - abs(key[0]) * 7919),
            "data": callback_data,
        }
        await self._enqueue("callback_query", payload)
        return query_id

    async def react(
        self,
        chat: FakeChat | int | None,
        message_id: int,
        user: FakeUser,
        old: Iterable[str | Json] = (),
        new: Iterable[str | Json] = (),
    ) -> int | None:
        """``user`` changes their reaction to a message: a ``message_reaction`` update.

        Reactions are given as emoji strings or ReactionType dicts. Returns the update_id, or
        None when Telegram would not create the update (a group where the bot is not an admin).
        Whether the bot gets it also depends on ``allowed_updates`` (see :attr:`dropped`).
        """
        where = self._resolve_chat(chat, user)
        if (where.id, message_id) not in self.messages:
            raise ValueError(f"no message {message_id} in chat {where.id}")
        payload = {
            "chat": where.to_api(),
            "message_id": message_id,
            "user": user.to_api(),
            "date": int(time.time()),
            "old_reaction": [_reaction(r) for r in old],
            "new_reaction": [_reaction(r) for r in new],
        }
        if where.is_group and not where.bot_is_admin:
            self.dropped.append(Dropped("message_reaction", payload, "the bot is not an administrator of the group"))
            return None
        return await self._enqueue("message_reaction", payload)

    def requeue_update(self, update_id: int) -> int:
        """Deliver an already used update again, same ``update_id``, whatever the bot's offset.

        This is what a bot sees when it restarts after handling an update but before confirming
        its offset: the update arrives a second time. PTB does not deduplicate.
        """
        self._forced.append(copy.deepcopy(self._history[update_id]))
        self._bump()
        return update_id

    def duplicate_last_update(self) -> int:
        """Re-deliver the most recently created update (see :meth:`requeue_update`)."""
        if self._last_update_id is None:
            raise LookupError("no update has been created yet")
        return self.requeue_update(self._last_update_id)

    # ------------------------------------------------------------------ HTTP

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        if path.startswith("/file/"):
            return await self._handle_download(request)
        match = _API_PATH.fullmatch(path)
        raw_method = match.group(2) if match else ""
        method, handler = self._methods.get(raw_method.lower(), (raw_method, None))
        call = Call(method, {}, {}, path, request.method, time.monotonic(), time.time())
        try:
            if match is None:
                raise ApiError(404, "Not Found")
            if match.group(1) != self.token:
                raise ApiError(401, "Unauthorized")
            if handler is None:
                raise ApiError(404, "Not Found")
            call.params, call.files = await _read_params(request)
            self._record(call)
            # The Bot API's own description: an unknown parameter, a missing one or a wrong type is a 400 here too.
            refusal = telegram_refusal(method, call.params, call.files)
            if refusal is not None:
                raise ApiError(refusal.status, refusal.body["description"])
            fault = self._pop_fault(method)
            if fault is not None:
                if fault.delay:
                    await asyncio.sleep(fault.delay)
                if fault.status is not None:
                    return self._finish(call, _fault_error(fault), html=fault.html)
            result = await handler(call, request)
        except ApiError as error:
            if call not in self._calls:
                self._record(call)
            return self._finish(call, error)
        except asyncio.CancelledError:
            call.status = CLIENT_CLOSED  # the client hung up (a cancelled long poll, a client-side timeout)
            self._bump()
            raise
        return self._finish(call, result)

    async def _handle_download(self, request: web.Request) -> web.StreamResponse:
        match = _FILE_PATH.fullmatch(request.path)
        file_path = match.group(2) if match else ""
        call = Call("downloadFile", {"file_path": file_path}, {}, request.path, request.method, time.monotonic(),
                    time.time())  # fmt: skip
        self._record(call)
        fault = self._pop_fault("downloadFile")
        if fault is not None:
            if fault.delay:
                try:
                    await asyncio.sleep(fault.delay)
                except asyncio.CancelledError:
                    call.status = CLIENT_CLOSED
                    raise
            if fault.status is not None:
                return self._finish(call, _fault_error(fault), html=fault.html)
        stored = self._paths.get(file_path)
        if match is None or match.group(1) != self.token or stored is None:
            return self._finish(call, ApiError(404, "Not Found"))
        call.status = 200
        self._bump()
        return web.Response(body=stored.data, content_type="application/octet-stream")

    def _record(self, call: Call) -> None:
        self._calls.append(call)
        self._bump()

    def _finish(self, call: Call, outcome: Any, *, html: bool = False) -> web.StreamResponse:
        if call not in self._calls:
            self._calls.append(call)
        if isinstance(outcome, ApiError):
            call.status, call.response = outcome.status, outcome.body()
        else:
            call.status, call.response = 200, {"ok": True, "result": outcome}
        self._bump()
        if html:
            phrase = HTTPStatus(call.status).phrase
            page = (
                f"<html>\r\n<head><title>{call.status} {phrase}</title></head>\r\n<body>\r\n"
                f"<center><h1>{call.status} {phrase}</h1></center>\r\n"
                "<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
            )
            return web.Response(status=call.status, text=page, content_type="text/html")
        body = json.dumps(call.response, ensure_ascii=False)
        return web.Response(status=call.status, text=body, content_type="application/json")

    def _pop_fault(self, method: str) -> _Fault | None:
        queue = self._faults.get(method.lower())
        return queue.popleft() if queue else None

    def _bump(self) -> None:
        """Wake everything waiting for a change (long polls, ``wait_for``)."""
        self._changed.set()
        self._changed = asyncio.Event()

    # ------------------------------------------------------------------ updates

    async def _enqueue(self, kind: str, payload: Json) -> int:
        update_id = next(self._update_ids)
        update = {"update_id": update_id, kind: payload}
        self._pending.append(update)
        self._history[update_id] = update
        self._last_update_id = update_id
        self._bump()
        await asyncio.sleep(0)  # let a waiting long poll answer before the caller goes on
        return update_id

    async def _deliver_message(self, chat: FakeChat, msg: Json) -> None:
        reason = self._privacy_reason(chat, msg)
        if reason is None:
            await self._enqueue("message", copy.deepcopy(msg))
        else:
            self.dropped.append(Dropped("message", copy.deepcopy(msg), reason))

    def _privacy_reason(self, chat: FakeChat, msg: Json) -> str | None:
        """Why privacy mode keeps ``msg`` from the bot, or ``None`` when it reaches the bot.

        Telegram's rules (core.telegram.org/bots/features#privacy-mode): a bot with privacy mode
        gets commands explicitly meant for it (``/command@this_bot``), general commands only if it
        was the last bot to send a message to the group (or is the group's only bot), and replies
        to messages meant for it; a bot that administers the group gets every message.
        """
        if not chat.is_group or not self.privacy_mode or chat.bot_is_admin:
            return None
        reply = msg.get("reply_to_message")
        if reply and (
            reply.get("from", {}).get("id") == self.bot_user.id or (chat.id, reply["message_id"]) in self._meant_for_bot
        ):
            return None
        text = msg.get("text") or msg.get("caption") or ""
        entities = msg.get("entities") or msg.get("caption_entities") or []
        first = next((e for e in entities if e["type"] == "bot_command" and e["offset"] == 0), None)
        if first is None:
            return "privacy mode: in groups the bot sees only commands and replies to its messages"
        target = text[: first["length"]].partition("@")[2]
        if target and target.lower() != (self.bot_user.username or "").lower():
            return f"privacy mode: the command is addressed to @{target}"
        last = self._last_bot_to_write.get(chat.id)
        if not target and chat.other_bots and last != self.bot_user.id:
            return "privacy mode: a plain command goes only to the last bot that wrote in the group"
        self._meant_for_bot.add((chat.id, msg["message_id"]))
        return None

    def _take_batch(self, offset: int, limit: int, request: web.Request) -> list[Json]:
        batch: list[Json] = []
        transport = request.transport
        if self._forced and transport is not None and not transport.is_closing():
            batch.extend(self._forced[:limit])
            del self._forced[: len(batch)]
        for update in list(self._pending):
            if len(batch) >= limit:
                break
            if update["update_id"] < offset:
                continue
            kind = next(key for key in update if key != "update_id")
            if kind not in self.allowed_updates:
                self._pending.remove(update)
                reason = f"{kind!r} is not in the bot's allowed_updates"
                self.dropped.append(Dropped(kind, copy.deepcopy(update[kind]), reason, update["update_id"]))
                continue
            batch.append(update)
        return batch

    # ------------------------------------------------------------------ methods: updates and bot

    async def _get_me(self, call: Call, request: web.Request) -> Json:
        return {
            **self.bot_user.to_api(),
            "can_join_groups": True,
            "can_read_all_group_messages": not self.privacy_mode,
            "supports_inline_queries": False,
            "can_connect_to_business": False,
            "has_main_web_app": False,
        }

    async def _get_updates(self, call: Call, request: web.Request) -> list[Json]:
        params = call.params
        offset = _as_int(params.get("offset"), 0)
        limit = min(max(_as_int(params.get("limit"), 100), 1), 100)
        timeout = max(0.0, float(params.get("timeout") or 0))
        allowed = params.get("allowed_updates")
        if allowed is not None:
            if not isinstance(allowed, list):
                raise bad_request("can't parse allowed updates: expected an Array")
            self._allowed = frozenset(allowed) if allowed else None
            self.allowed_updates_history.append(list(allowed))
        if offset > 0:
            self._pending = [u for u in self._pending if u["update_id"] >= offset]
        elif offset < 0:
            self._pending = self._pending[offset:]
        self._poll_generation += 1
        generation = self._poll_generation
        self._polls_started += 1
        self._bump()  # an older poll still waiting now answers 409
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(timeout, self.max_long_poll)
        while True:
            changed = self._changed
            batch = self._take_batch(offset, limit, request)
            if batch:
                self.delivered.extend(u["update_id"] for u in batch)
                return copy.deepcopy(batch)
            if self._closing:
                return []
            if generation != self._poll_generation:
                raise ApiError(409, CONFLICT)
            remaining = deadline - loop.time()
            if remaining <= 0:
                return []
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), remaining)

    async def _delete_webhook(self, call: Call, request: web.Request) -> bool:
        if call.params.get("drop_pending_updates"):
            self._pending.clear()
            self._forced.clear()
        return True

    async def _get_webhook_info(self, call: Call, request: web.Request) -> Json:
        return {"url": "", "has_custom_certificate": False, "pending_update_count": len(self._pending)}

    async def _set_my_commands(self, call: Call, request: web.Request) -> bool:
        commands = call.params.get("commands")
        if not isinstance(commands, list) or len(commands) > 100:
            raise bad_request("can't parse commands JSON object")
        stored = []
        for item in commands:
            if not isinstance(item, dict) or not _BOT_COMMAND_NAME.fullmatch(str(item.get("command", ""))):
                raise bad_request("BOT_COMMAND_INVALID")
            description = str(item.get("description", ""))
            if not 1 <= len(description) <= 256:
                raise bad_request("BOT_COMMAND_INVALID")
            stored.append({"command": item["command"], "description": description})
        self._commands[_scope_key(call.params.get("scope"), call.params.get("language_code"))] = stored
        return True

    async def _get_my_commands(self, call: Call, request: web.Request) -> list[Json]:
        return self.my_commands(call.params.get("scope"), call.params.get("language_code") or "")

    async def _delete_my_commands(self, call: Call, request: web.Request) -> bool:
        self._commands.pop(_scope_key(call.params.get("scope"), call.params.get("language_code")), None)
        return True

    async def _get_file(self, call: Call, request: web.Request) -> Json:
        stored = self._files.get(str(call.params.get("file_id") or ""))
        if stored is None:
            raise bad_request("invalid file_id")
        if len(stored.data) > MAX_DOWNLOAD_BYTES:
            raise bad_request("file is too big")
        return {
            "file_id": stored.file_id,
            "file_unique_id": stored.file_unique_id,
            "file_size": len(stored.data),
            "file_path": stored.file_path,
        }

    # ------------------------------------------------------------------ methods: messages

    async def _send_message(self, call: Call, request: web.Request) -> Json:
        params = call.params
        chat = self._chat(params.get("chat_id"))
        text, entities = self._text(params.get("text"), params.get("parse_mode"), params.get("entities"), MAX_TEXT)
        markup = _check_markup(params.get("reply_markup"))
        reply = self._reply_target(params, chat)
        self._check_flood(chat)
        return self._new_message(
            chat, self.bot_user, reply_to_message=reply, text=text, entities=entities or None, reply_markup=markup
        )

    async def _send_photo(self, call: Call, request: web.Request) -> Json:
        params = call.params
        chat = self._chat(params.get("chat_id"))
        self._check_may_send_photos(chat)
        sizes = self._photo_input(params.get("photo"), call.files, "photo")
        caption, entities = self._caption(params)
        markup = _check_markup(params.get("reply_markup"))
        reply = self._reply_target(params, chat)
        self._check_flood(chat)
        return self._new_message(
            chat,
            self.bot_user,
            reply_to_message=reply,
            photo=[s.photo_size() for s in sizes],
            caption=caption,
            caption_entities=entities or None,
            reply_markup=markup,
        )

    async def _send_document(self, call: Call, request: web.Request) -> Json:
        params = call.params
        chat = self._chat(params.get("chat_id"))
        self._check_may_send_documents(chat)
        stored = self._document_input(params.get("document"), call.files, "document")
        caption, entities = self._caption(params)
        markup = _check_markup(params.get("reply_markup"))
        reply = self._reply_target(params, chat)
        self._check_flood(chat)
        return self._new_message(
            chat,
            self.bot_user,
            reply_to_message=reply,
            document=stored.document(),
            caption=caption,
            caption_entities=entities or None,
            reply_markup=markup,
        )

    async def _send_media_group(self, call: Call, request: web.Request) -> list[Json]:
        params = call.params
        chat = self._chat(params.get("chat_id"))
        media = params.get("media")
        if not isinstance(media, list):
            raise bad_request("can't parse media JSON object")
        if not 2 <= len(media) <= 10:
            raise bad_request("wrong number of media in the album")
        contents: list[Json] = []
        kinds = set()
        for item in media:
            kind = item.get("type") if isinstance(item, dict) else None
            caption, entities = self._caption(item)
            if kind == "photo":
                self._check_may_send_photos(chat)
                content: Json = {"photo": [s.photo_size() for s in self._photo_input(item.get("media"), call.files)]}
            elif kind == "document":
                self._check_may_send_documents(chat)
                content = {"document": self._document_input(item.get("media"), call.files).document()}
            else:
                raise bad_request(f"unsupported media type {kind!r} (FakeTelegram models photos and documents)")
            kinds.add(kind)
            contents.append({**content, "caption": caption, "caption_entities": entities or None})
        if len(kinds) > 1:
            raise bad_request("documents can't be mixed with other media types in an album")
        reply = self._reply_target(params, chat)
        self._check_flood(chat, len(contents))
        group_id = str(next(self._media_group_ids))
        return [
            self._new_message(chat, self.bot_user, reply_to_message=reply, media_group_id=group_id, **content)
            for content in contents
        ]

    async def _edit_message_text(self, call: Call, request: web.Request) -> Json:
        params = call.params
        msg = self._editable(params, "edit")
        if "text" not in msg:
            raise bad_request("there is no text in the message to edit")
        text, entities = self._text(params.get("text"), params.get("parse_mode"), params.get("entities"), MAX_TEXT)
        markup = _check_markup(params.get("reply_markup"))
        return self._apply_edit(msg, {"text": text, "entities": entities or None, "reply_markup": markup})

    async def _edit_message_caption(self, call: Call, request: web.Request) -> Json:
        params = call.params
        msg = self._editable(params, "edit")
        if "text" in msg:
            raise bad_request("there is no caption in the message to edit")
        caption, entities = self._caption(params)
        markup = _check_markup(params.get("reply_markup"))
        return self._apply_edit(msg, {"caption": caption, "caption_entities": entities or None, "reply_markup": markup})

    async def _edit_message_media(self, call: Call, request: web.Request) -> Json:
        params = call.params
        msg = self._editable(params, "edit")
        media = params.get("media")
        if media in (None, ""):
            raise bad_request("media is not specified")
        if not isinstance(media, dict):
            raise bad_request("can't parse InputMedia: media must be an Object")
        kind = media.get("type")
        if kind not in MEDIA_TYPES:
            raise bad_request("can't parse InputMedia: unsupported media type")
        if kind not in ("photo", "document"):
            raise bad_request(f"unsupported media type {kind!r} (FakeTelegram models photos and documents)")
        if kind == "photo":
            self._check_may_send_photos(self._chat(params.get("chat_id")))
        else:
            self._check_may_send_documents(self._chat(params.get("chat_id")))
        if msg.get("media_group_id") and (kind == "document") != ("document" in msg):
            raise bad_request("can't edit the media of an album message to another kind of media")
        caption, entities = self._caption(media)
        markup = _check_markup(params.get("reply_markup"))
        if kind == "photo":
            content: Json = {"photo": [s.photo_size() for s in self._photo_input(media.get("media"), call.files)]}
        else:
            content = {"document": self._document_input(media.get("media"), call.files).document()}
        replaced = {"text": None, "entities": None, "link_preview_options": None, "photo": None, "document": None}
        changes = {**replaced, **content, "caption": caption, "caption_entities": entities or None}
        return self._apply_edit(msg, {**changes, "reply_markup": markup})

    async def _edit_message_reply_markup(self, call: Call, request: web.Request) -> Json:
        msg = self._editable(call.params, "edit")
        return self._apply_edit(msg, {"reply_markup": _check_markup(call.params.get("reply_markup"))})

    async def _send_chat_action(self, call: Call, request: web.Request) -> bool:
        self._chat(call.params.get("chat_id"))
        if call.params.get("action") not in CHAT_ACTIONS:
            raise bad_request("wrong parameter action in request")
        return True

    async def _answer_callback_query(self, call: Call, request: web.Request) -> bool:
        query_id = str(call.params.get("callback_query_id") or "")
        pressed = self._open_queries.get(query_id)
        if pressed is None or call.at - pressed > self.callback_query_timeout:
            self._open_queries.pop(query_id, None)
            raise ApiError(400, QUERY_TOO_OLD)
        if len(str(call.params.get("text") or "")) > MAX_CALLBACK_ANSWER:
            raise bad_request("MESSAGE_TOO_LONG")
        del self._open_queries[query_id]
        self.callback_answers[query_id] = dict(call.params)
        return True

    def _member(self, chat: FakeChat, user_id: int) -> Json:
        """``ChatMember`` as Telegram describes one: owner, administrator (every right the type requires),
        member, or left for someone who is not in the chat."""
        if user_id == self.bot_user.id:
            if chat.is_group and chat.bot_is_admin:
                rights = dict.fromkeys(_ADMINISTRATOR_RIGHTS, True)
                return {"status": "administrator", "user": self.bot_user.to_api(), **rights, "can_be_edited": False,
                        "is_anonymous": False}  # fmt: skip
            return {"status": "member", "user": self.bot_user.to_api()}
        if chat.owner is not None and chat.owner.id == user_id:
            return {"status": "creator", "user": chat.owner.to_api(), "is_anonymous": False}
        for bot in chat.other_bots:
            if bot.id == user_id:
                return {"status": "member", "user": bot.to_api()}
        if not chat.is_group and chat.id == user_id:
            return {"status": "member", "user": {"id": user_id, "is_bot": False, "first_name": chat.first_name or ""}}
        for (chat_id, _), msg in self.messages.items():
            if chat_id == chat.id and msg["from"]["id"] == user_id:
                return {"status": "member", "user": copy.deepcopy(msg["from"])}
        return {"status": "left", "user": {"id": user_id, "is_bot": False, "first_name": ""}}

    async def _get_chat_member(self, call: Call, request: web.Request) -> Json:
        chat = self._chat(call.params.get("chat_id"))
        if call.params.get("user_id") in (None, ""):
            raise bad_request("user_id is empty")
        return self._member(chat, _as_int(call.params.get("user_id"), 0))

    async def _get_chat_administrators(self, call: Call, request: web.Request) -> list[Json]:
        chat = self._chat(call.params.get("chat_id"))
        if not chat.is_group:
            raise bad_request("there are no administrators in the private chat")
        administrators = [self._member(chat, chat.owner.id)] if chat.owner is not None else []
        if chat.bot_is_admin:
            administrators.append(self._member(chat, self.bot_user.id))
        return administrators

    async def _set_message_reaction(self, call: Call, request: web.Request) -> bool:
        chat = self._chat(call.params.get("chat_id"))
        message_id = _as_int(call.params.get("message_id"), 0)
        if (chat.id, message_id) not in self.messages:
            raise bad_request("MESSAGE_ID_INVALID")
        reaction = call.params.get("reaction") or []
        if not isinstance(reaction, list):
            raise bad_request("can't parse reaction types JSON object")
        for item in reaction:
            if not isinstance(item, dict) or item.get("type") != "emoji":
                raise bad_request("REACTION_INVALID")
            if _BOT_REACTIONS is not None and item.get("emoji") not in _BOT_REACTIONS:
                raise bad_request("REACTION_INVALID")
        if len(reaction) > 1:
            raise bad_request("REACTIONS_TOO_MANY")
        self.bot_reactions[(chat.id, message_id)] = copy.deepcopy(reaction)
        return True

    async def _delete_message(self, call: Call, request: web.Request) -> bool:
        chat = self._chat(call.params.get("chat_id"))
        key = (chat.id, _as_int(call.params.get("message_id"), 0))
        if key not in self.messages:
            raise bad_request("message to delete not found")
        del self.messages[key]
        return True

    # ------------------------------------------------------------------ helpers

    def _resolve_chat(self, chat: FakeChat | int | None, user: FakeUser) -> FakeChat:
        if chat is None:
            return self.private_chat(user)
        if isinstance(chat, FakeChat):
            self._chats.setdefault(chat.id, chat)
            return self._chats[chat.id]
        if chat in self._chats:
            return self._chats[chat]
        if chat == user.id:
            return self.private_chat(user)
        raise ValueError(f"unknown chat {chat}: create it with fake.group(...) or fake.private_chat(user)")

    def _chat(self, value: Any) -> FakeChat:
        if value is None or value == "":
            raise bad_request("chat_id is empty")
        if isinstance(value, str) and value.startswith("@"):
            for chat in self._chats.values():
                if chat.username and chat.username.lower() == value[1:].lower():
                    return chat
            raise bad_request("chat not found")
        try:
            chat_id = int(value)
        except (TypeError, ValueError):
            raise bad_request("chat not found") from None
        chat = self._chats.get(chat_id)
        if chat is None:
            raise bad_request("chat not found")
        if chat.forbidden is not None:
            raise ApiError(403, chat.forbidden)
        return chat

    @staticmethod
    def _check_may_send_photos(chat: FakeChat) -> None:
        if not chat.bot_can_send_photos:
            raise ApiError(400, NO_RIGHTS_TO_SEND_PHOTOS)

    @staticmethod
    def _check_may_send_documents(chat: FakeChat) -> None:
        if not chat.bot_can_send_documents:
            raise ApiError(400, NO_RIGHTS_TO_SEND_DOCUMENTS)

    def _new_message(self, chat: FakeChat, sender: FakeUser, **content: Any) -> Json:
        if sender.is_bot and chat.is_group:
            self._last_bot_to_write[chat.id] = sender.id
        counter = self._message_ids.setdefault(chat.id, itertools.count(1))
        msg: Json = {
            "message_id": next(counter),
            "from": sender.to_api(),
            "chat": chat.to_api(),
            "date": int(time.time()),
        }
        msg.update({key: value for key, value in content.items() if value is not None})
        self.messages[(chat.id, msg["message_id"])] = msg
        return copy.deepcopy(msg)

    def _reply_copy(self, reply_to: Json | None) -> Json | None:
        if reply_to is None:
            return None
        data = reply_to.to_dict() if hasattr(reply_to, "to_dict") else reply_to
        stored = self.messages.get((int(data["chat"]["id"]), int(data["message_id"])))
        if stored is None:
            raise ValueError("reply_to names a message the fake does not know")
        return {key: copy.deepcopy(value) for key, value in stored.items() if key != "reply_to_message"}

    def _reply_target(self, params: Json, chat: FakeChat) -> Json | None:
        reply = params.get("reply_parameters")
        if reply is None and params.get("reply_to_message_id") is not None:
            reply = {
                "message_id": params["reply_to_message_id"],
                "allow_sending_without_reply": params.get("allow_sending_without_reply", False),
            }
        if reply is None:
            return None
        if not isinstance(reply, dict):
            raise bad_request("can't parse reply parameters JSON object")
        target = self._chat(reply["chat_id"]) if reply.get("chat_id") not in (None, "") else chat
        stored = self.messages.get((target.id, _as_int(reply.get("message_id"), 0)))
        if stored is None:
            if reply.get("allow_sending_without_reply"):
                return None
            raise bad_request("message to be replied not found")
        return {key: copy.deepcopy(value) for key, value in stored.items() if key != "reply_to_message"}

    def _editable(self, params: Json, verb: str) -> Json:
        if params.get("inline_message_id"):
            raise bad_request("MESSAGE_ID_INVALID")  # inline-mode messages are not modelled
        chat = self._chat(params.get("chat_id"))
        if params.get("message_id") in (None, ""):
            raise bad_request("message identifier is not specified")
        msg = self.messages.get((chat.id, _as_int(params.get("message_id"), 0)))
        if msg is None:
            raise bad_request(f"message to {verb} not found")
        if msg["from"]["id"] != self.bot_user.id:
            raise bad_request("message can't be edited")
        return msg

    def _apply_edit(self, msg: Json, changes: Json) -> Json:
        if all(msg.get(key) == value for key, value in changes.items()):
            raise ApiError(400, NOT_MODIFIED)
        self._check_flood(self._chats[msg["chat"]["id"]])
        for key, value in changes.items():
            if value is None:
                msg.pop(key, None)
            else:
                msg[key] = value
        msg["edit_date"] = int(time.time())
        return copy.deepcopy(msg)

    def _text(self, text: Any, parse_mode: Any, entities: Any, limit: int) -> tuple[str, list[Json]]:
        if text is None or str(text) == "":
            raise bad_request("message text is empty")
        plain, parsed = _format(str(text), parse_mode, entities)
        if not plain.strip():
            raise bad_request("message text is empty")
        if len(plain) > limit:
            raise bad_request("message is too long")
        return plain, parsed

    def _caption(self, params: Json) -> tuple[str | None, list[Json]]:
        caption = params.get("caption")
        if caption in (None, ""):
            return None, []
        plain, entities = _format(str(caption), params.get("parse_mode"), params.get("caption_entities"))
        if len(plain) > MAX_CAPTION:
            raise bad_request("message caption is too long")
        return plain, entities

    def _check_flood(self, chat: FakeChat, messages: int = 1) -> None:
        """Flood control for one send or edit of ``messages`` messages in ``chat`` (off unless configured; see
        the module docstring).  Refused requests do not count."""
        now = time.monotonic()
        in_chat = self._chat_sends.setdefault(chat.id, deque())
        if self.per_chat_interval is not None:
            window = self.per_chat_interval * self.per_chat_burst
            while in_chat and now - in_chat[0] >= window:
                in_chat.popleft()
            if len(in_chat) >= self.per_chat_burst:
                raise too_many_requests(max(1, math.ceil(window - (now - in_chat[-self.per_chat_burst]))))
        in_group = self._group_sends.setdefault(chat.id, deque())
        if self.group_per_minute is not None and chat.is_group:
            while in_group and now - in_group[0] >= 60.0:
                in_group.popleft()
            leaving = len(in_group) + messages - self.group_per_minute
            if leaving > 0:
                oldest = in_group[min(leaving, len(in_group)) - 1] if in_group else now
                raise too_many_requests(max(1, math.ceil(60.0 - (now - oldest))))
            in_group.extend([now] * messages)
        if self.per_chat_interval is not None:
            in_chat.append(now)

    def _upload(self, value: Any, files: dict[str, UploadedFile], field_name: str, missing: str) -> UploadedFile | str:
        """The uploaded part a parameter refers to, or the string it holds (a file_id or URL)."""
        if isinstance(value, str) and value.startswith("attach://"):
            part = files.get(value.removeprefix("attach://"))
            if part is None:
                raise bad_request(missing)
            return part
        if value in (None, ""):
            part = files.get(field_name) if field_name else None
            if part is None:
                raise bad_request(missing)
            return part
        return str(value)

    def _photo_input(self, value: Any, files: dict[str, UploadedFile], field_name: str = "") -> list[StoredFile]:
        upload = self._upload(value, files, field_name, "there is no photo in the request")
        if isinstance(upload, str):
            if upload in self._photo_sets:
                return self._photo_sets[upload]
            if upload.startswith(("http://", "https://")):
                raise bad_request("failed to get HTTP URL content")
            raise bad_request("wrong file identifier/HTTP URL specified")
        if len(upload.data) > MAX_PHOTO_BYTES:
            raise ApiError(400, PHOTO_TOO_BIG)
        size = _image_size(upload.data)
        if size is None:
            raise bad_request("IMAGE_PROCESS_FAILED")
        width, height = size
        if width + height > 10_000 or max(width, height) > 20 * max(1, min(width, height)):
            raise bad_request("PHOTO_INVALID_DIMENSIONS")
        return self._register_photo(upload.data, width, height)

    def _document_input(self, value: Any, files: dict[str, UploadedFile], field_name: str = "") -> StoredFile:
        upload = self._upload(value, files, field_name, "there is no document in the request")
        if isinstance(upload, str):
            if upload in self._files:
                return self._files[upload]
            if upload.startswith(("http://", "https://")):
                raise bad_request("failed to get HTTP URL content")
            raise bad_request("wrong file identifier/HTTP URL specified")
        return self.add_file(upload.data, upload.filename, upload.content_type)

    def _dimensions(self, data: bytes, width: int | None, height: int | None) -> tuple[int, int]:
        if width is not None and height is not None:
            return width, height
        size = _image_size(data)
        if size is None:
            raise ValueError("cannot read the image size from these bytes; pass width= and height=")
        return size

    def _register_photo(self, data: bytes, width: int, height: int) -> list[StoredFile]:
        sizes: list[StoredFile] = []
        longest = max(width, height, 1)
        for side in PHOTO_SIDES:
            if side >= longest:
                break
            thumb = _thumbnail(data, side)
            if thumb is None:
                thumb_data = data
                thumb_size = (max(1, round(width * side / longest)), max(1, round(height * side / longest)))
            else:
                thumb_data, thumb_size = thumb
            sizes.append(self._store_file(thumb_data, "AgACAgIAAxkBAAI", "photos", ".jpg", None, None, *thumb_size))
        sizes.append(self._store_file(data, "AgACAgIAAxkBAAI", "photos", ".jpg", None, None, width, height))
        for stored in sizes:
            self._photo_sets[stored.file_id] = sizes
        return sizes

    def _store_file(
        self,
        data: bytes,
        id_prefix: str,
        folder: str,
        extension: str,
        file_name: str | None,
        mime_type: str | None,
        width: int | None = None,
        height: int | None = None,
    ) -> StoredFile:
        file_id = id_prefix + base64.urlsafe_b64encode(secrets.token_bytes(42)).decode().rstrip("=")
        unique_id = "AQAD" + base64.urlsafe_b64encode(secrets.token_bytes(9)).decode().rstrip("=")
        path = f"{folder}/file_{next(self._file_numbers)}{extension}"
        stored = StoredFile(file_id, unique_id, path, data, width, height, file_name, mime_type)
        self._files[file_id] = stored
        self._paths[path] = stored
        return stored


# ---------------------------------------------------------------------- request parsing


async def _read_params(request: web.Request) -> tuple[Json, dict[str, UploadedFile]]:
    """Parameters from the query string and a JSON, form-urlencoded or multipart body, typed."""
    params: Json = {key: _coerce(key, value) for key, value in request.query.items()}
    files: dict[str, UploadedFile] = {}
    if request.method != "POST" or not request.can_read_body:
        return params, files
    try:
        if request.content_type == "application/json":
            try:
                body = await request.json()
            except ValueError:
                raise bad_request("can't parse JSON object") from None
            if not isinstance(body, dict):
                raise bad_request("can't parse JSON object")
            params.update(body)
        elif request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
            form = await request.post()
            for key, value in form.items():
                if isinstance(value, web.FileField):
                    files[key] = UploadedFile(key, value.filename, value.content_type, value.file.read())
                else:
                    params[key] = _coerce(key, str(value))
    except web.HTTPRequestEntityTooLarge:
        raise ApiError(413, "Request Entity Too Large") from None
    return params, files


def _coerce(name: str, value: str) -> Any:
    """Form fields arrive as strings; Telegram reads numbers, booleans and JSON from them."""
    if name in _STRING_PARAMS:
        return value
    try:
        return json.loads(value)
    except ValueError:
        return value


def _as_int(value: Any, default: int) -> int:
    if value in (None, ""):
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise bad_request(f"invalid integer value {value!r}") from None


def _scope_key(scope: Any, language_code: Any) -> tuple[str, str]:
    return json.dumps(scope or {"type": "default"}, sort_keys=True), str(language_code or "")


def _fault_error(fault: _Fault) -> ApiError:
    status = fault.status or 500
    if status == 429:
        error = too_many_requests(fault.retry_after)
        if fault.description:
            error.description = fault.description
        return error
    return ApiError(status, fault.description or _STATUS_DESCRIPTIONS.get(status, HTTPStatus(status).phrase))


def _reaction(value: str | Json) -> Json:
    return {"type": "emoji", "emoji": value} if isinstance(value, str) else dict(value)


def _extension(file_name: str | None) -> str:
    if file_name and "." in file_name:
        return "." + file_name.rsplit(".", 1)[1].lower()
    return ""


def _check_markup(markup: Any) -> Json | None:
    """Validate a reply_markup; returns what a Message echoes back (only inline keyboards)."""
    if markup is None:
        return None
    if not isinstance(markup, dict):
        raise bad_request("can't parse reply keyboard markup JSON object")
    if "inline_keyboard" not in markup:
        return None  # reply keyboards / ForceReply / removal are accepted but not echoed in the Message
    rows = markup["inline_keyboard"]
    if not isinstance(rows, list) or not all(isinstance(row, list) for row in rows):
        raise bad_request("can't parse inline keyboard button: InlineKeyboardButton must be an Object")
    for button in (button for row in rows for button in row):
        if not isinstance(button, dict) or not button.get("text"):
            raise bad_request("can't parse inline keyboard button: Text must be non-empty")
        if not _INLINE_BUTTON_ACTIONS & button.keys():
            raise bad_request("can't parse inline keyboard button: Text buttons are unallowed in the inline keyboard")
        if "callback_data" in button and not 1 <= len(str(button["callback_data"]).encode()) <= MAX_CALLBACK_DATA:
            raise bad_request("BUTTON_DATA_INVALID")
    if not any(rows):
        return None
    return {"inline_keyboard": copy.deepcopy(rows)}


# ---------------------------------------------------------------------- text and entities


def _utf16_len(text: str) -> int:
    """Entity offsets and lengths count UTF-16 code units, not Python characters."""
    return len(text.encode("utf-16-le")) // 2


def _command_entities(text: str) -> list[Json]:
    return [
        {"type": "bot_command", "offset": _utf16_len(text[: m.start()]), "length": _utf16_len(m.group())}
        for m in _COMMAND.finditer(text)
    ]


def _cant_parse(detail: str) -> ApiError:
    return bad_request(f"can't parse entities: {detail}")


def _format(text: str, parse_mode: Any, entities: Any) -> tuple[str, list[Json]]:
    if not parse_mode:
        return text, list(entities or [])
    mode = str(parse_mode).lower()
    if mode == "html":
        return _parse_html(text)
    if mode == "markdownv2":
        return _parse_markdown_v2(text), []
    if mode == "markdown":
        return _parse_markdown(text), []
    raise bad_request(f"unsupported parse_mode {parse_mode}")


_HTML_TAGS = {
    "b": "bold", "strong": "bold", "i": "italic", "em": "italic", "u": "underline", "ins": "underline",
    "s": "strikethrough", "strike": "strikethrough", "del": "strikethrough", "tg-spoiler": "spoiler",
    "span": "spoiler", "a": "text_link", "code": "code", "pre": "pre", "blockquote": "blockquote",
    "tg-emoji": "custom_emoji",
}  # fmt: skip
_HTML_ENTITIES = {"lt": "<", "gt": ">", "amp": "&", "quot": '"'}
_HTML_ENTITY = re.compile(r"&(#x[0-9a-fA-F]{1,6}|#[0-9]{1,7}|[a-zA-Z]+);")
_HREF = re.compile(r"""href\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s'"]+))""")


def _parse_html(source: str) -> tuple[str, list[Json]]:
    """Telegram's HTML: a few tags become entities; a ``<`` that opens no supported tag is an error."""
    out: list[str] = []
    length16 = 0
    stack: list[tuple[str, int, Json]] = []
    entities: list[Json] = []
    i = 0
    while i < len(source):
        char = source[i]
        if char == "<":
            byte = len(source[:i].encode())
            end = source.find(">", i)
            if end < 0:
                raise _cant_parse(f"Can't find end of the tag starting at byte offset {byte}")
            inner = source[i + 1 : end].strip()
            if inner.startswith("/"):
                name = inner[1:].strip().lower()
                if not stack:
                    raise _cant_parse(f'Unexpected end tag "{name}" at byte offset {byte}')
                open_name, start, entity = stack.pop()
                if name != open_name:
                    raise _cant_parse(
                        f'Unmatched end tag at byte offset {byte}, expected "</{open_name}>", found "</{name}>"'
                    )
                if length16 > start and (entity["type"] != "text_link" or entity.get("url")):
                    entities.append({**entity, "offset": start, "length": length16 - start})
            else:
                name, _, attributes = inner.partition(" ")
                name = name.lower()
                if name not in _HTML_TAGS:
                    raise _cant_parse(f'Unsupported start tag "{name}" at byte offset {byte}')
                if name == "span" and "tg-spoiler" not in attributes:
                    raise _cant_parse(f'Tag "span" must have class "tg-spoiler" at byte offset {byte}')
                entity: Json = {"type": _HTML_TAGS[name]}
                href = _HREF.search(attributes) if name == "a" else None
                if href:
                    entity["url"] = next(group for group in href.groups() if group is not None)
                stack.append((name, length16, entity))
            i = end + 1
            continue
        piece = char
        if char == "&":
            match = _HTML_ENTITY.match(source, i)
            decoded = _decode_html_entity(match.group(1)) if match else None
            if match and decoded is not None:
                piece = decoded
                i = match.end() - 1
        out.append(piece)
        length16 += _utf16_len(piece)
        i += 1
    if stack:
        raise _cant_parse(f'Can\'t find end tag corresponding to start tag "{stack[-1][0]}"')
    entities.sort(key=lambda e: (e["offset"], -e["length"]))
    return "".join(out), entities


def _decode_html_entity(name: str) -> str | None:
    if name.startswith("#x"):
        return chr(int(name[2:], 16))
    if name.startswith("#"):
        return chr(int(name[1:]))
    return _HTML_ENTITIES.get(name)


_MARKDOWN_V2_RESERVED = frozenset("_*[]()~`>#+-=|{}.!")


def _parse_markdown_v2(source: str) -> str:
    """Approximate MarkdownV2: markup dropped (no entities), unescaped reserved characters refused."""
    out: list[str] = []
    in_code = False
    i = 0
    while i < len(source):
        char = source[i]
        if char == "\\" and i + 1 < len(source):
            out.append(source[i + 1])
            i += 2
            continue
        if char == "`":
            in_code = not in_code
        elif in_code:
            out.append(char)
        elif char == "]" and source.startswith("(", i + 1):
            close = source.find(")", i + 2)
            if close < 0:
                raise _cant_parse(f"Can't find end of a URL at byte offset {len(source[:i].encode())}")
            i = close
        elif char in "*_~|[" or (char == ">" and (i == 0 or source[i - 1] == "\n")):
            pass
        elif char in _MARKDOWN_V2_RESERVED:
            raise _cant_parse(f"Character '{char}' is reserved and must be escaped with the preceding '\\'")
        else:
            out.append(char)
        i += 1
    return "".join(out)


def _parse_markdown(source: str) -> str:
    """Approximate legacy Markdown: ``*bold*``, ``_italic_``, `` `code` `` and ``[text](url)`` lose their markup."""
    for marker in "*_`":
        if source.count(marker) % 2:
            byte = len(source[: source.rfind(marker)].encode())
            raise _cant_parse(f"Can't find end of the entity starting at byte offset {byte}")
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", source)
    return re.sub(r"[*_`]", "", text)


# ---------------------------------------------------------------------- images


def _image_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from the image header (PNG, GIF, JPEG), else from Pillow if installed."""
    if data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) >= 24:
        width, height = struct.unpack(">II", data[16:24])
        return width, height
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        width, height = struct.unpack("<HH", data[6:10])
        return width, height
    if data.startswith(b"\xff\xd8"):
        size = _jpeg_size(data)
        if size is not None:
            return size
    try:
        from PIL import Image  # optional: only for formats the header parsers above do not know
    except ImportError:
        return None
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except (OSError, ValueError, SyntaxError):
        return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:
            i += 1
            continue
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack(">HH", data[i + 5 : i + 9])
            return width, height
        i += 2 + length
    return None


def _thumbnail(data: bytes, side: int) -> tuple[bytes, tuple[int, int]] | None:
    """A JPEG no larger than ``side`` on its longest edge, as Telegram makes; None without Pillow."""
    try:
        from PIL import Image
    except ImportError:
        return None
    try:
        with Image.open(io.BytesIO(data)) as image:
            thumb = image.convert("RGB")
            thumb.thumbnail((side, side))
            buffer = io.BytesIO()
            thumb.save(buffer, "JPEG", quality=80)
            return buffer.getvalue(), thumb.size
    except (OSError, ValueError, SyntaxError):
        return None
