"""A loopback fake of the Discord API (REST v10 + gateway), driven by the real discord.py client.

Why it exists: no third-party double covers slash commands, deferrals, follow-ups with files, component
interactions and raw reaction events (dpytest speaks prefix commands only). So the adapter is tested against
the real library, talking to a small aiohttp server on 127.0.0.1 that answers with Discord's wire formats:
the JSON shapes discord.py parses, the 429 body and headers its rate limiter reads, text JSON gateway frames
with sequence numbers, and RESUME replay after a dropped connection.

The fake models the platform rules the product depends on, so that tests fail where Discord would:

* an interaction must be acknowledged once, within ``ack_deadline`` (3 s) of its dispatch, else
  ``404 Unknown interaction`` (10062); a second acknowledgement gets ``400`` (40060);
* follow-ups and edits need an acknowledged, unexpired (15 min) interaction token;
* the first follow-up after a deferred (type 5) response fills the "thinking" message and keeps the
  defer's ephemeral flag; later follow-ups are new messages;
* each uploaded file is limited to ``upload_limit`` bytes (10 MiB) and a request's files together to
  ``request_upload_limit`` (25 MiB), else ``413`` (40005);
* what the bot sends is checked against Discord's limits, answered ``400`` Invalid Form Body (50035) with the
  ``errors`` tree naming the field: content at most 2000 characters, at most 10 embeds and 10 attachments per
  message, at most 5 action rows of at most 5 buttons (a select menu alone in its row), ``custom_id`` 1-100
  characters, select menus with 1-25 options whose labels and values are 1-100 characters, autocomplete
  answers with at most 25 choices whose names are 1-100 characters;
* the bot's permissions (``app_permissions``, changeable at any time) are enforced: a channel send needs
  VIEW_CHANNEL and SEND_MESSAGES (and ATTACH_FILES with files), adding a reaction READ_MESSAGE_HISTORY and
  ADD_REACTIONS; without them ``403`` Missing Access (50001) or Missing Permissions (50013); interaction
  follow-ups and edits (webhooks) need none;
* the bot's own reactions are limited per channel to one per ``reaction_interval`` (0.25 s), beyond it ``429``
  with Discord's body and rate-limit headers;
* direct messages: ``POST /users/@me/channels`` opens one, sends to it need no guild permission; a person in
  ``closed_dms`` does not accept them (``403`` Cannot send messages to this user, 50007);
* ``nonce`` + ``enforce_nonce`` on ``POST /channels/{id}/messages`` deduplicates retries;
* ``GET /channels/{id}/messages`` lists a channel's messages newest first, interaction follow-ups included (their
  author is the application's bot user, as on Discord), ephemeral ones not: ``limit`` 1-100 (default 50), at most
  one of ``before``/``after``/``around`` (Discord documents them as mutually exclusive; more is refused here with
  50035); ``after`` gives the oldest ``limit`` messages after it, ``before`` the newest before it.  A guild channel
  without VIEW_CHANNEL is ``403`` Missing Access (50001); without READ_MESSAGE_HISTORY the list is empty, as
  Discord documents ("no messages will be returned");
* message edits (``PATCH /webhooks/{app}/{token}/messages/{id|@original}`` and
  ``PATCH /channels/{id}/messages/{id}``, JSON or multipart with ``files[n]``) are checked against the
  OpenAPI schemas (``IncomingWebhookUpdateRequestPartial``, ``MessageEditRequestPartial``): content at
  most 2000 (webhook) or 4000 (channel) characters, at most 10 embeds and 10 attachments, every
  ``attachments`` entry an object with an ``id`` naming an uploaded ``files[n]`` or an attachment the
  message has, filenames 1-1024 characters; an edit that would leave the message empty is refused
  (50006); ``attachments`` given lists the message's attachments from then on (others are removed);
  :meth:`FakeDiscord.message_edits` lists every edit request one message got, with its time;
* attachment URLs are signed and expire (``ex``/``is``/``hm`` query like Discord's CDN);
* gateway events gated by intents are only sent when IDENTIFY asked for them, and privileged intents not
  enabled for the application close the gateway with 4014, as Discord does;
* sharding (https://discord.com/developers/docs/events/gateway#sharding): the fake holds guilds beyond its
  first (:meth:`FakeDiscord.add_guild`, :meth:`FakeDiscord.add_guilds`); ``GET /gateway/bot`` recommends one
  shard per 1,000 guilds (or ``recommended_shards``) with its ``session_start_limit``; an IDENTIFY whose session
  would hold more than 2,500 guilds (one without ``shard`` holds them all) is closed with 4011 "Sharding
  required", a ``shard`` that is not ``[shard_id, shard_count]`` with ``0 <= shard_id < shard_count`` with
  4010 "Invalid shard"; each session gets only its shard's guilds (READY, GUILD_CREATE) and the events of
  those guilds (interactions, reactions, messages: ``(guild_id >> 22) % shard_count``), direct messages'
  events shard 0's;
* the session-start rate limit (https://discord.com/developers/docs/events/gateway#session-start-limit): shards
  are grouped in buckets ``shard_id % max_concurrency`` (an unsharded session is shard 0's), and a bucket takes
  one IDENTIFY per ``identify_interval`` (5 s) whichever connection or process sends it; one sooner is answered
  with op 9 Invalid Session (``d: false``) and counted in ``identify_too_soon``.

Typical use::

    async with FakeDiscord() as fake:            # also points discord.py at the fake (auto_patch)
        bot = MyBot(intents=discord.Intents.default(), guild_ready_timeout=0.05)
        async with running_client(bot, fake):
            it = await fake.send_slash_command("profile", {"style": "anime"},
                                               attachments={"selfie": ("me.jpg", jpeg, "image/jpeg")})
            cb = await fake.wait_for_callback(it)
            assert cb.type == 5 and cb.elapsed < 3
            msg = await fake.wait_for_followup(it)
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import io
import json
import logging
import math
import mimetypes
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import aiohttp
from aiohttp import web

from tests.fakes.spec_validation import discord_refusal

if TYPE_CHECKING:
    import discord

__all__ = [
    "BOT_PERMISSIONS",
    "INTENT_GUILDS",
    "INTENT_GUILD_MEMBERS",
    "INTENT_GUILD_MESSAGES",
    "INTENT_GUILD_MESSAGE_REACTIONS",
    "INTENT_GUILD_PRESENCES",
    "INTENT_MESSAGE_CONTENT",
    "MAX_GUILDS_PER_SHARD",
    "PERMISSION_ADD_REACTIONS",
    "PERMISSION_ADMINISTRATOR",
    "PERMISSION_ATTACH_FILES",
    "PERMISSION_READ_MESSAGE_HISTORY",
    "PERMISSION_SEND_MESSAGES",
    "PERMISSION_VIEW_CHANNEL",
    "CallbackRecord",
    "FakeDiscord",
    "FakeUser",
    "Fault",
    "GatewayConnection",
    "GatewayFrame",
    "InteractionRecord",
    "RecordedRequest",
    "StoredAttachment",
    "UploadedFile",
    "running_client",
]

_log = logging.getLogger(__name__)
T = TypeVar("T")

API_VERSION = 10
#: Discord's most guilds on one session; beyond it IDENTIFY is closed with 4011 (Sharding required).
MAX_GUILDS_PER_SHARD = 2500
API_PREFIX = f"/api/v{API_VERSION}"
DISCORD_EPOCH_MS = 1_420_070_400_000

# Gateway intents (https://discord.com/developers/docs/events/gateway#gateway-intents).
INTENT_GUILDS = 1 << 0
INTENT_GUILD_MEMBERS = 1 << 1  # privileged
INTENT_GUILD_PRESENCES = 1 << 8  # privileged
INTENT_GUILD_MESSAGES = 1 << 9
INTENT_GUILD_MESSAGE_REACTIONS = 1 << 10
INTENT_MESSAGE_CONTENT = 1 << 15  # privileged
PRIVILEGED_INTENTS = INTENT_GUILD_MEMBERS | INTENT_GUILD_PRESENCES | INTENT_MESSAGE_CONTENT

# Message flags.
FLAG_SUPPRESS_EMBEDS = 1 << 2
FLAG_EPHEMERAL = 1 << 6
FLAG_LOADING = 1 << 7
FLAG_SUPPRESS_NOTIFICATIONS = 1 << 12
FLAG_IS_COMPONENTS_V2 = 1 << 15
_SETTABLE_FLAGS = FLAG_SUPPRESS_EMBEDS | FLAG_EPHEMERAL | FLAG_SUPPRESS_NOTIFICATIONS | FLAG_IS_COMPONENTS_V2

# Interaction types and callback types.
INTERACTION_PING = 1
INTERACTION_APPLICATION_COMMAND = 2
INTERACTION_MESSAGE_COMPONENT = 3
INTERACTION_AUTOCOMPLETE = 4
INTERACTION_MODAL_SUBMIT = 5
CALLBACK_MESSAGE = 4
CALLBACK_DEFERRED_MESSAGE = 5
CALLBACK_DEFERRED_UPDATE = 6
CALLBACK_UPDATE_MESSAGE = 7
CALLBACK_AUTOCOMPLETE_RESULT = 8
CALLBACK_MODAL = 9
_ALLOWED_CALLBACKS: dict[int, frozenset[int]] = {
    INTERACTION_APPLICATION_COMMAND: frozenset({CALLBACK_MESSAGE, CALLBACK_DEFERRED_MESSAGE, CALLBACK_MODAL}),
    INTERACTION_MESSAGE_COMPONENT: frozenset(
        {CALLBACK_MESSAGE, CALLBACK_DEFERRED_MESSAGE, CALLBACK_DEFERRED_UPDATE, CALLBACK_UPDATE_MESSAGE, CALLBACK_MODAL}
    ),
    INTERACTION_AUTOCOMPLETE: frozenset({CALLBACK_AUTOCOMPLETE_RESULT}),
    INTERACTION_MODAL_SUBMIT: frozenset(
        {CALLBACK_MESSAGE, CALLBACK_DEFERRED_MESSAGE, CALLBACK_DEFERRED_UPDATE, CALLBACK_UPDATE_MESSAGE}
    ),
}

# Permission bits used for the @everyone role, members and the bot.
_P_CREATE_INVITE = 1 << 0
_P_ADD_REACTIONS = 1 << 6
_P_VIEW_CHANNEL = 1 << 10
_P_SEND_MESSAGES = 1 << 11
_P_EMBED_LINKS = 1 << 14
_P_ATTACH_FILES = 1 << 15
_P_READ_HISTORY = 1 << 16
_P_EXTERNAL_EMOJIS = 1 << 18
_P_CONNECT = 1 << 20
_P_SPEAK = 1 << 21
_P_CHANGE_NICKNAME = 1 << 26
_P_USE_COMMANDS = 1 << 31
_P_SEND_IN_THREADS = 1 << 38
EVERYONE_PERMISSIONS = (
    _P_CREATE_INVITE
    | _P_ADD_REACTIONS
    | _P_VIEW_CHANNEL
    | _P_SEND_MESSAGES
    | _P_EMBED_LINKS
    | _P_ATTACH_FILES
    | _P_READ_HISTORY
    | _P_EXTERNAL_EMOJIS
    | _P_CONNECT
    | _P_SPEAK
    | _P_CHANGE_NICKNAME
    | _P_USE_COMMANDS
    | _P_SEND_IN_THREADS
)
BOT_PERMISSIONS = EVERYONE_PERMISSIONS
_P_ADMINISTRATOR = 1 << 3
#: The permissions the fake enforces, by their Discord names, for tests that take some away from the bot
#: (``fake.app_permissions = BOT_PERMISSIONS & ~PERMISSION_ADD_REACTIONS``).
PERMISSION_ADMINISTRATOR = _P_ADMINISTRATOR
PERMISSION_ADD_REACTIONS = _P_ADD_REACTIONS
PERMISSION_VIEW_CHANNEL = _P_VIEW_CHANNEL
PERMISSION_SEND_MESSAGES = _P_SEND_MESSAGES
PERMISSION_ATTACH_FILES = _P_ATTACH_FILES
PERMISSION_READ_MESSAGE_HISTORY = _P_READ_HISTORY

# Application command option types.
_OPT_SUB_COMMAND = 1
_OPT_SUB_COMMAND_GROUP = 2
_OPT_STRING = 3
_OPT_INTEGER = 4
_OPT_BOOLEAN = 5
_OPT_USER = 6
_OPT_NUMBER = 10
_OPT_ATTACHMENT = 11
_COMMAND_NAME = re.compile(r"^[-_\w]{1,32}$")

_EVENT_INTENTS: dict[str, int] = {
    "GUILD_CREATE": INTENT_GUILDS,
    "GUILD_UPDATE": INTENT_GUILDS,
    "GUILD_DELETE": INTENT_GUILDS,
    "CHANNEL_CREATE": INTENT_GUILDS,
    "MESSAGE_CREATE": INTENT_GUILD_MESSAGES,
    "MESSAGE_UPDATE": INTENT_GUILD_MESSAGES,
    "MESSAGE_DELETE": INTENT_GUILD_MESSAGES,
    "MESSAGE_REACTION_ADD": INTENT_GUILD_MESSAGE_REACTIONS,
    "MESSAGE_REACTION_REMOVE": INTENT_GUILD_MESSAGE_REACTIONS,
    "MESSAGE_REACTION_REMOVE_ALL": INTENT_GUILD_MESSAGE_REACTIONS,
    "GUILD_MEMBER_ADD": INTENT_GUILD_MEMBERS,
    "PRESENCE_UPDATE": INTENT_GUILD_PRESENCES,
}

_WEBHOOK_MESSAGE_PATH = re.compile(r"^/webhooks/\d+/(?P<token>[^/]+)/messages/(?P<message_id>@original|\d+)$")
_CHANNEL_MESSAGE_PATH = re.compile(r"^/channels/\d+/messages/(?P<message_id>\d+)$")
#: Limits of a message body, from Discord's OpenAPI schemas (IncomingWebhookRequestPartial and
#: IncomingWebhookUpdateRequestPartial for webhooks, MessageCreateRequest and MessageEditRequestPartial for
#: channel messages, MessageAttachmentRequest for attachments, *ComponentForMessageRequest for components).
#: Content: the schemas of channel messages allow 4000 characters, the length a Nitro member may type; a
#: bot's message is held to the documented 2000 everywhere, refused with the same 50035 beyond it.
CONTENT_MAX = 2000
WEBHOOK_EDIT_CONTENT_MAX = CONTENT_MAX
CHANNEL_EDIT_CONTENT_MAX = CONTENT_MAX
EDIT_MAX_EMBEDS = 10
EDIT_MAX_ATTACHMENTS = 10
EDIT_MAX_COMPONENTS = 40
ATTACHMENT_FILENAME_MAX = 1024
ATTACHMENT_DESCRIPTION_MAX = 1024
#: Message components without the IS_COMPONENTS_V2 flag: action rows, each of buttons or one select menu.
ACTION_ROWS_MAX = 5
ROW_COMPONENTS_MAX = 5
CUSTOM_ID_MAX = 100
BUTTON_LABEL_MAX = 80
SELECT_OPTIONS_MAX = 25
SELECT_OPTION_TEXT_MAX = 100
SELECT_PLACEHOLDER_MAX = 150
#: An autocomplete answer (InteractionApplicationCommandAutocompleteCallback*Data).
AUTOCOMPLETE_CHOICES_MAX = 25
CHOICE_NAME_MAX = 100
_SELECT_TYPES = frozenset({3, 5, 6, 7, 8})
_CUSTOM_EMOJI = re.compile(r"^<?(?P<animated>a)?:?(?P<name>[A-Za-z0-9_~]+):(?P<id>\d+)>?$")
_Reply = tuple[int, Any]
#: A handler's answer with response headers of its own (a rate limit's).
_ReplyWithHeaders = tuple[int, Any, Mapping[str, str]]


def _now_iso() -> str:
    return datetime.now(UTC).isoformat()


def _error(status: int, message: str, code: int = 0, **extra: Any) -> _Reply:
    """Discord's JSON error body: ``{"message": ..., "code": ...}`` (codes from the API docs)."""
    return status, {"message": message, "code": code, **extra}


def _rate_limited(
    retry_after: float, bucket: str, *, limit: int = 5, global_: bool = False, scope: str = "user"
) -> _ReplyWithHeaders:
    """Discord's 429: the body discord.py reads ``retry_after`` from, and the rate-limit headers."""
    body: dict[str, Any] = {"message": "You are being rate limited.", "retry_after": retry_after, "global": global_}
    if global_:
        body["code"] = 0
    headers = {
        "Retry-After": str(max(1, math.ceil(retry_after))),
        "X-RateLimit-Limit": str(limit),
        "X-RateLimit-Remaining": "0",
        "X-RateLimit-Reset": f"{time.time() + retry_after:.3f}",
        "X-RateLimit-Reset-After": f"{retry_after:.3f}",
        "X-RateLimit-Bucket": hashlib.md5(bucket.encode(), usedforsecurity=False).hexdigest(),
        "X-RateLimit-Scope": "global" if global_ else scope,
    }
    if global_:
        headers["X-RateLimit-Global"] = "true"
    return 429, body, headers


def _invalid_form(path: list[str | int], code: str, message: str) -> _Reply:
    """Discord's 400 Invalid Form Body (50035), the error nested at ``path`` as its ``errors`` object says."""
    errors: dict[str, Any] = {"_errors": [{"code": code, "message": message}]}
    for key in reversed(path):
        errors = {str(key): errors}
    return _error(400, "Invalid Form Body", 50035, errors=errors)


# --------------------------------------------------------------------------------------------------------------
# Records the tests assert on
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FakeUser:
    """A Discord user as the fake hands it out (in members, interactions and reaction events)."""

    id: int
    username: str
    global_name: str | None = None
    bot: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The user object in the v10 shape discord.py's ``User._update`` reads."""
        data: dict[str, Any] = {
            "id": str(self.id),
            "username": self.username,
            "discriminator": "0",
            "global_name": self.global_name,
            "avatar": None,
            "avatar_decoration_data": None,
            "banner": None,
            "accent_color": None,
            "public_flags": 0,
            "flags": 0,
            "primary_guild": None,
            "collectibles": None,
        }
        if self.bot:
            data["bot"] = True
        return data


@dataclass
class UploadedFile:
    """One ``files[n]`` part of a multipart request, as the client sent it."""

    field: str
    filename: str
    content_type: str
    data: bytes


@dataclass
class StoredAttachment:
    """An attachment the fake serves from its CDN route (a user's upload or one the bot posted)."""

    id: int
    channel_id: int
    filename: str
    content_type: str
    data: bytes
    expires_at: float  # unix time; downloads after it get 404 like Discord's expired CDN links

    @property
    def size(self) -> int:
        return len(self.data)


@dataclass
class Fault:
    """An injected failure for requests matching ``method`` and ``pattern`` (searched in the API path).

    ``when="before"`` answers without doing anything (the usual 429/5xx); ``when="after"`` performs the request
    and then answers the error, the "response lost" case that retries must survive without duplicates;
    ``when="held"`` performs the request and holds its answer back for ``retry_after`` seconds (or until the fake
    stops), then answers as usual: the window in which a client killed has done the thing but not heard of it.
    """

    method: str
    pattern: re.Pattern[str]
    status: int
    retry_after: float
    times: int
    global_: bool
    when: Literal["before", "after", "held"]
    hits: int = 0
    where: Callable[[RecordedRequest], bool] | None = None  # only requests it accepts (e.g. those with files)

    @property
    def exhausted(self) -> bool:
        return self.hits >= self.times

    def reply(self) -> tuple[int, Any, dict[str, str]]:
        """The response Discord gives: the real 429 body and rate-limit headers, or a 5xx JSON body."""
        if self.status == 429:
            return _rate_limited(self.retry_after, self.pattern.pattern, global_=self.global_)
        if self.status == 403:  # the refusal a bot meets most: a permission its role lacks
            return 403, {"message": "Missing Permissions", "code": 50013}, {}
        reason = {
            400: "Bad Request", 403: "Forbidden", 404: "Not Found", 500: "Internal Server Error", 502: "Bad Gateway",
            503: "Service Unavailable", 504: "Gateway Timeout",
        }  # fmt: skip
        return self.status, {"message": f"{self.status}: {reason.get(self.status, 'Error')}", "code": 0}, {}


@dataclass
class RecordedRequest:
    """One HTTP request the client made: REST (``path`` relative to ``/api/v10``) or a CDN download."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    json: Any  # the JSON body, or the ``payload_json`` part of a multipart body
    files: list[UploadedFile]
    time: float  # event-loop time when it arrived (same clock as InteractionRecord.dispatched_at)
    status: int | None = None  # what the fake answered
    response: Any = None
    fault: Fault | None = None

    @property
    def is_cdn(self) -> bool:
        return self.path.startswith("/attachments/")


@dataclass
class CallbackRecord:
    """An interaction callback (``POST /interactions/{id}/{token}/callback``)."""

    type: int  # 4 message, 5 deferred message, 6 deferred update, 7 update message, 8 autocomplete, 9 modal
    data: dict[str, Any]
    elapsed: float  # seconds between the INTERACTION_CREATE dispatch and this callback's arrival
    status: int  # 200/204 accepted; 404 too late or unknown; 400 already acknowledged or wrong type
    files: list[UploadedFile]

    @property
    def flags(self) -> int:
        return int(self.data.get("flags") or 0)

    @property
    def ephemeral(self) -> bool:
        return bool(self.flags & FLAG_EPHEMERAL)

    @property
    def accepted(self) -> bool:
        return 200 <= self.status < 300


@dataclass
class InteractionRecord:
    """An interaction the fake dispatched, and what the bot did with it."""

    id: int
    token: str
    type: int
    payload: dict[str, Any]  # the INTERACTION_CREATE ``d`` exactly as sent
    dispatched_at: float
    channel_id: int
    user: FakeUser
    callbacks: list[CallbackRecord] = field(default_factory=list)
    followup_ids: list[int] = field(default_factory=list)  # messages made by POST /webhooks/{app}/{token}
    original_message_id: int | None = None
    awaiting_first_followup: bool = False  # deferred with a "thinking" message not yet filled

    @property
    def callback(self) -> CallbackRecord | None:
        """The accepted acknowledgement, if any."""
        return next((cb for cb in self.callbacks if cb.accepted), None)

    @property
    def acknowledged(self) -> bool:
        return self.callback is not None

    @property
    def message_id(self) -> int | None:
        """For component interactions: the message whose component was used."""
        message = self.payload.get("message")
        return int(message["id"]) if message else None


@dataclass
class GatewayFrame:
    """A frame the client sent on the gateway."""

    op: int
    d: Any
    time: float
    connection: int  # index into FakeDiscord.connections


@dataclass
class GatewayConnection:
    """One websocket connection to ``/gateway``."""

    index: int
    query: dict[str, str]  # v, encoding, compress as discord.py asked
    opened_at: float
    ws: web.WebSocketResponse
    request: web.Request
    session_id: str | None = None
    resumed: bool = False
    closed_at: float | None = None
    close_code: int | None = None  # the code the fake closed with, else the client's

    async def close(self, code: int, reason: str) -> None:
        """Close with a gateway close code, remembering it (the client echoes its own code back)."""
        if self.close_code is None:
            self.close_code = code
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.ws.close(code=code, message=reason.encode())


@dataclass
class _Session:
    id: str
    intents: int
    #: ``(shard_id, shard_count)`` from IDENTIFY; ``None``: unsharded (every guild).
    shard: tuple[int, int] | None = None
    seq: int = 0
    frames: list[dict[str, Any]] = field(default_factory=list)
    conn: GatewayConnection | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


@dataclass
class _Route:
    method: str
    pattern: re.Pattern[str]
    handler: Callable[..., Awaitable[_Reply | _ReplyWithHeaders]]
    auth: bool


# --------------------------------------------------------------------------------------------------------------
# The fake
# --------------------------------------------------------------------------------------------------------------


class FakeDiscord:
    """Discord's REST API v10 and gateway on ``127.0.0.1:<random port>``; see the module docstring.

    Everything the client does is recorded: ``requests`` (every HTTP request), ``gateway_received`` (every
    gateway frame), ``identifies``/``resumes``, ``connections``, ``interactions``, ``messages`` (message
    objects by id), ``attachments`` (bytes by attachment id), ``global_commands``/``guild_commands``.
    """

    def __init__(
        self,
        *,
        token: str = "fake-bot-token",
        ack_deadline: float = 3.0,
        token_ttl: float = 15 * 60.0,
        attachment_ttl: float = 24 * 3600.0,
        upload_limit: int = 10 * 1024 * 1024,
        request_upload_limit: int = 25 * 1024 * 1024,
        reaction_interval: float = 0.25,
        nonce_window: float = 300.0,
        heartbeat_interval_ms: int = 41_250,
        allowed_privileged_intents: int = 0,
        enforce_intents: bool = True,
        dispatch_message_events: bool = True,
        app_permissions: int = BOT_PERMISSIONS,
        auto_patch: bool = True,
        identify_interval: float = 5.0,
    ) -> None:
        self.token = token
        self.ack_deadline = ack_deadline
        self.token_ttl = token_ttl
        self.attachment_ttl = attachment_ttl
        self.upload_limit = upload_limit  # per file
        self.request_upload_limit = request_upload_limit  # all files of one request together
        self.reaction_interval = reaction_interval  # the bot's reactions: one per interval per channel
        self.nonce_window = nonce_window
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.allowed_privileged_intents = allowed_privileged_intents
        self.enforce_intents = enforce_intents
        self.dispatch_message_events = dispatch_message_events
        self.app_permissions = app_permissions
        self.auto_patch = auto_patch

        self._increment = 0
        self._secret = secrets.token_bytes(16)
        self.application_id = self.snowflake()
        self.bot_user = FakeUser(self.application_id, "MMPP", global_name="MMPP", bot=True)
        self.owner = FakeUser(self.snowflake(), "owner", global_name="Owner")
        self.default_user = FakeUser(self.snowflake(), "alice", global_name="Alice")
        self.users: dict[int, FakeUser] = {u.id: u for u in (self.bot_user, self.owner, self.default_user)}
        self.guild_id = self.snowflake()
        self.channel_id = self.snowflake()
        self.bot_role_id = self.snowflake()
        self.guild_name = "MMPP test guild"
        self.channel_name = "general"
        #: Guilds beyond the first, by id: their one text channel (what shards split; see add_guild).
        self.extra_guilds: dict[int, int] = {}
        self._channel_guilds: dict[int, int] = {self.channel_id: self.guild_id}
        #: What GET /gateway/bot recommends; None: one shard per 1,000 guilds, as Discord roughly does.
        self.recommended_shards: int | None = None
        #: The session start limit: each IDENTIFY takes one start; with none left Discord answers IDENTIFY
        #: with op 9 Invalid Session (https://discord.com/developers/docs/events/gateway#session-start-limit).
        self.session_starts_total = 1000
        self.session_starts_remaining = 1000
        self.max_concurrency = 1
        #: Discord's one IDENTIFY per 5 s per bucket (``shard_id % max_concurrency``), across every connection.
        self.identify_interval = identify_interval
        #: IDENTIFYs refused for coming within ``identify_interval`` of the last accepted one of their bucket.
        self.identify_too_soon = 0
        self._last_identify_at: dict[int, float] = {}  # bucket -> loop time of its last accepted IDENTIFY
        #: Every accepted IDENTIFY: (its bucket, the loop time it came), to check how far apart a bucket's came.
        self.identify_starts: list[tuple[int, float]] = []
        #: The current session of each shard (``None``: an unsharded session), where events are routed.
        self._shard_sessions: dict[tuple[int, int] | None, _Session] = {}

        self.requests: list[RecordedRequest] = []
        self.gateway_received: list[GatewayFrame] = []
        self.identifies: list[dict[str, Any]] = []
        self.resumes: list[dict[str, Any]] = []
        self.presence_updates: list[dict[str, Any]] = []
        self.connections: list[GatewayConnection] = []
        self.suppressed_events: list[tuple[str, dict[str, Any]]] = []  # not sent: intent not requested
        self.interactions: list[InteractionRecord] = []
        self.messages: dict[int, dict[str, Any]] = {}
        self.deleted_message_ids: set[int] = set()
        self.attachments: dict[int, StoredAttachment] = {}
        self.global_commands: list[dict[str, Any]] = []
        self.guild_commands: dict[int, list[dict[str, Any]]] = {}
        self.bot_reactions: list[tuple[int, str]] = []  # (message id, emoji) the bot currently has on
        self.dm_channels: dict[int, int] = {}  # user id -> the id of the bot's DM channel with them
        self.closed_dms: set[int] = set()  # users who do not accept direct messages from the bot

        self._faults: list[Fault] = []
        self._sessions: dict[str, _Session] = {}
        self._session: _Session | None = None
        self._interactions_by_token: dict[str, InteractionRecord] = {}
        self._nonces: dict[tuple[int, str], tuple[float, int]] = {}
        self._next_reaction_at: dict[int, float] = {}  # channel id -> loop time of the next allowed reaction
        self._command_ids: dict[tuple[int | None, str], int] = {}
        self._changed: asyncio.Event | None = None
        self._stopping: asyncio.Event | None = None  # set when the fake stops: held answers go out at once
        self._tasks: set[asyncio.Task[Any]] = set()
        self._runner: web.AppRunner | None = None
        self._patch_stack: contextlib.ExitStack | None = None
        self.port = 0
        self._routes = self._build_routes()

    # ---------------------------------------------------------------- lifecycle

    async def __aenter__(self) -> FakeDiscord:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Listen on a random loopback port; with ``auto_patch`` also point discord.py here."""
        self._changed = asyncio.Event()
        self._stopping = asyncio.Event()
        app = web.Application(client_max_size=64 * 1024 * 1024)  # big enough to answer 413 ourselves
        app.router.add_get("/gateway", self._gateway)
        app.router.add_get("/attachments/{channel_id}/{attachment_id}/{filename}", self._cdn)
        app.router.add_route("*", API_PREFIX + "/{tail:.*}", self._api)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        if self.auto_patch:
            self._patch_stack = contextlib.ExitStack()
            self._patch_stack.enter_context(self.patch_client())

    async def stop(self) -> None:
        """Close the gateway connections, stop the server and restore discord.py's addresses."""
        if self._stopping is not None:
            self._stopping.set()
        for conn in self.connections:
            if not conn.ws.closed:
                with contextlib.suppress(ConnectionError, RuntimeError, asyncio.TimeoutError):
                    await asyncio.wait_for(conn.ws.close(code=1001, message=b"fake shutting down"), 1.0)
        for task in list(self._tasks):
            task.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._patch_stack is not None:
            self._patch_stack.close()
            self._patch_stack = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_base(self) -> str:
        """What ``discord.http.Route.BASE`` must be: ``http://127.0.0.1:PORT/api/v10``."""
        return self.base_url + API_PREFIX

    @property
    def gateway_url(self) -> str:
        """The websocket address (``GET /gateway/bot`` answers it; plain Clients need the patch)."""
        return f"ws://127.0.0.1:{self.port}/gateway"

    @contextlib.contextmanager
    def patch_client(self) -> Iterator[None]:
        """Point discord.py at the fake, restoring the real addresses afterwards.

        Two class attributes matter in discord.py 2.7: ``Route.BASE`` (every REST and webhook URL is built from
        it when a Route is created) and ``DiscordWebSocket.DEFAULT_GATEWAY``: a plain ``Client``/``Bot`` never
        asks ``GET /gateway/bot`` and connects to ``DEFAULT_GATEWAY`` (only ``AutoShardedClient`` uses the
        answer). After READY it resumes at ``resume_gateway_url``, which the fake also points here.
        """
        import discord.gateway
        import discord.http
        import yarl

        old_base = discord.http.Route.BASE
        old_gateway = discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
        discord.http.Route.BASE = self.api_base
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(self.gateway_url)
        try:
            yield
        finally:
            discord.http.Route.BASE = old_base
            discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = old_gateway

    # ---------------------------------------------------------------- small helpers

    def snowflake(self) -> int:
        """A new id shaped like Discord's (timestamp << 22), so ``created_at`` on it is sensible."""
        self._increment = (self._increment + 1) & 0xFFF
        ms = int(time.time() * 1000) - DISCORD_EPOCH_MS
        return (ms << 22) | (1 << 17) | self._increment

    def _loop_time(self) -> float:
        return asyncio.get_running_loop().time()

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = asyncio.Event()

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def wait_until(self, check: Callable[[], T | None], timeout: float = 5.0, what: str = "condition") -> T:
        """Wait until ``check()`` returns something truthy (re-checked whenever the fake records anything)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            result = check()
            if result:
                return result
            remaining = deadline - loop.time()
            if remaining <= 0:
                seen = "\n  ".join(f"{r.method} {r.path} -> {r.status}" for r in self.requests[-15:])
                raise TimeoutError(f"timed out after {timeout}s waiting for {what}; last requests:\n  {seen}")
            changed = self._changed
            assert changed is not None, "FakeDiscord is not started"
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(changed.wait(), min(remaining, 0.05))  # also polls state kept by the bot

    async def wait_for(self, predicate: Callable[[RecordedRequest], bool], timeout: float = 5.0) -> RecordedRequest:
        """The first recorded (and answered) request matching ``predicate``, waiting for it if needed.

        Earlier requests count too; to wait for a new one, put a condition on ``r.time`` or on the count.
        """

        def check() -> RecordedRequest | None:
            return next((r for r in self.requests if r.status is not None and predicate(r)), None)

        return await self.wait_until(check, timeout, "a matching request")

    async def wait_for_callback(self, interaction: InteractionRecord, timeout: float = 5.0) -> CallbackRecord:
        """The first callback (accepted or refused) the bot made for ``interaction``."""
        return await self.wait_until(
            lambda: interaction.callbacks[0] if interaction.callbacks else None, timeout, "an interaction callback"
        )

    async def wait_for_followup(
        self, interaction: InteractionRecord, index: int = 0, timeout: float = 5.0
    ) -> dict[str, Any]:
        """The ``index``-th follow-up message of ``interaction`` (the filled "thinking" message counts)."""

        def check() -> dict[str, Any] | None:
            if len(interaction.followup_ids) > index:
                return self.messages.get(interaction.followup_ids[index])
            return None

        return await self.wait_until(check, timeout, f"follow-up #{index}")

    async def wait_for_message(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 5.0
    ) -> dict[str, Any]:
        """The first stored message object (channel post or interaction message) matching ``predicate``."""
        return await self.wait_until(
            lambda: next((m for m in self.messages.values() if predicate(m)), None), timeout, "a matching message"
        )

    def channel_messages(self, channel_id: int | None = None) -> list[dict[str, Any]]:
        """Messages in a channel, oldest first (ephemeral ones included, flagged 64)."""
        wanted = str(channel_id or self.channel_id)
        return [m for m in self.messages.values() if m["channel_id"] == wanted]

    def message_files(self, message: dict[str, Any] | int) -> list[StoredAttachment]:
        """The stored bytes of a message's attachments."""
        msg = message if isinstance(message, dict) else self.messages[int(message)]
        return [self.attachments[int(a["id"])] for a in msg.get("attachments", [])]

    def message_edits(self, message_id: int) -> list[RecordedRequest]:
        """Every PATCH the client sent for one message (webhook ``@original`` or id, or channel), oldest first.

        Answered or refused alike: a refused request still counts against Discord's per-message rate limit.
        """
        found = []
        for rec in self.requests:
            if rec.method != "PATCH":
                continue
            webhook = _WEBHOOK_MESSAGE_PATH.match(rec.path)
            channel = _CHANNEL_MESSAGE_PATH.match(rec.path)
            if webhook is not None:
                named = webhook["message_id"]
                if named == "@original":
                    it = self._interactions_by_token.get(webhook["token"])
                    target = it.original_message_id if it is not None else None
                else:
                    target = int(named)
            elif channel is not None:
                target = int(channel["message_id"])
            else:
                continue
            if target == int(message_id):
                found.append(rec)
        return found

    def followups(self, interaction: InteractionRecord) -> list[dict[str, Any]]:
        return [self.messages[i] for i in interaction.followup_ids if i in self.messages]

    def command(self, name: str, guild_id: int | None = None) -> dict[str, Any] | None:
        """A registered command by name (guild commands when ``guild_id`` is given)."""
        commands = self.guild_commands.get(guild_id, []) if guild_id else self.global_commands
        return next((c for c in commands if c["name"] == name), None)

    @property
    def intents(self) -> int | None:
        """The intents of the latest IDENTIFY (None before any)."""
        return self.identifies[-1].get("intents") if self.identifies else None

    def add_user(self, username: str, *, global_name: str | None = None) -> FakeUser:
        """A new guild member (sent in later GUILD_CREATEs; usable as ``user=`` right away)."""
        user = FakeUser(self.snowflake(), username, global_name=global_name)
        self.users[user.id] = user
        return user

    def _user(self, user: FakeUser | int | None) -> FakeUser:
        if user is None:
            return self.default_user
        if isinstance(user, FakeUser):
            self.users.setdefault(user.id, user)
            return user
        return self.users.setdefault(int(user), FakeUser(int(user), f"user{int(user) % 10000}"))

    # ---------------------------------------------------------------- fault injection

    def fail_next(
        self,
        method: str,
        path_regex: str,
        status: int = 429,
        retry_after: float = 0.5,
        times: int = 1,
        *,
        global_: bool = False,
        when: Literal["before", "after", "held"] = "before",
        where: Callable[[RecordedRequest], bool] | None = None,
    ) -> Fault:
        """Answer the next ``times`` matching requests with ``status`` (429 with Discord's body, or a 5xx).

        ``path_regex`` is searched in the path relative to ``/api/v10`` (e.g. ``r"^/webhooks/"``) or in a CDN
        path (``r"^/attachments/"``). discord.py sleeps ``retry_after`` on a 429 and retries; on 500/502/504
        it sleeps 1 s, 3 s, ... (the webhook adapter retries every 5xx, ``HTTPClient`` not 503). ``where``
        narrows it further to the requests it accepts (``lambda r: bool(r.files)``: uploads only).
        Other statuses (400, 403, ...) get Discord's JSON error body too.  ``when="held"`` (see :class:`Fault`)
        answers normally, only ``retry_after`` seconds late (``status`` unused): e.g. a follow-up that exists
        while the bot still waits for its id.
        """
        fault = Fault(method.upper(), re.compile(path_regex), status, retry_after, times, global_, when, where=where)
        self._faults.append(fault)
        return fault

    def _take_fault(self, method: str, path: str, rec: RecordedRequest) -> Fault | None:
        for fault in self._faults:
            if fault.exhausted or fault.method != method or not fault.pattern.search(path):
                continue
            if fault.where is None or fault.where(rec):
                fault.hits += 1
                return fault
        return None

    # ---------------------------------------------------------------- HTTP plumbing

    def _build_routes(self) -> list[_Route]:
        snow = r"(?P<{}>\d+)"
        table: list[tuple[str, str, Callable[..., Awaitable[_Reply | _ReplyWithHeaders]], bool]] = [
            ("GET", "/gateway", self._get_gateway, False),
            ("GET", "/gateway/bot", self._get_gateway_bot, True),
            ("GET", "/users/@me", self._get_me, True),
            ("GET", f"/users/{snow.format('user_id')}", self._get_user, True),
            ("POST", "/users/@me/channels", self._create_dm, True),
            ("GET", "/oauth2/applications/@me", self._get_application, True),
            ("GET", "/applications/@me", self._get_application, True),
            ("GET", f"/applications/{snow.format('app_id')}/commands", self._get_commands, True),
            ("PUT", f"/applications/{snow.format('app_id')}/commands", self._put_commands, True),
            (
                "GET",
                f"/applications/{snow.format('app_id')}/guilds/{snow.format('guild_id')}/commands",
                self._get_commands,
                True,
            ),
            (
                "PUT",
                f"/applications/{snow.format('app_id')}/guilds/{snow.format('guild_id')}/commands",
                self._put_commands,
                True,
            ),
            (
                "POST",
                f"/interactions/{snow.format('interaction_id')}/(?P<token>[^/]+)/callback",
                self._interaction_callback,
                False,
            ),
            ("POST", f"/webhooks/{snow.format('app_id')}/(?P<token>[^/]+)", self._webhook_execute, False),
            *[
                (
                    method,
                    f"/webhooks/{snow.format('app_id')}/(?P<token>[^/]+)/messages/(?P<message_id>@original|\\d+)",
                    self._webhook_message,
                    False,
                )
                for method in ("GET", "PATCH", "DELETE")
            ],
            ("GET", f"/guilds/{snow.format('guild_id')}", self._get_guild, True),
            ("GET", f"/channels/{snow.format('channel_id')}", self._get_channel, True),
            ("POST", f"/channels/{snow.format('channel_id')}/typing", self._typing, True),
            ("POST", f"/channels/{snow.format('channel_id')}/messages", self._create_channel_message, True),
            ("GET", f"/channels/{snow.format('channel_id')}/messages", self._list_channel_messages, True),
            *[
                (
                    method,
                    f"/channels/{snow.format('channel_id')}/messages/{snow.format('message_id')}",
                    self._channel_message,
                    True,
                )
                for method in ("GET", "PATCH", "DELETE")
            ],
            *[
                (
                    method,
                    f"/channels/{snow.format('channel_id')}/messages/{snow.format('message_id')}"
                    "/reactions/(?P<emoji>[^/]+)/@me",
                    self._own_reaction,
                    True,
                )
                for method in ("PUT", "DELETE")
            ],
        ]
        return [_Route(m, re.compile(f"^{p}$"), h, a) for m, p, h, a in table]

    async def _read_body(self, request: web.Request) -> tuple[Any, list[UploadedFile]]:
        """JSON bodies, or multipart with ``payload_json`` and ``files[n]`` parts (discord.py's uploads)."""
        if request.content_type.startswith("multipart/"):
            payload: Any = None
            files: list[UploadedFile] = []
            reader = await request.multipart()
            while True:
                part = await reader.next()
                if part is None:
                    break
                if not isinstance(part, aiohttp.BodyPartReader):
                    continue
                raw = bytes(await part.read(decode=False))
                if part.filename is not None:
                    content_type = part.headers.get(aiohttp.hdrs.CONTENT_TYPE, "application/octet-stream")
                    files.append(UploadedFile(part.name or "", part.filename, content_type, raw))
                elif part.name == "payload_json":
                    payload = json.loads(raw)
            return payload, files
        raw = await request.read()
        if not raw:
            return None, []
        try:
            return json.loads(raw), []
        except ValueError:
            return raw.decode("utf-8", "replace"), []

    def _respond(
        self, rec: RecordedRequest, status: int, body: Any, headers: Mapping[str, str] | None = None
    ) -> web.Response:
        rec.status = status
        rec.response = body
        all_headers = {
            "Via": "1.1 google",
            **(headers or {}),
        }  # discord.py treats a 429 without Via as a Cloudflare ban
        self._notify()
        if status == 204 or body is None:
            return web.Response(status=status if status != 200 else 204, headers=all_headers)
        # Exactly "application/json": discord.py's json_or_text compares the whole header, so the
        # "; charset=utf-8" aiohttp's json_response adds would hand the bot a str instead of a dict.
        all_headers["Content-Type"] = "application/json"
        return web.Response(body=json.dumps(body).encode(), status=status, headers=all_headers)

    async def _api(self, request: web.Request) -> web.StreamResponse:
        path = request.path[len(API_PREFIX) :] or "/"
        payload, files = await self._read_body(request)
        rec = RecordedRequest(
            method=request.method,
            path=path,
            query=dict(request.query),
            headers={k: v for k, v in request.headers.items() if k.lower() not in {"host", "content-length"}},
            json=payload,
            files=files,
            time=self._loop_time(),
        )
        self.requests.append(rec)

        matched: tuple[_Route, dict[str, str]] | None = None
        path_known = False
        for route in self._routes:
            m = route.pattern.match(path)
            if m is None:
                continue
            path_known = True
            if route.method == request.method:
                matched = (route, m.groupdict())
                break
        if matched is None:
            if path_known:
                return self._respond(rec, *_error(405, "405: Method Not Allowed"))
            return self._respond(rec, *_error(404, "404: Not Found"))

        route, params = matched
        if route.auth and request.headers.get("Authorization") != f"Bot {self.token}":
            return self._respond(rec, *_error(401, "401: Unauthorized"))
        # Discord's own OpenAPI description: a field, type or limit it refuses is a 400 50035 here too.
        refusal = discord_refusal(rec.method, path, rec.query, request.content_type, rec.json, [f.field for f in files])
        if refusal is not None:
            return self._respond(rec, refusal.status, refusal.body)
        fault = self._take_fault(request.method, path, rec)
        if fault is not None and fault.when == "before":
            rec.fault = fault
            return self._respond(rec, *fault.reply())
        headers: Mapping[str, str] | None = None
        try:
            status, body, *extra = await route.handler(rec, **params)
            headers = extra[0] if extra else None
        except (KeyError, TypeError, ValueError, AttributeError):
            # A body the handler could not read is what Discord calls an invalid form body; logged so that a
            # bug in the fake itself does not hide behind the 400.
            _log.exception("fake Discord could not handle %s %s", rec.method, rec.path)
            status, body = _error(400, "Invalid Form Body", 50035)
        if fault is not None and fault.when == "held":
            rec.fault = fault
            self._notify()  # done, not yet answered: what a test waits for before killing the client
            assert self._stopping is not None
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), fault.retry_after)
        elif fault is not None:
            rec.fault = fault
            return self._respond(rec, *fault.reply())
        return self._respond(rec, status, body, headers)

    # ---------------------------------------------------------------- REST: identity and commands

    async def _get_gateway(self, rec: RecordedRequest) -> _Reply:
        return 200, {"url": self.gateway_url}

    async def _get_gateway_bot(self, rec: RecordedRequest) -> _Reply:
        shards = self.recommended_shards or max(1, math.ceil(self.guild_count / 1000))
        return 200, {
            "url": self.gateway_url,
            "shards": shards,
            "session_start_limit": {
                "total": self.session_starts_total,
                "remaining": self.session_starts_remaining,
                "reset_after": 14_400_000,
                "max_concurrency": self.max_concurrency,
            },
        }

    # ---------------------------------------------------------------- guilds and shards

    @property
    def guild_count(self) -> int:
        return 1 + len(self.extra_guilds)

    def all_guild_ids(self) -> list[int]:
        return [self.guild_id, *self.extra_guilds]

    def add_guild(self, shard: tuple[int, int] | None = None) -> tuple[int, int]:
        """One more guild with one text channel: ``(guild_id, channel_id)``; with ``shard=(id, count)`` its id is
        one that shard carries (its timestamp moved on by under ``count`` ms)."""
        guild_id = self.snowflake()
        if shard is not None:
            shard_id, count = shard
            moment = guild_id >> 22
            guild_id = ((moment + (shard_id - moment) % count) << 22) | (guild_id & 0x3FFFFF)
        channel_id = self.snowflake()
        self.extra_guilds[guild_id] = channel_id
        self._channel_guilds[channel_id] = guild_id
        return guild_id, channel_id

    def add_guilds(self, count: int) -> None:
        """Many guilds at once (a popular bot): what sharding is for."""
        for _ in range(count):
            self.add_guild()

    def guild_of_channel(self, channel_id: int) -> int | None:
        """The guild a channel belongs to; ``None`` for a DM channel (or one the fake does not know)."""
        return self._channel_guilds.get(int(channel_id))

    def _guild_payload_of(self, guild_id: int) -> dict[str, Any]:
        """GUILD_CREATE for any of the fake's guilds: the first guild's shape with this guild's ids."""
        guild = self.guild_payload()
        if guild_id == self.guild_id:
            return guild
        channel_id = self.extra_guilds[guild_id]
        channel = {**self.channel_payload(with_guild_id=False), "id": str(channel_id)}
        everyone = {**guild["roles"][0], "id": str(guild_id)}
        return {
            **guild, "id": str(guild_id), "name": f"guild {guild_id}", "system_channel_id": str(channel_id),
            "roles": [everyone, *guild["roles"][1:]], "channels": [channel],
        }  # fmt: skip

    @staticmethod
    def shard_of(guild_id: int | None, shard_count: int) -> int:
        """Discord's rule: ``(guild_id >> 22) % shard_count``; direct messages (no guild) are shard 0's."""
        return 0 if guild_id is None else (guild_id >> 22) % shard_count

    def _carries(self, shard: tuple[int, int] | None, guild_id: int | None) -> bool:
        return shard is None or self.shard_of(guild_id, shard[1]) == shard[0]

    def session_shards(self) -> list[tuple[int, int] | None]:
        """The shards with a current session, in the order they identified."""
        return list(self._shard_sessions)

    def _bot_user_payload(self) -> dict[str, Any]:
        return {**self.bot_user.to_dict(), "verified": True, "mfa_enabled": False, "email": None, "locale": "en-US"}

    async def _get_me(self, rec: RecordedRequest) -> _Reply:
        return 200, self._bot_user_payload()

    async def _get_user(self, rec: RecordedRequest, user_id: str) -> _Reply:
        user = self.users.get(int(user_id))
        return (200, user.to_dict()) if user else _error(404, "Unknown User", 10013)

    def _application_flags(self) -> int:
        # The *_LIMITED flags an unverified app gets when the privileged intent toggle is on.
        flags = 0
        if self.allowed_privileged_intents & INTENT_GUILD_PRESENCES:
            flags |= 1 << 13
        if self.allowed_privileged_intents & INTENT_GUILD_MEMBERS:
            flags |= 1 << 15
        if self.allowed_privileged_intents & INTENT_MESSAGE_CONTENT:
            flags |= 1 << 19
        return flags

    async def _get_application(self, rec: RecordedRequest) -> _Reply:
        return 200, {
            "id": str(self.application_id),
            "name": self.bot_user.username,
            "icon": None,
            "description": "",
            "summary": "",
            "type": None,
            "bot_public": True,
            "bot_require_code_grant": False,
            "verify_key": secrets.token_hex(32),
            "flags": self._application_flags(),
            "owner": self.owner.to_dict(),
            "team": None,
            "bot": self.bot_user.to_dict(),
            "redirect_uris": [],
            "interactions_endpoint_url": None,  # a URL here would make discord.py warn: no gateway interactions
            "tags": [],
            "integration_types_config": {"0": {}},
        }

    async def _get_commands(self, rec: RecordedRequest, app_id: str, guild_id: str | None = None) -> _Reply:
        if int(app_id) != self.application_id:
            return _error(403, "Missing Access", 50001)
        return 200, self.guild_commands.get(int(guild_id), []) if guild_id else self.global_commands

    def _validate_command(self, cmd: Any) -> str | None:
        """The checks Discord makes on a bulk overwrite that a bot author can trip over."""
        if not isinstance(cmd, dict) or not isinstance(cmd.get("name"), str):
            return "command without a name"
        name = cmd["name"]
        ctype = cmd.get("type", 1)
        if ctype == 1 and (not _COMMAND_NAME.match(name) or name != name.lower()):
            return f"invalid command name {name!r}"
        if ctype == 1 and not 1 <= len(cmd.get("description") or "") <= 100:
            return f"command {name!r}: description must be 1-100 characters"
        return self._validate_options(name, cmd.get("options") or [])

    def _validate_options(self, where: str, options: list[dict[str, Any]]) -> str | None:
        if len(options) > 25:
            return f"{where}: more than 25 options"
        seen_optional = False
        names: set[str] = set()
        for opt in options:
            name = opt.get("name", "")
            if not _COMMAND_NAME.match(name) or name != name.lower():
                return f"{where}: invalid option name {name!r}"
            if name in names:  # Discord: APPLICATION_COMMAND_OPTIONS_NAME_ALREADY_EXISTS
                return f"{where}.{name}: option names must be unique"
            names.add(name)
            for low, high in (("min_value", "max_value"), ("min_length", "max_length")):
                if opt.get(low) is not None and opt.get(high) is not None and opt[low] > opt[high]:
                    return f"{where}.{name}: {low} must be less than or equal to {high}"
            choice_values = [choice.get("value") for choice in opt.get("choices") or []]
            if len(set(map(repr, choice_values))) != len(choice_values):
                return f"{where}.{name}: choice values must be unique"
            if not 1 <= len(opt.get("description") or "") <= 100:
                return f"{where}.{name}: description must be 1-100 characters"
            if len(opt.get("choices") or []) > 25:
                return f"{where}.{name}: more than 25 choices"
            if opt.get("choices") and opt.get("autocomplete"):
                return f"{where}.{name}: autocomplete and choices are exclusive"
            if opt.get("type") in (_OPT_SUB_COMMAND, _OPT_SUB_COMMAND_GROUP):
                problem = self._validate_options(f"{where}.{name}", opt.get("options") or [])
                if problem:
                    return problem
                continue
            if opt.get("required"):
                if seen_optional:
                    return f"{where}.{name}: required options must be placed before non-required options"
            else:
                seen_optional = True
        return None

    async def _put_commands(self, rec: RecordedRequest, app_id: str, guild_id: str | None = None) -> _Reply:
        if int(app_id) != self.application_id:
            return _error(403, "Missing Access", 50001)
        if not isinstance(rec.json, list):
            return _error(400, "Invalid Form Body", 50035)
        for cmd in rec.json:
            problem = self._validate_command(cmd)
            if problem:
                return _error(400, "Invalid Form Body", 50035, errors={"_errors": [{"message": problem}]})
        gid = int(guild_id) if guild_id else None
        stored = []
        for cmd in rec.json:
            key = (gid, cmd["name"])
            cmd_id = self._command_ids.setdefault(key, self.snowflake())  # Discord keeps ids across overwrites
            obj = {
                "id": str(cmd_id),
                "application_id": str(self.application_id),
                "version": str(self.snowflake()),
                "type": cmd.get("type", 1),
                "name": cmd["name"],
                "description": cmd.get("description", ""),
                "options": cmd.get("options") or [],
                "default_member_permissions": cmd.get("default_member_permissions"),
                "nsfw": cmd.get("nsfw", False),
                "contexts": cmd.get("contexts"),
                "integration_types": cmd.get("integration_types", [0]),
                "name_localizations": cmd.get("name_localizations"),
                "description_localizations": cmd.get("description_localizations"),
            }
            if gid:
                obj["guild_id"] = str(gid)
            else:
                obj["dm_permission"] = cmd.get("dm_permission", True)
            stored.append(obj)
        if gid:
            self.guild_commands[gid] = stored
        else:
            self.global_commands = stored
        return 200, stored

    # ---------------------------------------------------------------- REST: guild and channel

    def _role(self, role_id: int, name: str, permissions: int, position: int, *, bot_id: int | None = None) -> dict:
        role: dict[str, Any] = {
            "id": str(role_id),
            "name": name,
            "permissions": str(permissions),
            "position": position,
            "color": 0,
            "colors": {"primary_color": 0, "secondary_color": None, "tertiary_color": None},
            "hoist": False,
            "managed": bot_id is not None,
            "mentionable": False,
            "icon": None,
            "unicode_emoji": None,
            "flags": 0,
        }
        if bot_id is not None:
            role["tags"] = {"bot_id": str(bot_id)}
        return role

    def channel_payload(self, *, with_guild_id: bool = True, permissions: int | None = None) -> dict[str, Any]:
        """The guild text channel object (type 0)."""
        channel: dict[str, Any] = {
            "id": str(self.channel_id),
            "type": 0,
            "name": self.channel_name,
            "position": 0,
            "parent_id": None,
            "topic": None,
            "nsfw": False,
            "rate_limit_per_user": 0,
            "last_message_id": None,
            "permission_overwrites": [],
            "flags": 0,
            "default_auto_archive_duration": 1440,
        }
        if with_guild_id:
            channel["guild_id"] = str(self.guild_id)
        if permissions is not None:
            channel["permissions"] = str(permissions)
        return channel

    def member_payload(self, user: FakeUser, *, with_user: bool = True, permissions: int | None = None) -> dict:
        """A guild member object (``flags`` and ``roles`` are required by discord.py's Member)."""
        member: dict[str, Any] = {
            "roles": [str(self.bot_role_id)] if user.id == self.bot_user.id else [],
            "nick": None,
            "avatar": None,
            "banner": None,
            "joined_at": "2025-01-01T00:00:00+00:00",
            "premium_since": None,
            "deaf": False,
            "mute": False,
            "flags": 0,
            "pending": False,
            "communication_disabled_until": None,
        }
        if with_user:
            member["user"] = user.to_dict()
        if permissions is not None:
            member["permissions"] = str(permissions)
        return member

    def guild_payload(self) -> dict[str, Any]:
        """The GUILD_CREATE object: what discord.py's ``Guild._from_data`` and ``parse_guild_create`` read.

        Like Discord without the presence intent, ``members`` holds only the bot itself while ``member_count``
        counts everyone: a client with the members intent then chunks (op 8 → GUILD_MEMBERS_CHUNK).
        """
        members = [self.member_payload(self.bot_user)]
        return {
            "id": str(self.guild_id),
            "name": self.guild_name,
            "icon": None,
            "splash": None,
            "discovery_splash": None,
            "banner": None,
            "description": None,
            "owner_id": str(self.owner.id),
            "region": None,
            "afk_channel_id": None,
            "afk_timeout": 300,
            "verification_level": 0,
            "default_message_notifications": 1,
            "explicit_content_filter": 0,
            "mfa_level": 0,
            "nsfw_level": 0,
            "premium_tier": 0,
            "premium_subscription_count": 0,
            "premium_progress_bar_enabled": False,
            "preferred_locale": "en-US",
            "system_channel_id": str(self.channel_id),
            "system_channel_flags": 0,
            "rules_channel_id": None,
            "public_updates_channel_id": None,
            "safety_alerts_channel_id": None,
            "vanity_url_code": None,
            "max_members": 500_000,
            "max_video_channel_users": 25,
            "max_stage_video_channel_users": 50,
            "widget_enabled": False,
            "application_id": None,
            "incidents_data": None,
            "features": [],
            "roles": [
                self._role(self.guild_id, "@everyone", EVERYONE_PERMISSIONS, 0),
                self._role(self.bot_role_id, self.bot_user.username, self.app_permissions, 1, bot_id=self.bot_user.id),
            ],
            "emojis": [],
            "stickers": [],
            # GUILD_CREATE-only fields:
            "joined_at": "2025-01-01T00:00:00+00:00",
            "large": False,
            "unavailable": False,
            "lazy": True,
            "member_count": len(self.users),
            "members": members,
            "channels": [self.channel_payload(with_guild_id=False)],
            "threads": [],
            "presences": [],
            "voice_states": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "soundboard_sounds": [],
            "embedded_activities": [],
            "activity_instances": [],
        }

    async def _get_guild(self, rec: RecordedRequest, guild_id: str) -> _Reply:
        if int(guild_id) != self.guild_id:
            return _error(404, "Unknown Guild", 10004)
        guild = self.guild_payload()
        for key in ("joined_at", "large", "unavailable", "lazy", "member_count", "members", "channels", "threads"):
            guild.pop(key, None)
        return 200, guild

    async def _get_channel(self, rec: RecordedRequest, channel_id: str) -> _Reply:
        if int(channel_id) in self.dm_channels.values():
            return 200, self._dm_payload(int(channel_id))
        guild_id = self.guild_of_channel(int(channel_id))
        if guild_id is None:
            return _error(404, "Unknown Channel", 10003)
        channel = {**self.channel_payload(), "id": channel_id, "guild_id": str(guild_id)}
        return self._refuse_without(0) or (200, channel)

    async def _typing(self, rec: RecordedRequest, channel_id: str) -> _Reply:
        if int(channel_id) in self.dm_channels.values():
            return 204, None
        if int(channel_id) != self.channel_id:
            return _error(404, "Unknown Channel", 10003)
        return self._refuse_without(_P_SEND_MESSAGES) or (204, None)

    def _refuse_without(self, needed: int) -> _Reply | None:
        """Discord's answer when the bot's permissions in the guild channel lack ``needed`` (VIEW_CHANNEL always).

        Without VIEW_CHANNEL (or READ_MESSAGE_HISTORY where it is needed) the channel is out of the bot's
        reach: 50001 Missing Access; with it, any other missing permission is 50013 Missing Permissions.
        ADMINISTRATOR grants everything, as on Discord.
        """
        granted = self.app_permissions
        if granted & _P_ADMINISTRATOR:
            return None
        if not granted & _P_VIEW_CHANNEL or (needed & _P_READ_HISTORY and not granted & _P_READ_HISTORY):
            return _error(403, "Missing Access", 50001)
        if needed & ~granted:
            return _error(403, "Missing Permissions", 50013)
        return None

    # ---------------------------------------------------------------- direct messages

    def _dm_payload(self, dm_channel_id: int) -> dict[str, Any]:
        user_id = next(user for user, channel in self.dm_channels.items() if channel == dm_channel_id)
        return {
            "id": str(dm_channel_id),
            "type": 1,
            "last_message_id": None,
            "flags": 0,
            "recipients": [self.users[user_id].to_dict()],
        }

    async def _create_dm(self, rec: RecordedRequest) -> _Reply:
        """``POST /users/@me/channels``: the bot's DM channel with a user (the same one every time)."""
        body = rec.json if isinstance(rec.json, dict) else {}
        recipient = body.get("recipient_id")
        if recipient is None:
            return _invalid_form(["recipient_id"], "BASE_TYPE_REQUIRED", "This field is required")
        user = self.users.get(int(recipient))
        if user is None or user.bot:
            return _error(400, "Invalid Recipient(s)", 50033)
        channel_id = self.dm_channels.setdefault(user.id, self.snowflake())
        return 200, self._dm_payload(channel_id)

    def dm_messages(self, user: FakeUser | int) -> list[dict[str, Any]]:
        """What the bot sent a user in direct messages, oldest first."""
        user_id = user.id if isinstance(user, FakeUser) else int(user)
        channel_id = self.dm_channels.get(user_id)
        return [] if channel_id is None else self.channel_messages(channel_id)

    # ---------------------------------------------------------------- what Discord checks in a message body

    def _check_message_body(self, payload: Any, files: list[UploadedFile], path: list[str | int]) -> _Reply | None:
        """Content, embeds, attachments and components of a new message (``path``: where the body sits)."""
        if payload is None:
            payload = {}
        if not isinstance(payload, dict):
            return _invalid_form(path, "MODEL_TYPE_CONVERT", "Only dictionaries may be used in a ModelType")
        content = payload.get("content")
        if content is not None and not isinstance(content, str):
            return _invalid_form([*path, "content"], "BASE_TYPE_STRING", "Must be a string.")
        if isinstance(content, str) and len(content) > CONTENT_MAX:
            return _invalid_form(
                [*path, "content"], "BASE_TYPE_MAX_LENGTH", f"Must be {CONTENT_MAX} or fewer in length."
            )
        embeds = payload.get("embeds")
        if embeds is not None and (not isinstance(embeds, list) or len(embeds) > EDIT_MAX_EMBEDS):
            return _invalid_form(
                [*path, "embeds"], "BASE_TYPE_MAX_LENGTH", f"Must be {EDIT_MAX_EMBEDS} or fewer in length."
            )
        attachments = payload.get("attachments")
        if attachments is not None and not isinstance(attachments, list):
            return _invalid_form([*path, "attachments"], "BASE_TYPE_LIST", "Must be an array.")
        if len(attachments or []) > EDIT_MAX_ATTACHMENTS or len(files) > EDIT_MAX_ATTACHMENTS:
            return _invalid_form(
                [*path, "attachments"], "BASE_TYPE_MAX_LENGTH", f"Must be {EDIT_MAX_ATTACHMENTS} or fewer in length."
            )
        return _check_components(payload.get("components"), int(payload.get("flags") or 0), [*path, "components"])

    # ---------------------------------------------------------------- messages and attachments

    def _attachment_url(self, att: StoredAttachment) -> str:
        ex = f"{int(att.expires_at):x}"
        issued = f"{int(att.expires_at - self.attachment_ttl):x}"
        hm = hmac.new(self._secret, f"{att.id}:{ex}".encode(), hashlib.sha256).hexdigest()
        return f"{self.base_url}/attachments/{att.channel_id}/{att.id}/{att.filename}?ex={ex}&is={issued}&hm={hm}&"

    def store_attachment(self, channel_id: int, filename: str, data: bytes, content_type: str | None = None) -> dict:
        """Keep bytes behind a signed, expiring CDN URL; return the attachment object Discord would send."""
        ctype = content_type or mimetypes.guess_type(filename)[0] or "application/octet-stream"
        att = StoredAttachment(
            self.snowflake(), channel_id, filename, ctype, bytes(data), time.time() + self.attachment_ttl
        )
        self.attachments[att.id] = att
        url = self._attachment_url(att)
        obj: dict[str, Any] = {
            "id": str(att.id),
            "filename": filename,
            "size": att.size,
            "url": url,
            "proxy_url": url,
            "content_type": ctype,
        }
        size = _image_size(data) if ctype.startswith("image/") else None
        if size:
            obj["width"], obj["height"] = size
        return obj

    async def _cdn(self, request: web.Request) -> web.StreamResponse:
        rec = RecordedRequest(
            "GET", request.path, dict(request.query), dict(request.headers), None, [], self._loop_time()
        )
        self.requests.append(rec)
        fault = self._take_fault("GET", request.path, rec)
        if fault is not None:
            rec.fault = fault
            return self._respond(rec, *fault.reply())
        try:
            att = self.attachments[int(request.match_info["attachment_id"])]
        except (KeyError, ValueError):
            return self._respond_text(rec, 404, "Not Found")
        ex = request.query.get("ex", "")
        expected = hmac.new(self._secret, f"{att.id}:{ex}".encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, request.query.get("hm", "")):
            return self._respond_text(rec, 404, "This content is no longer available.")
        if time.time() > int(ex, 16):
            return self._respond_text(rec, 404, "This content is no longer available.")
        rec.status = 200
        self._notify()
        return web.Response(body=att.data, content_type=att.content_type)

    def _respond_text(self, rec: RecordedRequest, status: int, text: str) -> web.Response:
        rec.status, rec.response = status, text
        self._notify()
        return web.Response(status=status, text=text)

    def _check_upload(self, files: list[UploadedFile]) -> _Reply | None:
        """Discord's size limits: each file (``upload_limit``) and the request's files together."""
        if any(len(f.data) > self.upload_limit for f in files):
            return _error(413, "Request entity too large", 40005)
        if sum(len(f.data) for f in files) > self.request_upload_limit:
            return _error(413, "Request entity too large", 40005)
        if len(files) > EDIT_MAX_ATTACHMENTS:
            return _invalid_form(
                ["attachments"], "BASE_TYPE_MAX_LENGTH", f"Must be {EDIT_MAX_ATTACHMENTS} or fewer in length."
            )
        return None

    def _new_attachments(
        self, channel_id: int, payload: Mapping[str, Any], files: list[UploadedFile], existing: list[dict]
    ) -> list[dict[str, Any]]:
        """Resolve ``attachments`` like Discord: new files by index (``files[n]``), kept ones by their id."""
        by_index: dict[str, UploadedFile] = {}
        for n, f in enumerate(files):
            m = re.match(r"^files\[(\d+)\]$", f.field)
            by_index[m.group(1) if m else str(n)] = f
        if "attachments" not in payload:
            uploaded = [self.store_attachment(channel_id, f.filename, f.data) for f in files]
            return existing + uploaded
        result: list[dict[str, Any]] = []
        old = {a["id"]: a for a in existing}
        for entry in payload.get("attachments") or []:
            key = str(entry.get("id"))
            if key in by_index:
                f = by_index.pop(key)
                obj = self.store_attachment(channel_id, entry.get("filename") or f.filename, f.data)
                if entry.get("description"):
                    obj["description"] = entry["description"]
                result.append(obj)
            elif key in old:
                result.append(old[key])
        return result

    def _message(
        self,
        *,
        channel_id: int,
        payload: Mapping[str, Any],
        files: list[UploadedFile],
        message_type: int = 0,
        flags: int = 0,
        interaction: InteractionRecord | None = None,
    ) -> dict[str, Any]:
        """Create and store a message object in the v10 REST shape (what discord.py's Message parses)."""
        mid = self.snowflake()
        msg: dict[str, Any] = {
            "id": str(mid),
            "channel_id": str(channel_id),
            "type": message_type,
            "content": payload.get("content") or "",
            "author": self.bot_user.to_dict(),
            "timestamp": _now_iso(),
            "edited_timestamp": None,
            "tts": bool(payload.get("tts")),
            "mention_everyone": False,
            "mentions": [],
            "mention_roles": [],
            "attachments": self._new_attachments(channel_id, payload, files, []),
            "embeds": payload.get("embeds") or [],
            "components": _with_component_ids(payload.get("components") or []),
            "pinned": False,
            "flags": flags,
        }
        if payload.get("nonce") is not None:
            msg["nonce"] = payload["nonce"]
        if payload.get("message_reference"):
            msg["message_reference"] = payload["message_reference"]
            msg["type"] = 19
        if interaction is not None:
            msg["webhook_id"] = str(self.application_id)
            msg["application_id"] = str(self.application_id)
            meta: dict[str, Any] = {
                "id": str(interaction.id),
                "type": interaction.type,
                "user": interaction.user.to_dict(),
                "authorizing_integration_owners": {"0": str(self.guild_id)},
            }
            if interaction.type == INTERACTION_APPLICATION_COMMAND:
                meta["name"] = interaction.payload["data"]["name"]
                meta["command_type"] = interaction.payload["data"].get("type", 1)
            if interaction.original_message_id is not None:
                meta["original_response_message_id"] = str(interaction.original_message_id)
            if interaction.message_id is not None:
                meta["interacted_message_id"] = str(interaction.message_id)
            msg["interaction_metadata"] = meta
        self.messages[mid] = msg
        return msg

    def _apply_edit(self, msg: dict[str, Any], payload: Mapping[str, Any], files: list[UploadedFile]) -> None:
        channel_id = int(msg["channel_id"])
        if "content" in payload:
            msg["content"] = payload["content"] or ""
        if "embeds" in payload:
            msg["embeds"] = payload["embeds"] or []
        if "components" in payload:
            msg["components"] = _with_component_ids(payload["components"] or [])
        if "flags" in payload and payload["flags"] is not None:
            keep = msg["flags"] & ~FLAG_SUPPRESS_EMBEDS & ~FLAG_LOADING
            msg["flags"] = keep | (int(payload["flags"]) & FLAG_SUPPRESS_EMBEDS)
        if files or "attachments" in payload:
            msg["attachments"] = self._new_attachments(channel_id, payload, files, msg["attachments"])
        msg["flags"] &= ~FLAG_LOADING
        msg["edited_timestamp"] = _now_iso()

    def _gateway_message(self, msg: dict[str, Any]) -> dict[str, Any]:
        data = {**msg, "guild_id": str(self.guild_of_channel(int(msg["channel_id"])) or self.guild_id)}
        if "webhook_id" not in msg:
            data["member"] = self.member_payload(self.bot_user, with_user=False)
        return data

    async def _announce(self, event: Literal["MESSAGE_CREATE", "MESSAGE_UPDATE"], msg: dict[str, Any]) -> None:
        """What Discord sends to a bot with the GUILD_MESSAGES intent when its messages change."""
        if self.dispatch_message_events and not msg["flags"] & FLAG_EPHEMERAL and self._session is not None:
            await self.dispatch(event, self._gateway_message(msg))

    async def _create_channel_message(self, rec: RecordedRequest, channel_id: str) -> _Reply:
        direct = int(channel_id) in self.dm_channels.values()
        if self.guild_of_channel(int(channel_id)) is None and not direct:
            return _error(404, "Unknown Channel", 10003)
        if direct:
            recipient = next(user for user, channel in self.dm_channels.items() if channel == int(channel_id))
            if recipient in self.closed_dms:
                return _error(403, "Cannot send messages to this user", 50007)
        else:
            problem = self._refuse_without(_P_SEND_MESSAGES | (_P_ATTACH_FILES if rec.files else 0))
            if problem:
                return problem
        payload = rec.json if isinstance(rec.json, dict) else {}
        problem = self._check_upload(rec.files) or self._check_message_body(rec.json, rec.files, [])
        if problem:
            return problem
        if (
            not any(payload.get(k) for k in ("content", "embeds", "components", "sticker_ids", "poll"))
            and not rec.files
        ):
            return _error(400, "Cannot send an empty message", 50006)
        nonce = payload.get("nonce")
        if nonce is not None and payload.get("enforce_nonce"):
            seen = self._nonces.get((int(channel_id), str(nonce)))
            if seen and rec.time - seen[0] <= self.nonce_window and seen[1] in self.messages:
                return 200, self.messages[seen[1]]
        flags = int(payload.get("flags") or 0) & (
            FLAG_SUPPRESS_EMBEDS | FLAG_SUPPRESS_NOTIFICATIONS | FLAG_IS_COMPONENTS_V2
        )
        msg = self._message(channel_id=int(channel_id), payload=payload, files=rec.files, flags=flags)
        if nonce is not None and payload.get("enforce_nonce"):
            self._nonces[(int(channel_id), str(nonce))] = (rec.time, int(msg["id"]))
        if not direct:  # DM events (the DIRECT_MESSAGES intent) are not modelled
            await self._announce("MESSAGE_CREATE", msg)
        return 200, msg

    async def _list_channel_messages(self, rec: RecordedRequest, channel_id: str) -> _Reply:
        """``GET /channels/{id}/messages`` as Discord answers it (see the module docstring)."""
        direct = int(channel_id) in self.dm_channels.values()
        if self.guild_of_channel(int(channel_id)) is None and not direct:
            return _error(404, "Unknown Channel", 10003)
        if not direct:
            problem = self._refuse_without(0)
            if problem:
                return problem
        anchors = [name for name in ("around", "before", "after") if name in rec.query]
        if len(anchors) > 1:
            return _invalid_form([anchors[1]], "BASE_TYPE_BAD", "around, before and after are mutually exclusive")
        limit = int(rec.query.get("limit", 50))
        if not 1 <= limit <= 100:
            return _invalid_form(["limit"], "NUMBER_TYPE_MAX", "Must be between 1 and 100.")
        if not direct and not self._can_read_history():
            return 200, []  # Discord: "no messages will be returned" without READ_MESSAGE_HISTORY
        listed = sorted(
            (m for m in self.messages.values() if m["channel_id"] == channel_id and not m["flags"] & FLAG_EPHEMERAL),
            key=lambda m: int(m["id"]),
        )
        if "after" in rec.query:
            chosen = [m for m in listed if int(m["id"]) > int(rec.query["after"])][:limit]
        elif "before" in rec.query:
            chosen = [m for m in listed if int(m["id"]) < int(rec.query["before"])][-limit:]
        elif "around" in rec.query:
            around = int(rec.query["around"])
            older = [m for m in listed if int(m["id"]) < around][-(limit // 2) :] if limit // 2 else []
            chosen = older + [m for m in listed if int(m["id"]) >= around][: limit - len(older)]
        else:
            chosen = listed[-limit:]
        return 200, list(reversed(chosen))

    def _can_read_history(self) -> bool:
        granted = self.app_permissions
        return bool(granted & _P_ADMINISTRATOR or granted & _P_READ_HISTORY)

    async def _channel_message(self, rec: RecordedRequest, channel_id: str, message_id: str) -> _Reply:
        msg = self.messages.get(int(message_id))
        if msg is None or msg["channel_id"] != channel_id or msg["flags"] & FLAG_EPHEMERAL:
            return _error(404, "Unknown Message", 10008)
        if self.guild_of_channel(int(channel_id)) is not None:
            needed = {"GET": _P_READ_HISTORY, "PATCH": _P_ATTACH_FILES if rec.files else 0}.get(rec.method, 0)
            problem = self._refuse_without(needed)
            if problem:
                return problem
        if rec.method == "GET":
            return 200, msg
        if msg["author"]["id"] != str(self.bot_user.id):
            return _error(403, "Cannot edit a message authored by another user", 50005)
        if rec.method == "DELETE":
            self._delete_message(int(message_id))
            return 204, None
        problem = self._check_upload(rec.files) or self._check_edit(msg, rec, CHANNEL_EDIT_CONTENT_MAX)
        if problem:
            return problem
        self._apply_edit(msg, rec.json if isinstance(rec.json, dict) else {}, rec.files)
        await self._announce("MESSAGE_UPDATE", msg)
        return 200, msg

    def _check_edit(self, msg: dict[str, Any], rec: RecordedRequest, content_max: int) -> _Reply | None:
        """What Discord checks in a message edit body before changing anything (see the module docstring)."""
        payload = rec.json
        if payload is None:
            payload = {}
        if not isinstance(payload, dict):
            return _invalid_form([], "MODEL_TYPE_CONVERT", "Only dictionaries may be used in a ModelType")
        content = payload.get("content")
        if content is not None and not isinstance(content, str):
            return _invalid_form(["content"], "BASE_TYPE_STRING", "Must be a string.")
        if isinstance(content, str) and len(content) > content_max:
            return _invalid_form(["content"], "BASE_TYPE_MAX_LENGTH", f"Must be {content_max} or fewer in length.")
        for key, most in (("embeds", EDIT_MAX_EMBEDS), ("components", EDIT_MAX_COMPONENTS)):
            value = payload.get(key)
            if value is not None and (not isinstance(value, list) or len(value) > most):
                return _invalid_form([key], "BASE_TYPE_MAX_LENGTH", f"Must be {most} or fewer in length.")
        flags = payload.get("flags") if payload.get("flags") is not None else msg.get("flags") or 0
        problem = _check_components(payload.get("components"), int(flags), ["components"])
        if problem:
            return problem
        indices = {m.group(1) for f in rec.files if (m := re.match(r"^files\[(\d+)\]$", f.field))}
        attachments = payload.get("attachments")
        kept = len(msg.get("attachments") or []) + len(rec.files)
        if attachments is not None:
            if not isinstance(attachments, list):
                return _invalid_form(["attachments"], "BASE_TYPE_LIST", "Must be an array.")
            if len(attachments) > EDIT_MAX_ATTACHMENTS:
                return _invalid_form(
                    ["attachments"], "BASE_TYPE_MAX_LENGTH", f"Must be {EDIT_MAX_ATTACHMENTS} or fewer in length."
                )
            existing = {str(a["id"]) for a in msg.get("attachments") or []}
            for n, entry in enumerate(attachments):
                if not isinstance(entry, dict) or entry.get("id") is None:
                    return _invalid_form(["attachments", n, "id"], "BASE_TYPE_REQUIRED", "This field is required")
                key = str(entry["id"])
                if key not in indices and key not in existing:
                    return _invalid_form(
                        ["attachments", n, "id"], "ATTACHMENT_NOT_FOUND", f"Unknown attachment id {key}"
                    )
                filename = entry.get("filename")
                if filename is not None and not 1 <= len(str(filename)) <= ATTACHMENT_FILENAME_MAX:
                    return _invalid_form(
                        ["attachments", n, "filename"], "BASE_TYPE_BAD_LENGTH",
                        f"Must be between 1 and {ATTACHMENT_FILENAME_MAX} in length.",
                    )  # fmt: skip
                description = entry.get("description")
                if description is not None and len(str(description)) > ATTACHMENT_DESCRIPTION_MAX:
                    return _invalid_form(
                        ["attachments", n, "description"], "BASE_TYPE_MAX_LENGTH",
                        f"Must be {ATTACHMENT_DESCRIPTION_MAX} or fewer in length.",
                    )  # fmt: skip
            kept = len(attachments)
        elif len(msg.get("attachments") or []) + len(rec.files) > EDIT_MAX_ATTACHMENTS:
            return _invalid_form(
                ["attachments"], "BASE_TYPE_MAX_LENGTH", f"Must be {EDIT_MAX_ATTACHMENTS} or fewer in length."
            )
        after = {key: payload[key] if key in payload else msg.get(key) for key in ("content", "embeds", "components")}
        if not any(after.values()) and not kept and not msg.get("sticker_items"):
            return _error(400, "Cannot send an empty message", 50006)
        return None

    def _delete_message(self, message_id: int) -> None:
        self.messages.pop(message_id, None)
        self.deleted_message_ids.add(message_id)

    async def _own_reaction(
        self, rec: RecordedRequest, channel_id: str, message_id: str, emoji: str
    ) -> _Reply | _ReplyWithHeaders:
        msg = self.messages.get(int(message_id))
        if msg is None or msg["channel_id"] != channel_id:
            return _error(404, "Unknown Message", 10008)
        if int(channel_id) == self.channel_id:
            problem = self._refuse_without(_P_READ_HISTORY | (_P_ADD_REACTIONS if rec.method == "PUT" else 0))
            if problem:
                return problem
        if _CUSTOM_EMOJI.match(emoji) is None and not emoji.strip():
            return _error(400, "Unknown Emoji", 10014)
        # Discord's reaction bucket: one reaction change per channel every 0.25 s; the answer says so, and a
        # reaction sooner than that is refused with 429 (discord.py reads both and waits).
        bucket = f"reactions:{channel_id}"
        allowed_at = self._next_reaction_at.get(int(channel_id), -math.inf)
        if rec.time < allowed_at:
            return _rate_limited(round(allowed_at - rec.time, 3), bucket, limit=1)
        self._next_reaction_at[int(channel_id)] = rec.time + self.reaction_interval
        headers = {
            "X-RateLimit-Limit": "1",
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": f"{time.time() + self.reaction_interval:.3f}",
            "X-RateLimit-Reset-After": f"{self.reaction_interval:.3f}",
            "X-RateLimit-Bucket": hashlib.md5(bucket.encode(), usedforsecurity=False).hexdigest(),
        }
        key = (int(message_id), emoji)
        if rec.method == "PUT" and key not in self.bot_reactions:
            self.bot_reactions.append(key)
            _count_reaction(msg, _emoji_payload(emoji), +1, me=True)
        elif rec.method == "DELETE" and key in self.bot_reactions:
            self.bot_reactions.remove(key)
            _count_reaction(msg, _emoji_payload(emoji), -1, me=True)
        return 204, None, headers

    # ---------------------------------------------------------------- interactions: callbacks and webhooks

    async def _interaction_callback(self, rec: RecordedRequest, interaction_id: str, token: str) -> _Reply:
        it = self._interactions_by_token.get(token)
        if it is None or it.id != int(interaction_id):
            return _error(404, "Unknown interaction", 10062)
        body = rec.json if isinstance(rec.json, dict) else {}
        ctype = int(body.get("type") or 0)
        data = body.get("data") or {}
        cb = CallbackRecord(ctype, data, rec.time - it.dispatched_at, 0, rec.files)
        it.callbacks.append(cb)
        if it.acknowledged:
            cb.status = 400
            return _error(400, "Interaction has already been acknowledged.", 40060)
        if cb.elapsed > self.ack_deadline:
            cb.status = 404
            return _error(404, "Unknown interaction", 10062)
        if ctype not in _ALLOWED_CALLBACKS.get(it.type, frozenset()):
            cb.status = 400
            return _error(400, "Interaction response type not allowed for this interaction", 50035)
        problem = self._check_upload(rec.files)
        if problem is None and ctype in (CALLBACK_MESSAGE, CALLBACK_UPDATE_MESSAGE):
            problem = self._check_message_body(data, rec.files, ["data"])
        if problem is None and ctype == CALLBACK_AUTOCOMPLETE_RESULT:
            problem = _check_autocomplete(data)
        if problem:
            cb.status = problem[0]
            return problem
        cb.status = 200 if rec.query.get("with_response") in ("1", "true", "True") else 204

        message: dict[str, Any] | None = None
        command_type = 20 if it.type == INTERACTION_APPLICATION_COMMAND else 0
        if ctype == CALLBACK_MESSAGE:
            flags = int(data.get("flags") or 0) & _SETTABLE_FLAGS
            message = self._message(
                channel_id=it.channel_id,
                payload=data,
                files=rec.files,
                message_type=command_type,
                flags=flags,
                interaction=it,
            )
            it.original_message_id = int(message["id"])
            await self._announce("MESSAGE_CREATE", message)
        elif ctype == CALLBACK_DEFERRED_MESSAGE:
            flags = FLAG_LOADING | (int(data.get("flags") or 0) & FLAG_EPHEMERAL)
            message = self._message(
                channel_id=it.channel_id, payload={}, files=[], message_type=command_type, flags=flags, interaction=it
            )
            it.original_message_id = int(message["id"])
            it.awaiting_first_followup = True
            await self._announce("MESSAGE_CREATE", message)
        elif ctype in (CALLBACK_DEFERRED_UPDATE, CALLBACK_UPDATE_MESSAGE) and it.message_id is not None:
            it.original_message_id = it.message_id
            message = self.messages.get(it.message_id)
            if ctype == CALLBACK_UPDATE_MESSAGE and message is not None:
                self._apply_edit(message, data, rec.files)
                await self._announce("MESSAGE_UPDATE", message)
        if cb.status == 204:
            return 204, None
        response: dict[str, Any] = {
            "interaction": {
                "id": str(it.id),
                "type": it.type,
                "response_message_loading": ctype == CALLBACK_DEFERRED_MESSAGE,
                "response_message_ephemeral": bool(message and message["flags"] & FLAG_EPHEMERAL),
            },
            "resource": {"type": ctype},
        }
        if message is not None:
            response["interaction"]["response_message_id"] = message["id"]
            response["resource"]["message"] = message
        return 200, response

    def _webhook_interaction(self, app_id: str, token: str) -> InteractionRecord | _Reply:
        it = self._interactions_by_token.get(token)
        if it is None or int(app_id) != self.application_id:
            return _error(404, "Unknown Webhook", 10015)
        if self._loop_time() - it.dispatched_at > self.token_ttl:
            return _error(401, "Invalid Webhook Token", 50027)
        if not it.acknowledged:
            return _error(404, "Unknown Webhook", 10015)
        return it

    async def _webhook_execute(self, rec: RecordedRequest, app_id: str, token: str) -> _Reply:
        found = self._webhook_interaction(app_id, token)
        if not isinstance(found, InteractionRecord):
            return found
        it = found
        payload = rec.json if isinstance(rec.json, dict) else {}
        problem = self._check_upload(rec.files) or self._check_message_body(rec.json, rec.files, [])
        if problem:
            return problem
        if not any(payload.get(k) for k in ("content", "embeds", "components", "poll")) and not rec.files:
            return _error(400, "Cannot send an empty message", 50006)
        if it.awaiting_first_followup and it.original_message_id in self.messages:
            # The first follow-up after a deferral replaces the "thinking" message, keeping its ephemeral flag.
            msg = self.messages[it.original_message_id]
            self._apply_edit(msg, payload, rec.files)
            msg["edited_timestamp"] = None
            it.awaiting_first_followup = False
            await self._announce("MESSAGE_UPDATE", msg)
        else:
            flags = int(payload.get("flags") or 0) & _SETTABLE_FLAGS
            msg_type = 20 if it.type == INTERACTION_APPLICATION_COMMAND else 0
            msg = self._message(
                channel_id=it.channel_id,
                payload=payload,
                files=rec.files,
                message_type=msg_type,
                flags=flags,
                interaction=it,
            )
            await self._announce("MESSAGE_CREATE", msg)
        it.followup_ids.append(int(msg["id"]))
        if rec.query.get("wait") in ("1", "true", "True"):
            return 200, msg
        return 204, None

    async def _webhook_message(self, rec: RecordedRequest, app_id: str, token: str, message_id: str) -> _Reply:
        found = self._webhook_interaction(app_id, token)
        if not isinstance(found, InteractionRecord):
            return found
        it = found
        mid = it.original_message_id if message_id == "@original" else int(message_id)
        owned = {it.original_message_id, *it.followup_ids}
        if mid is None or mid not in owned or mid not in self.messages:
            return _error(404, "Unknown Message", 10008)
        msg = self.messages[mid]
        if rec.method == "GET":
            return 200, msg
        if rec.method == "DELETE":
            self._delete_message(mid)
            return 204, None
        problem = self._check_upload(rec.files) or self._check_edit(msg, rec, WEBHOOK_EDIT_CONTENT_MAX)
        if problem:
            return problem
        self._apply_edit(msg, rec.json if isinstance(rec.json, dict) else {}, rec.files)
        if mid == it.original_message_id:
            it.awaiting_first_followup = False
        await self._announce("MESSAGE_UPDATE", msg)
        return 200, msg

    # ---------------------------------------------------------------- gateway

    async def _gateway(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(compress=False, max_msg_size=0, timeout=2.0)
        await ws.prepare(request)
        conn = GatewayConnection(len(self.connections), dict(request.query), self._loop_time(), ws, request)
        self.connections.append(conn)
        self._notify()
        await ws.send_str(
            json.dumps(
                {
                    "op": 10,
                    "d": {"heartbeat_interval": self.heartbeat_interval_ms, "_trace": ["fake-gateway"]},
                    "s": None,
                    "t": None,
                }
            )
        )
        try:
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    try:
                        frame = json.loads(msg.data)
                    except ValueError:
                        await conn.close(4002, "Error while decoding payload.")
                        break
                    self.gateway_received.append(
                        GatewayFrame(frame.get("op"), frame.get("d"), self._loop_time(), conn.index)
                    )
                    self._notify()
                    await self._on_client_frame(conn, frame)
                elif msg.type == aiohttp.WSMsgType.BINARY:
                    await conn.close(4002, "Error while decoding payload.")
                    break
                else:
                    break
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            conn.closed_at = self._loop_time()
            if conn.close_code is None:
                conn.close_code = ws.close_code
            session = self._sessions.get(conn.session_id or "")
            if session is not None and session.conn is conn:
                session.conn = None
            self._notify()
        return ws

    async def _send(self, conn: GatewayConnection, frame: dict[str, Any]) -> None:
        if not conn.ws.closed:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await conn.ws.send_str(json.dumps(frame))

    async def _on_client_frame(self, conn: GatewayConnection, frame: dict[str, Any]) -> None:
        op, d = frame.get("op"), frame.get("d")
        if op == 1:  # HEARTBEAT
            await self._send(conn, {"op": 11, "d": None, "s": None, "t": None})
        elif op == 2:  # IDENTIFY
            await self._identify(conn, d or {})
        elif op == 6:  # RESUME
            await self._resume(conn, d or {})
        elif conn.session_id is None:
            await conn.close(4003, "Not authenticated.")
        elif op == 3:  # PRESENCE_UPDATE
            self.presence_updates.append(d)
        elif op == 8:  # REQUEST_GUILD_MEMBERS
            await self._members_chunk(d or {})
        elif op in (4, 31):  # voice state, request soundboard sounds: accepted, not modelled
            pass
        else:
            await conn.close(4001, "Unknown opcode.")

    async def _identify(self, conn: GatewayConnection, d: dict[str, Any]) -> None:
        self.identifies.append(d)
        self._notify()
        if conn.session_id is not None:
            await conn.close(4005, "Already authenticated.")
            return
        if d.get("token") != self.token:
            await conn.close(4004, "Authentication failed.")
            return
        intents = d.get("intents")
        if not isinstance(intents, int) or intents < 0:
            await conn.close(4013, "Invalid intent(s).")
            return
        if intents & PRIVILEGED_INTENTS & ~self.allowed_privileged_intents:
            await conn.close(4014, "Disallowed intent(s).")
            return
        shard: tuple[int, int] | None = None
        if d.get("shard") is not None:
            raw = d["shard"]
            valid = (
                isinstance(raw, list) and len(raw) == 2 and all(type(n) is int for n in raw) and 0 <= raw[0] < raw[1]
            )
            if not valid:
                await conn.close(4010, "Invalid shard.")
                return
            shard = (raw[0], raw[1])
        guilds = [guild for guild in self.all_guild_ids() if self._carries(shard, guild)]
        if len(guilds) > MAX_GUILDS_PER_SHARD:
            await conn.close(4011, "Sharding required.")
            return
        bucket = (shard[0] if shard is not None else 0) % max(1, self.max_concurrency)
        now = self._loop_time()
        last = self._last_identify_at.get(bucket)
        if last is not None and now - last < self.identify_interval:
            self.identify_too_soon += 1
            await self._send(conn, {"op": 9, "d": False, "s": None, "t": None})
            return
        if self.session_starts_remaining <= 0:
            await self._send(conn, {"op": 9, "d": False, "s": None, "t": None})
            return
        self.session_starts_remaining -= 1
        self._last_identify_at[bucket] = now
        self.identify_starts.append((bucket, now))
        session = _Session(id=secrets.token_hex(16), intents=intents, conn=conn, shard=shard)
        self._sessions[session.id] = session
        self._session = session
        self._shard_sessions.pop(shard, None)  # re-inserted last: the order sessions identified in
        self._shard_sessions[shard] = session
        conn.session_id = session.id
        ready: dict[str, Any] = {}
        if d.get("shard") is not None:
            ready["shard"] = d["shard"]  # AutoShardedClient's parse_ready reads it
        await self._dispatch_to(
            session,
            "READY",
            {
                **ready,
                "v": API_VERSION,
                "user": self._bot_user_payload(),
                "user_settings": {},
                "guilds": [{"id": str(guild), "unavailable": True} for guild in guilds],
                "session_id": session.id,
                "session_type": "normal",
                "resume_gateway_url": self.gateway_url,
                "application": {"id": str(self.application_id), "flags": self._application_flags()},
                "private_channels": [],
                "presences": [],
                "relationships": [],
                "guild_join_requests": [],
                "geo_ordered_rtc_regions": ["fake"],
                "auth": {},
                "_trace": ["fake-gateway"],
            },
        )
        for guild in guilds:
            await self._dispatch_to(session, "GUILD_CREATE", self._guild_payload_of(guild))

    async def _resume(self, conn: GatewayConnection, d: dict[str, Any]) -> None:
        self.resumes.append(d)
        self._notify()
        session = self._sessions.get(d.get("session_id") or "")
        if session is None or d.get("token") != self.token:
            await self._send(conn, {"op": 9, "d": False, "s": None, "t": None})  # INVALID_SESSION, not resumable
            return
        async with session.lock:
            old = session.conn
            session.conn = conn
            conn.session_id = session.id
            conn.resumed = True
            if old is not None and old is not conn and not old.ws.closed:
                self._spawn(old.close(4000, "Session resumed elsewhere."))
            seq = d.get("seq") or 0
            for frame in session.frames:
                if frame["s"] > seq:
                    await self._send(conn, frame)
            session.seq += 1
            resumed = {"op": 0, "t": "RESUMED", "s": session.seq, "d": {"_trace": ["fake-gateway"]}}
            session.frames.append(resumed)
            await self._send(conn, resumed)
        self._notify()

    async def _members_chunk(self, d: dict[str, Any]) -> None:
        members = [self.member_payload(u) for u in self.users.values()]
        wanted = d.get("user_ids")
        if wanted:
            ids = {str(w) for w in (wanted if isinstance(wanted, list) else [wanted])}
            members = [m for m in members if m["user"]["id"] in ids]
        elif d.get("query"):
            prefix = str(d["query"]).lower()
            members = [m for m in members if m["user"]["username"].lower().startswith(prefix)]
        if d.get("limit"):
            members = members[: int(d["limit"])]
        chunk = {
            "guild_id": str(self.guild_id),
            "members": members,
            "chunk_index": 0,
            "chunk_count": 1,
            "not_found": [],
            "presences": [],
        }
        if d.get("nonce") is not None:
            chunk["nonce"] = d["nonce"]
        await self.dispatch("GUILD_MEMBERS_CHUNK", chunk)

    async def wait_for_session(self, timeout: float = 5.0) -> str:
        """The id of the current gateway session, waiting for the client to IDENTIFY if it has not yet."""
        session = await self.wait_until(lambda: self._session, timeout, "the client to IDENTIFY")
        return session.id

    async def dispatch(self, event: str, data: dict[str, Any], *, timeout: float = 5.0) -> bool:
        """Send a DISPATCH (op 0) with the next sequence number; returns False if its intent wasn't requested.

        While the connection is down the frame is kept and replayed after the client's RESUME, as Discord does.
        """
        await self.wait_until(lambda: self._session, timeout, "the client to IDENTIFY")
        guild = data.get("guild_id") or (data.get("id") if event == "GUILD_CREATE" else None)
        guild_id = int(guild) if guild else None
        targets = [session for key, session in self._shard_sessions.items() if self._carries(key, guild_id)]
        if not targets:  # no session carries this guild's shard: Discord has no one to send it to
            self.suppressed_events.append((event, data))
            return False
        sent = [await self._dispatch_to(session, event, data) for session in targets]
        return any(sent)

    async def _dispatch_to(self, session: _Session, event: str, data: dict[str, Any]) -> bool:
        """One DISPATCH to one session (kept for its RESUME while its connection is down)."""
        intent = _EVENT_INTENTS.get(event)
        if self.enforce_intents and intent is not None and not session.intents & intent:
            self.suppressed_events.append((event, data))
            return False
        async with session.lock:
            session.seq += 1
            frame = {"op": 0, "t": event, "s": session.seq, "d": data}
            session.frames.append(frame)
            if session.conn is not None:
                await self._send(session.conn, frame)
        return True

    def kill_connection(self, code: int | None = 4000) -> None:
        """Drop the current gateway connection now; ``code=None`` aborts the TCP connection without a close frame.

        The session is kept, so the client can RESUME; events dispatched meanwhile are replayed then.
        Synchronous on purpose: nothing can reach the client between this call and the next dispatch.
        """
        session = self._session
        conn = session.conn if session is not None else None
        if session is None or conn is None:
            raise RuntimeError("no live gateway connection to kill")
        session.conn = None
        if code is None:
            conn.close_code = 1006  # what the client sees: abnormal closure, no close frame
            transport = conn.request.transport
            if transport is not None:
                transport.abort()  # type: ignore[attr-defined]
        else:
            self._spawn(conn.close(code, "Connection killed by test"))

    async def request_reconnect(self) -> None:
        """Send op 7 RECONNECT, as Discord does before moving a session; the client should RESUME."""
        if self._session is None or self._session.conn is None:
            raise RuntimeError("no live gateway connection")
        await self._send(self._session.conn, {"op": 7, "d": None, "s": None, "t": None})

    async def invalidate_session(self, resumable: bool = False) -> None:
        """Send op 9 INVALID_SESSION; with ``resumable=False`` the client must IDENTIFY afresh."""
        session = self._session
        if session is None or session.conn is None:
            raise RuntimeError("no live gateway connection")
        conn = session.conn
        if not resumable:
            self._sessions.pop(session.id, None)
        await self._send(conn, {"op": 9, "d": resumable, "s": None, "t": None})

    # ---------------------------------------------------------------- driving the bot: interactions

    def _interaction_payload(
        self,
        itype: int,
        data: dict[str, Any],
        user: FakeUser,
        channel_id: int,
        message: dict[str, Any] | None = None,
        locale: str = "en-US",
    ) -> tuple[int, str, dict[str, Any]]:
        iid = self.snowflake()
        token = "aW50ZXJhY3Rpb24" + secrets.token_urlsafe(48)
        guild_id = self.guild_of_channel(channel_id) or self.guild_id
        payload: dict[str, Any] = {
            "id": str(iid),
            "application_id": str(self.application_id),
            "type": itype,
            "token": token,
            "version": 1,
            "data": data,
            "guild_id": str(guild_id),
            "guild": {"id": str(guild_id), "locale": "en-US", "features": []},
            "channel_id": str(channel_id),
            "channel": {
                **self.channel_payload(permissions=EVERYONE_PERMISSIONS),
                "id": str(channel_id),
                "guild_id": str(guild_id),
            },
            "member": self.member_payload(user, permissions=EVERYONE_PERMISSIONS),
            "app_permissions": str(self.app_permissions),
            "locale": locale,
            "guild_locale": "en-US",
            "entitlements": [],
            "entitlement_sku_ids": [],
            "authorizing_integration_owners": {"0": str(guild_id)},
            "context": 0,
            "attachment_size_limit": self.upload_limit,
        }
        if message is not None:
            payload["message"] = message
        return iid, token, payload

    async def _dispatch_interaction(
        self, itype: int, data: dict[str, Any], user: FakeUser, channel_id: int, message: dict | None, locale: str
    ) -> InteractionRecord:
        await self.wait_for_session()
        iid, token, payload = self._interaction_payload(itype, data, user, channel_id, message, locale)
        record = InteractionRecord(iid, token, itype, payload, self._loop_time(), channel_id, user)
        self.interactions.append(record)
        self._interactions_by_token[token] = record
        await self.dispatch("INTERACTION_CREATE", payload)
        self._notify()
        return record

    def _command_schema(self, name: str) -> tuple[dict[str, Any] | None, bool]:
        cmd = self.command(name, self.guild_id)
        if cmd is not None:
            return cmd, True
        return self.command(name), False

    @staticmethod
    def _check_invocation(
        schema: list[dict[str, Any]], options: Mapping[str, Any], attachments: Mapping[str, Any], focused: str | None
    ) -> None:
        """``ValueError`` for an invocation of a registered command that no Discord client could send: an option
        the command does not have, a required one left out, a value outside its choices, range or length.  (With
        autocomplete a person may type any value, so such an option's value is not held to anything.)"""
        by_name = {o.get("name"): o for o in schema}
        given = {**options, **attachments}
        for name in given:
            if name not in by_name:
                raise ValueError(f"the command has no option {name!r}; it has {sorted(by_name)}")
        for name, declared in by_name.items():
            if declared.get("required") and name not in given and focused is None:
                raise ValueError(f"the required option {name!r} is missing")
        for name, value in options.items():
            declared = by_name[name]
            if name == focused or declared.get("autocomplete") or isinstance(value, FakeUser):
                continue
            choices = [choice.get("value") for choice in declared.get("choices") or []]
            if choices and value not in choices:
                raise ValueError(f"{name}={value!r} is not one of the choices {choices}")
            if isinstance(value, int | float) and not isinstance(value, bool):
                low, high = declared.get("min_value"), declared.get("max_value")
                if (low is not None and value < low) or (high is not None and value > high):
                    raise ValueError(f"{name}={value!r} is outside {low}..{high}")
            if isinstance(value, str):
                shortest, longest = declared.get("min_length"), declared.get("max_length")
                if (shortest is not None and len(value) < shortest) or (longest is not None and len(value) > longest):
                    raise ValueError(f"{name} has {len(value)} characters, outside {shortest}..{longest}")

    def _build_options(
        self,
        schema: list[dict[str, Any]],
        options: Mapping[str, Any],
        attachments: Mapping[str, tuple[str, bytes, str | None]],
        resolved: dict[str, dict[str, Any]],
        channel_id: int,
        focused: str | None,
    ) -> list[dict[str, Any]]:
        if schema:
            self._check_invocation(schema, options, attachments, focused)
        by_name = {o.get("name"): o for o in schema}
        out: list[dict[str, Any]] = []
        for name, value in options.items():
            declared = by_name.get(name, {}).get("type")
            if isinstance(value, FakeUser):
                self.users.setdefault(value.id, value)
                resolved.setdefault("users", {})[str(value.id)] = value.to_dict()
                resolved.setdefault("members", {})[str(value.id)] = {
                    k: v for k, v in self.member_payload(value, permissions=EVERYONE_PERMISSIONS).items() if k != "user"
                }
                option: dict[str, Any] = {"name": name, "type": declared or _OPT_USER, "value": str(value.id)}
            else:
                option = {"name": name, "type": declared or _infer_option_type(value), "value": value}
            if name == focused:
                option["focused"] = True
                option["value"] = str(value)
            out.append(option)
        for name, (filename, data, content_type) in attachments.items():
            att = self.store_attachment(channel_id, filename, data, content_type)
            att["ephemeral"] = True
            resolved.setdefault("attachments", {})[att["id"]] = att
            out.append({"name": name, "type": _OPT_ATTACHMENT, "value": att["id"]})
        return out

    def _command_data(
        self,
        name: str,
        options: Mapping[str, Any] | None,
        attachments: Mapping[str, tuple[str, bytes, str | None]] | None,
        channel_id: int,
        focused: str | None = None,
    ) -> dict[str, Any]:
        """INTERACTION_CREATE ``data`` for ``/name`` (``"group sub"`` paths become nested options)."""
        parts = name.split()
        top, path = parts[0], parts[1:]
        cmd, is_guild = self._command_schema(top)
        schema = (cmd or {}).get("options") or []
        resolved: dict[str, dict[str, Any]] = {}
        leaf_schema = schema
        for part in path:
            node = next((o for o in leaf_schema if o.get("name") == part), {})
            leaf_schema = node.get("options") or []
        leaf = self._build_options(leaf_schema, options or {}, attachments or {}, resolved, channel_id, focused)
        for depth in range(len(path) - 1, -1, -1):
            kind = _OPT_SUB_COMMAND if depth == len(path) - 1 else _OPT_SUB_COMMAND_GROUP
            leaf = [{"name": path[depth], "type": kind, "options": leaf}]
        data: dict[str, Any] = {
            "id": cmd["id"] if cmd else str(self.snowflake()),
            "name": top,
            "type": 1,
            "options": leaf,
        }
        if resolved:
            data["resolved"] = resolved
        if is_guild:
            data["guild_id"] = str(self.guild_id)
        return data

    async def send_slash_command(
        self,
        name: str,
        options: Mapping[str, Any] | None = None,
        *,
        user: FakeUser | int | None = None,
        attachments: Mapping[str, tuple[str, bytes, str | None]] | None = None,
        channel_id: int | None = None,
        locale: str = "en-US",
    ) -> InteractionRecord:
        """Dispatch INTERACTION_CREATE type 2 for ``/name`` as a user invoking it in the guild channel.

        Option types come from the registered command when the bot synced one (else from the Python value:
        str 3, int 4, bool 5, float 10, FakeUser 6). ``attachments`` maps an option name to
        ``(filename, bytes, content_type)``; the bytes are served behind a signed CDN URL in ``resolved``.
        """
        cid = channel_id or self.channel_id
        data = self._command_data(name, options, attachments, cid)
        return await self._dispatch_interaction(
            INTERACTION_APPLICATION_COMMAND, data, self._user(user), cid, None, locale
        )

    async def send_autocomplete(
        self,
        name: str,
        options: Mapping[str, Any],
        focused: str,
        *,
        user: FakeUser | int | None = None,
        channel_id: int | None = None,
        locale: str = "en-US",
    ) -> InteractionRecord:
        """Dispatch INTERACTION_CREATE type 4 (the user typing in option ``focused``); expect callback type 8."""
        cid = channel_id or self.channel_id
        data = self._command_data(name, options, None, cid, focused=focused)
        return await self._dispatch_interaction(INTERACTION_AUTOCOMPLETE, data, self._user(user), cid, None, locale)

    def _find_component(self, message: dict[str, Any], custom_id: str) -> dict[str, Any] | None:
        stack = list(message.get("components") or [])
        while stack:
            comp = stack.pop()
            if comp.get("custom_id") == custom_id:
                return comp
            stack.extend(comp.get("components") or [])
            if isinstance(comp.get("accessory"), dict):
                stack.append(comp["accessory"])
        return None

    def _component_message(self, message_id: int, custom_id: str, component_type: int) -> dict[str, Any]:
        message = self.messages.get(int(message_id))
        if message is None:
            raise KeyError(f"message {message_id} is unknown to the fake (deleted or never sent)")
        comp = self._find_component(message, custom_id)
        if comp is None or comp.get("type") != component_type:
            raise ValueError(
                f"message {message_id} has no component type {component_type} with custom_id {custom_id!r}"
            )
        if comp.get("disabled"):
            raise ValueError(f"component {custom_id!r} is disabled: a user cannot use it")
        return message

    async def click_button(
        self, message_id: int, custom_id: str, *, user: FakeUser | int | None = None, locale: str = "en-US"
    ) -> InteractionRecord:
        """Dispatch a component interaction (type 3, component_type 2) for a button on a stored message."""
        message = self._component_message(message_id, custom_id, 2)
        data = {"custom_id": custom_id, "component_type": 2}
        return await self._dispatch_interaction(
            INTERACTION_MESSAGE_COMPONENT, data, self._user(user), int(message["channel_id"]), message, locale
        )

    async def choose_select(
        self,
        message_id: int,
        custom_id: str,
        values: list[str],
        *,
        user: FakeUser | int | None = None,
        locale: str = "en-US",
    ) -> InteractionRecord:
        """Dispatch a component interaction (type 3, component_type 3) choosing ``values`` in a string select."""
        message = self._component_message(message_id, custom_id, 3)
        comp = self._find_component(message, custom_id) or {}
        allowed = {o.get("value") for o in comp.get("options") or []}
        if not set(values) <= allowed:
            raise ValueError(f"values {values} are not options of select {custom_id!r}: {sorted(allowed)}")
        if not comp.get("min_values", 1) <= len(values) <= comp.get("max_values", 1):
            raise ValueError(f"select {custom_id!r} takes {comp.get('min_values', 1)}-{comp.get('max_values', 1)}")
        data = {"custom_id": custom_id, "component_type": 3, "values": list(values)}
        return await self._dispatch_interaction(
            INTERACTION_MESSAGE_COMPONENT, data, self._user(user), int(message["channel_id"]), message, locale
        )

    # ---------------------------------------------------------------- driving the bot: reactions

    async def add_reaction(
        self, message_id: int, emoji: str, user_id: FakeUser | int | None = None, *, channel_id: int | None = None
    ) -> bool:
        """A user reacts: MESSAGE_REACTION_ADD (needs the GUILD_MESSAGE_REACTIONS intent, else False)."""
        return await self._reaction("MESSAGE_REACTION_ADD", message_id, emoji, self._user(user_id), channel_id)

    async def remove_reaction(
        self, message_id: int, emoji: str, user_id: FakeUser | int | None = None, *, channel_id: int | None = None
    ) -> bool:
        """A user withdraws a reaction: MESSAGE_REACTION_REMOVE (no ``member`` field, as on Discord)."""
        return await self._reaction("MESSAGE_REACTION_REMOVE", message_id, emoji, self._user(user_id), channel_id)

    async def _reaction(self, event: str, message_id: int, emoji: str, user: FakeUser, channel_id: int | None) -> bool:
        message = self.messages.get(int(message_id))
        cid = channel_id or (int(message["channel_id"]) if message else self.channel_id)
        emoji_obj = _emoji_payload(emoji)
        data: dict[str, Any] = {
            "user_id": str(user.id),
            "channel_id": str(cid),
            "message_id": str(message_id),
            "guild_id": str(self.guild_of_channel(cid) or self.guild_id),
            "emoji": emoji_obj,
            "burst": False,
            "type": 0,
        }
        if event == "MESSAGE_REACTION_ADD":
            data["member"] = self.member_payload(user)
            data["burst_colors"] = []
            if message is not None:
                data["message_author_id"] = message["author"]["id"]
        if message is not None:
            _count_reaction(message, emoji_obj, +1 if event == "MESSAGE_REACTION_ADD" else -1, me=False)
        return await self.dispatch(event, data)


# --------------------------------------------------------------------------------------------------------------
# Module helpers
# --------------------------------------------------------------------------------------------------------------


def _infer_option_type(value: Any) -> int:
    if isinstance(value, bool):
        return _OPT_BOOLEAN
    if isinstance(value, int):
        return _OPT_INTEGER
    if isinstance(value, float):
        return _OPT_NUMBER
    return _OPT_STRING


def _with_component_ids(components: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Copy components, numbering those without an ``id`` depth-first from 1 as Discord does."""
    counter = 0
    used: set[int] = set()

    def collect(comp: dict[str, Any]) -> None:
        if isinstance(comp.get("id"), int):
            used.add(comp["id"])
        for child in comp.get("components") or []:
            collect(child)
        if isinstance(comp.get("accessory"), dict):
            collect(comp["accessory"])

    def number(comp: dict[str, Any]) -> dict[str, Any]:
        nonlocal counter
        out = dict(comp)
        if not isinstance(out.get("id"), int):
            counter += 1
            while counter in used:
                counter += 1
            out["id"] = counter
        if out.get("components"):
            out["components"] = [number(c) for c in out["components"]]
        if isinstance(out.get("accessory"), dict):
            out["accessory"] = number(out["accessory"])
        return out

    for comp in components:
        collect(comp)
    return [number(c) for c in components]


def _check_components(components: Any, flags: int, path: list[str | int]) -> _Reply | None:
    """Discord's rules for a message's components (without IS_COMPONENTS_V2: rows of buttons or one select)."""
    if components is None:
        return None
    if not isinstance(components, list):
        return _invalid_form(path, "BASE_TYPE_LIST", "Must be an array.")
    if flags & FLAG_IS_COMPONENTS_V2:
        return None  # the layout components' rules are not modelled; the product sends none
    if len(components) > ACTION_ROWS_MAX:
        return _invalid_form(path, "BASE_TYPE_MAX_LENGTH", f"Must be {ACTION_ROWS_MAX} or fewer in length.")
    seen_custom_ids: set[Any] = set()
    for row_index, row in enumerate(components):
        row_path: list[str | int] = [*path, row_index]
        if not isinstance(row, dict) or row.get("type") != 1:
            return _invalid_form([*row_path, "type"], "UNION_TYPE_CHOICES", 'Value of field "type" must be 1.')
        children = row.get("components")
        if not isinstance(children, list) or not 1 <= len(children) <= ROW_COMPONENTS_MAX:
            return _invalid_form(
                [*row_path, "components"],
                "BASE_TYPE_BAD_LENGTH",
                f"Must be between 1 and {ROW_COMPONENTS_MAX} in length.",
            )
        if len(children) > 1 and any(isinstance(c, dict) and c.get("type") in _SELECT_TYPES for c in children):
            return _invalid_form(
                [*row_path, "components"], "COMPONENT_LAYOUT_WIDTH_EXCEEDED",
                "The specified component exceeds the maximum width",
            )  # fmt: skip
        for index, child in enumerate(children):
            problem = _check_component(child, [*row_path, "components", index])
            if problem:
                return problem
            # Discord routes a press by custom_id, so one message may not carry the same one twice.
            custom_id = child.get("custom_id")
            if custom_id is not None and custom_id in seen_custom_ids:
                return _invalid_form(
                    [*row_path, "components", index, "custom_id"], "COMPONENT_CUSTOM_ID_DUPLICATED",
                    "Component custom id cannot be duplicated",
                )  # fmt: skip
            seen_custom_ids.add(custom_id)
    return None


def _check_component(component: Any, path: list[str | int]) -> _Reply | None:
    """One button or select menu in an action row."""
    if not isinstance(component, dict) or component.get("type") not in {2, *_SELECT_TYPES}:
        return _invalid_form(
            [*path, "type"], "UNION_TYPE_CHOICES", 'Value of field "type" must be one of (2, 3, 5, 6, 7, 8).'
        )
    kind = component["type"]
    link = kind == 2 and component.get("style") in (5, 6)  # link and premium buttons carry no custom_id
    custom_id = component.get("custom_id")
    if not link:
        if not isinstance(custom_id, str):
            return _invalid_form([*path, "custom_id"], "BASE_TYPE_REQUIRED", "This field is required")
        if not 1 <= len(custom_id) <= CUSTOM_ID_MAX:
            return _invalid_form(
                [*path, "custom_id"], "BASE_TYPE_BAD_LENGTH", f"Must be between 1 and {CUSTOM_ID_MAX} in length."
            )
    if kind == 2:
        label = component.get("label")
        if label is not None and len(str(label)) > BUTTON_LABEL_MAX:
            return _invalid_form(
                [*path, "label"], "BASE_TYPE_MAX_LENGTH", f"Must be {BUTTON_LABEL_MAX} or fewer in length."
            )
        return None
    placeholder = component.get("placeholder")
    if placeholder is not None and len(str(placeholder)) > SELECT_PLACEHOLDER_MAX:
        return _invalid_form(
            [*path, "placeholder"], "BASE_TYPE_MAX_LENGTH", f"Must be {SELECT_PLACEHOLDER_MAX} or fewer in length."
        )
    if kind != 3:
        return None
    options = component.get("options")
    if not isinstance(options, list) or not 1 <= len(options) <= SELECT_OPTIONS_MAX:
        return _invalid_form(
            [*path, "options"], "BASE_TYPE_BAD_LENGTH", f"Must be between 1 and {SELECT_OPTIONS_MAX} in length."
        )
    for index, option in enumerate(options):
        for key in ("label", "value"):
            text = option.get(key) if isinstance(option, dict) else None
            if not isinstance(text, str) or not 1 <= len(text) <= SELECT_OPTION_TEXT_MAX:
                return _invalid_form(
                    [*path, "options", index, key], "BASE_TYPE_BAD_LENGTH",
                    f"Must be between 1 and {SELECT_OPTION_TEXT_MAX} in length.",
                )  # fmt: skip
        description = option.get("description")
        if description is not None and len(str(description)) > SELECT_OPTION_TEXT_MAX:
            return _invalid_form(
                [*path, "options", index, "description"], "BASE_TYPE_MAX_LENGTH",
                f"Must be {SELECT_OPTION_TEXT_MAX} or fewer in length.",
            )  # fmt: skip
    return None


def _check_autocomplete(data: Any) -> _Reply | None:
    """An autocomplete answer: at most 25 choices, each named with 1-100 characters."""
    choices = data.get("choices") if isinstance(data, dict) else None
    if choices is None:
        return None
    if not isinstance(choices, list) or len(choices) > AUTOCOMPLETE_CHOICES_MAX:
        return _invalid_form(
            ["data", "choices"], "BASE_TYPE_MAX_LENGTH", f"Must be {AUTOCOMPLETE_CHOICES_MAX} or fewer in length."
        )
    for index, choice in enumerate(choices):
        name = choice.get("name") if isinstance(choice, dict) else None
        if not isinstance(name, str) or not 1 <= len(name) <= CHOICE_NAME_MAX:
            return _invalid_form(
                ["data", "choices", index, "name"], "BASE_TYPE_BAD_LENGTH",
                f"Must be between 1 and {CHOICE_NAME_MAX} in length.",
            )  # fmt: skip
    return None


def _emoji_payload(emoji: str) -> dict[str, Any]:
    """``"👍"`` → ``{"id": None, "name": "👍"}``; ``"<:name:123>"``/``"name:123"`` → a custom emoji."""
    m = _CUSTOM_EMOJI.match(emoji)
    if m:
        obj: dict[str, Any] = {"id": m.group("id"), "name": m.group("name")}
        if m.group("animated"):
            obj["animated"] = True
        return obj
    return {"id": None, "name": emoji}


def _count_reaction(message: dict[str, Any], emoji: dict[str, Any], delta: int, *, me: bool) -> None:
    """Keep ``message["reactions"]`` roughly as Discord reports it (count, me), for fetches after reactions."""
    reactions = message.setdefault("reactions", [])
    entry = next(
        (r for r in reactions if r["emoji"].get("id") == emoji.get("id") and r["emoji"]["name"] == emoji["name"]), None
    )
    if entry is None:
        if delta < 0:
            return
        entry = {
            "emoji": emoji,
            "count": 0,
            "count_details": {"burst": 0, "normal": 0},
            "me": False,
            "me_burst": False,
            "burst_colors": [],
        }
        reactions.append(entry)
    entry["count"] = max(0, entry["count"] + delta)
    entry["count_details"]["normal"] = entry["count"]
    if me:
        entry["me"] = delta > 0
    if entry["count"] == 0:
        reactions.remove(entry)
    if not reactions:
        message.pop("reactions")


def _image_size(data: bytes) -> tuple[int, int] | None:
    """Width and height for the attachment object, when Pillow is installed and the bytes are an image."""
    try:
        from PIL import Image
    except ImportError:
        return None
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.size
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


@contextlib.asynccontextmanager
async def running_client(client: discord.Client, fake: FakeDiscord, *, timeout: float = 5.0) -> AsyncIterator[None]:
    """Run ``client.start(fake.token)`` in a task until READY; close it (and await the task) on exit.

    Build the client with ``guild_ready_timeout=0.05`` or so: discord.py waits that long after the last
    GUILD_CREATE before ``on_ready`` (2 s by default).
    """
    task = asyncio.create_task(client.start(fake.token), name="fake-discord-client")
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not client.is_ready():
            if task.done():
                task.result()  # raises the client's error (LoginFailure, PrivilegedIntentsRequired, ...)
                raise RuntimeError("discord client stopped before READY")
            if loop.time() > deadline:
                raise TimeoutError(f"discord client not ready after {timeout}s")
            await asyncio.sleep(0.01)
        yield
    finally:
        await client.close()
        try:
            await asyncio.wait_for(task, timeout)
        except asyncio.CancelledError:
            if not task.cancelled():
                raise
        except Exception:  # noqa: BLE001 - the client's own failure was already reported above or by the test
            _log.debug("discord client task ended with an error", exc_info=True)
