"""The Discord adapter (discord.py): slash commands, buttons and reactions.

Commands only translate: options → :class:`ProfileOrder`, the core's answer
or :class:`MmppError` → a reply.  Conventions it follows: the interaction is
deferred at once (Discord allows 3 s), errors are ephemeral, the pictures
come as follow-ups while the 15-minute interaction token lives and through
the channel afterwards, attachments are downloaded immediately (their URLs
expire), and no privileged intent is asked for.

The status message is the interaction's original response: edited through the
interaction's webhook while the token lives, as a channel message afterwards.
While a job paints, its live preview is that message's one attachment (each
new preview replaces the last); when the pictures are posted it says so and
the preview is removed.

Each picture carries its rating buttons (one row, 1-5); the last one also the
re-roll button and the another-style menu.  The bot adds no reactions of its
own: Discord allows about one reaction add per 0.25 s per channel, so five per
picture would hold back every other job's pictures in a busy channel (and
need permissions many servers do not give); people's own 1️⃣-5️⃣ reactions
still count.  What Discord refuses for good (403, 404, 400) is raised as the
core's :class:`DeliveryRefused`, so the core stops instead of asking again; the
texts sent are cut to Discord's limits (2000 characters, 25 choices...).
"""

from __future__ import annotations

import asyncio
import io
import logging
import math
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any, Literal

import discord
from discord import app_commands

from bot.core import ChatCore, EditPace, Person, PostedCallback, ProfileOrder, texts
from bot.core.person_settings import MAX_SUFFIX_CHARACTERS, SettingsRequest, parse_settings_text
from bot.core.platform import DeliveryRefused
from bot.core.ratings import RATING_SCORES
from bot.discord_app.endpoints import EndpointHTTPClient, Endpoints
from bot.settings import BotSettings
from bot.storage import Job, StoredPicture
from mmpp.contract import MAX_PICTURES
from mmpp.errors import ErrorCode, MmppError

logger = logging.getLogger(__name__)

PLATFORM = "discord"
#: Interaction tokens last 15 minutes; stop using one a minute before.
TOKEN_LIFETIME_SECONDS = 14 * 60
#: How long /profile's checks (the person's defaults: a database read) may hold the first reply back.  Quick, they
#: answer a refusal privately from the start; slower (a busy shared database), the command is deferred first and
#: a refusal replaces the public "thinking" reply with a private one.  The first reply must not wait behind the
#: database: Discord drops an interaction unanswered after 3 s, and people notice well before.
CHECK_BEFORE_DEFER_SECONDS = 0.15
HOW_TO_ORDER = (
    "Use /profile with a style and your selfie as the photo; rate the pictures with the 1-5 buttons under them "
    "(or react with 1️⃣-5️⃣)."
)
#: Discord's limits on what a bot sends (its API refuses more with 400 Invalid Form Body).
CONTENT_MAX = 2000
CHOICES_MAX = 25  # autocomplete choices, and options of a select menu
CHOICE_NAME_MAX = 100  # an autocomplete choice's name, a select option's label and value
EMBED_FIELDS_MAX = 25
EMBEDS_MAX = 10
EMBED_CHARACTERS_MAX = 6000  # all embeds of a message together
#: Room a failure line keeps for what goes around its text (a mention, the code).
FAILURE_TEXT_MAX = CONTENT_MAX - 100
#: Looking for a picture in doubt reads the channel's messages from its post's start on, less this much: the bot's
#: clock and Discord's (which dates a message by its id) may disagree by a little.
POSTED_SEARCH_MARGIN_SECONDS = 60
#: How many messages from that moment on are read, in one request (Discord's default page; at most 100): the
#: picture's message was created right after its post began, so it is among the first even in a busy channel.
POSTED_SEARCH_MESSAGES = 50


def person_of(user: discord.abc.User) -> Person:
    return Person(PLATFORM, str(user.id), getattr(user, "display_name", "") or user.name)


def fit(text: str) -> str:
    """Message content within Discord's 2000 characters."""
    return texts.shorten(text, CONTENT_MAX)


def failure_line(code: ErrorCode, text: str) -> str:
    """One line, whatever the message held, cut to fit a message: the code last, where people quote it from."""
    return f"⚠️ {texts.shorten(' '.join(text.split()), FAILURE_TEXT_MAX)} (`{code.value}`)"


@contextmanager
def refusals_are_final() -> Iterator[None]:
    """Discord's refusals that asking again cannot change (403, 404, 400...: not 429, not 5xx) as the core's
    :class:`DeliveryRefused`; 429s and 5xx that discord.py gave up on, and network errors, pass as they are."""
    try:
        yield
    except discord.HTTPException as error:
        if 400 <= error.status < 500 and error.status != 429:
            raise DeliveryRefused(f"Discord answered {error.status} (code {error.code})") from error
        raise


def preview_filename(job: Job) -> str:
    """Not ``mmpp-…``: that is how the pictures are named, and a preview is not one of them."""
    return f"preview-{job.id}.jpg"


def picture_filename(job: Job, picture: StoredPicture) -> str:
    """What a picture's attachment is called: how a picture in doubt is recognised in the channel's messages.
    An attachment is a file: Discord keeps its bytes as sent (an upscale's "-2x" name says what it is)."""
    return f"mmpp-{job.id}-{picture.position}{'-2x' if job.is_upscale else ''}.png"


def token_alive(context: dict[str, Any]) -> bool:
    return bool(context.get("token")) and time.time() < float(context.get("token_expires_at", 0))


def where(interaction: discord.Interaction) -> tuple[str, str | None]:
    """``(chat_id, server_id)``: the channel, and the server it belongs to (``None`` in direct messages)."""
    return str(interaction.channel_id), str(interaction.guild_id) if interaction.guild_id else None


def interaction_context(interaction: discord.Interaction) -> dict[str, Any]:
    """What a job needs to answer later, from this process or another: the server (``guild_id``, ``None`` in
    direct messages) decides the job's shard, so which process delivers it (:meth:`DiscordDelivery.shard_of`)."""
    return {
        "guild_id": interaction.guild_id,
        "channel_id": interaction.channel_id,
        "application_id": interaction.application_id,
        "token": interaction.token,
        "token_expires_at": time.time() + TOKEN_LIFETIME_SECONDS,
        "user_id": interaction.user.id,
    }


# --------------------------------------------------------------------------- the core → Discord


class DiscordDelivery:
    platform = PLATFORM
    #: Discord allows about 5 edits per 5 s per message.  One status edit per 1.5 s is at most 4 in any
    #: 5 s, the post of the status included, which leaves room for the last edit when the pictures arrive.
    status_edit_pace = EditPace(1.5, per="message")

    def __init__(self, client: MmppClient) -> None:
        self.client = client

    # The facts behind the core's rule of which process delivers a job (bot.core.platform.Shards).

    @property
    def claimant(self) -> str:
        """Stable for a process's shards, so that a restarted process takes its own jobs back at once.  Without
        shard settings the process holds every shard, however many the gateway recommends this time."""
        if self.client.shard_ids is None:
            return "discord all shards"
        return f"discord shards {','.join(map(str, self.client.owned_shards()))} of {self.client.shard_count}"

    def shard_of(self, job: Job) -> int:
        """Discord's rule: ``(guild_id >> 22) % shard_count``; direct messages are shard 0's."""
        guild_id = job.reply_context.get("guild_id")
        return shard_of_guild(int(guild_id), self.client.shard_count or 1) if guild_id else 0

    def owns_shard(self, shard: int) -> bool:
        return shard in self.client.owned_shards()

    def replies_through_channel(self, job: Job) -> bool:
        return not token_alive(job.reply_context)

    def _webhook(self, context: dict[str, Any]) -> discord.Webhook:
        data: Any = {"id": context["application_id"], "type": 3, "token": context["token"]}
        return discord.Webhook.from_state(data=data, state=self.client._connection)

    async def _channel(self, context: dict[str, Any]) -> discord.abc.Messageable:
        channel_id = int(context["channel_id"])
        channel = self.client.get_channel(channel_id)
        if channel is None:
            channel = await self.client.fetch_channel(channel_id)
        return channel  # type: ignore[return-value]

    async def post_status(self, job: Job, text: str) -> str | None:
        context = job.reply_context
        if not token_alive(context):
            return None
        with self.client.endpoints.active():
            message = await self._webhook(context).edit_message(int(context["original_message_id"]), content=fit(text))
        return str(message.id)

    async def edit_status(self, job: Job, message_ref: str, text: str, preview: bytes | None = None) -> None:
        """One attempt (see :meth:`Endpoints.one_attempt`); a preview replaces the message's attachments."""
        attachments: list[discord.File] | None = None
        if preview is not None:
            attachments = [discord.File(io.BytesIO(preview), filename=preview_filename(job), description="preview")]
        with self.client.endpoints.one_attempt():
            await self._edit_status_message(job, int(message_ref), fit(text), attachments)

    async def _edit_status_message(
        self, job: Job, message_id: int, text: str, attachments: list[discord.File] | None
    ) -> None:
        """The status message, through the interaction's webhook while its token lives, else in the channel.

        ``attachments``: the message's attachments from now on (``[]`` removes them); ``None`` keeps them.
        """
        context = job.reply_context
        keep = discord.utils.MISSING if attachments is None else attachments
        with self.client.endpoints.active():
            if token_alive(context):
                await self._webhook(context).edit_message(message_id, content=text, attachments=keep)
                return
            # Past the token a bot edits its message as any channel message: with its own token, through the
            # same adapter (so the same addresses, and one_attempt where the caller asked for it).
            route = discord.http.Route(
                "PATCH", "/channels/{channel_id}/messages/{message_id}",
                channel_id=int(context["channel_id"]), message_id=message_id,
            )  # fmt: skip
            with discord.http.handle_message_parameters(content=text, attachments=keep) as parameters:
                await self.client.endpoints.webhook_adapter.request(
                    route, self._webhook(context).session, payload=parameters.payload,
                    multipart=parameters.multipart, files=parameters.files, auth_token=self.client.http.token,
                )  # fmt: skip

    async def post_pictures(
        self, job: Job, pictures: list[StoredPicture], caption: str, on_posted: PostedCallback
    ) -> None:
        with self.client.endpoints.active(), refusals_are_final():
            await self._post_pictures(job, pictures, caption, on_posted)

    async def _post_pictures(
        self, job: Job, pictures: list[StoredPicture], caption: str, on_posted: PostedCallback
    ) -> None:
        """Each picture not yet posted, recorded as posted the moment its message exists (before anything else)."""
        context = job.reply_context
        for index, picture in enumerate(pictures):
            if picture.message_ref is not None:
                continue  # posted by an earlier attempt: never again
            is_last = index == len(pictures) - 1
            content = caption if index == 0 else None
            if index == 0 and not token_alive(context):
                content = f"<@{context.get('user_id')}> {caption}"
            file = discord.File(io.BytesIO(picture.png), filename=picture_filename(job, picture))
            view = picture_view(
                job.id, picture.id, self.client.core, with_job_controls=is_last and not job.is_upscale,
                upscalable=not job.is_upscale,
            )  # fmt: skip
            message = await self._send(
                context, content=fit(content) if content else None, file=file, view=view, nonce=f"{job.id}-{index}"
            )
            await on_posted(picture, str(message.id))
        if job.status_message_id:
            try:  # says where the pictures are, and takes the last preview away
                await self._edit_status_message(
                    job, int(job.status_message_id), texts.pictures_done(len(pictures)), attachments=[]
                )
            except discord.HTTPException:
                logger.info("could not edit the status of job %s", job.id)

    async def find_posted(self, job: Job, pictures: list[StoredPicture]) -> dict[int, str]:
        """The messages of pictures in doubt, looked for in the channel's messages since their posts began.

        Why: a webhook follow-up (the path while the interaction token lives) has no nonce, so a process killed
        after Discord created the message but before its reference was stored would post the picture again.  One
        read of at most :data:`POSTED_SEARCH_MESSAGES` messages, no paging, for all of them.  Where Discord will not
        show the channel (403 without VIEW_CHANNEL, 404 for a DM the bot cannot read; without READ_MESSAGE_HISTORY
        it shows no messages), nothing is found and the pictures are posted again: at least once is the fallback.
        """
        starts = [datetime.fromisoformat(picture.post_started_at) for picture in pictures if picture.post_started_at]
        if not starts:
            return {}
        since = min(starts) - timedelta(seconds=POSTED_SEARCH_MARGIN_SECONDS)
        wanted = {picture_filename(job, picture): picture.id for picture in pictures}
        ours = {self.client.application_id, self.client.user.id if self.client.user else None} - {None}
        found: dict[int, str] = {}
        try:
            with self.client.endpoints.active():
                channel = await self._channel(job.reply_context)
                async for message in channel.history(limit=POSTED_SEARCH_MESSAGES, after=since):
                    if message.author.id not in ours:
                        continue
                    for attachment in message.attachments:
                        if attachment.filename in wanted:
                            found.setdefault(wanted[attachment.filename], str(message.id))
        except (discord.Forbidden, discord.NotFound) as error:
            logger.warning(
                "cannot read channel %s back (Discord answered %s, code %s): job %s's pictures in doubt are posted "
                "again", job.reply_context.get("channel_id"), error.status, error.code, job.id,
            )  # fmt: skip
        return found

    async def _send(
        self,
        context: dict[str, Any],
        *,
        content: str | None,
        file: discord.File,
        view: discord.ui.View | None,
        nonce: str,
    ) -> discord.Message:
        extra: dict[str, Any] = {"view": view} if view is not None else {}
        if token_alive(context):
            return await self._webhook(context).send(
                content=content or discord.utils.MISSING, file=file, wait=True, **extra
            )
        channel = await self._channel(context)
        # discord.py sends the nonce with enforce_nonce: a repeated send after a crash is a no-op on Discord.
        return await channel.send(content=content, file=file, nonce=nonce, **extra)

    async def post_notice(self, job: Job, text: str) -> None:
        """Only the person sees it: an ephemeral follow-up while the interaction lives."""
        if token_alive(job.reply_context):
            with self.client.endpoints.active():
                await self._webhook(job.reply_context).send(content=fit(text), ephemeral=True, wait=True)

    async def post_failure(self, job: Job, code: ErrorCode, text: str) -> None:
        with self.client.endpoints.active(), refusals_are_final():
            await self._post_failure(job, code, text)

    async def post_direct(self, job: Job, code: ErrorCode, text: str) -> None:
        """A direct message to the requester (``POST /users/@me/channels``, then the message): where the bot
        may not post in the channel any more, the one place left to say how the job ended."""
        channel = await self.client.create_dm(discord.Object(id=int(job.reply_context["user_id"])))
        await channel.send(content=failure_line(code, text))

    async def _post_failure(self, job: Job, code: ErrorCode, text: str) -> None:
        context = job.reply_context
        if token_alive(context):
            webhook = self._webhook(context)
            await webhook.send(content=failure_line(code, text), ephemeral=True, wait=True)
            if job.status_message_id:
                try:
                    await webhook.delete_message(int(job.status_message_id))
                except discord.HTTPException:
                    logger.info("could not remove the status of job %s", job.id)
            return
        channel = await self._channel(context)
        await channel.send(content=f"<@{context.get('user_id')}> {failure_line(code, text)}")
        if job.status_message_id:  # as above: no status (nor a half-painted preview) left above the failure
            try:
                await self.client.http.delete_message(int(context["channel_id"]), int(job.status_message_id))
            except discord.HTTPException:
                logger.info("could not remove the status of job %s", job.id)


# --------------------------------------------------------------------------- buttons and menus (survive restarts)


def picture_view(
    job_id: int, picture_id: int, core: ChatCore, *, with_job_controls: bool, upscalable: bool = True
) -> discord.ui.View:
    """A picture's controls: a row of rating buttons, its upscale button; on the job's last picture also re-roll
    and another style (three action rows of Discord's five).  An upscale carries its rating row only."""
    view = discord.ui.View(timeout=None)
    for score in RATING_SCORES:
        view.add_item(RateButton(picture_id, score))
    if upscalable:
        view.add_item(UpscaleButton(picture_id))
    if with_job_controls:
        view.add_item(RerollButton(job_id))
        view.add_item(RestyleSelect(job_id, core))
    return view


class RateButton(
    discord.ui.DynamicItem[discord.ui.Button], template=r"mmpp:rate:(?P<picture>[0-9]+):(?P<score>[0-9]+)"
):
    """One score for one picture; the core's rating path decides (one rating per rater and picture, the last
    choice wins).  The answer is private and one line."""

    def __init__(self, picture_id: int, score: int) -> None:
        super().__init__(
            discord.ui.Button(
                label=str(score), style=discord.ButtonStyle.secondary, custom_id=f"mmpp:rate:{picture_id}:{score}",
                row=0,
            )
        )  # fmt: skip
        self.picture_id = picture_id
        self.score = score

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str], /
    ) -> RateButton:
        return cls(int(match["picture"]), int(match["score"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        client: MmppClient = interaction.client  # type: ignore[assignment]
        try:
            await client.core.rate(person_of(interaction.user), self.picture_id, self.score, "button")
        except MmppError as error:
            await interaction.response.send_message(failure_line(error.code, error.message), ephemeral=True)
            return
        except Exception:  # ours (the database...): the person gets the one line, the log the traceback
            logger.exception("rating picture %s failed", self.picture_id)
            text = failure_line(ErrorCode.INTERNAL, texts.SOMETHING_WENT_WRONG)
            await interaction.response.send_message(text, ephemeral=True)
            return
        await interaction.response.send_message(texts.thanks_for_rating(self.score), ephemeral=True)


class RerollButton(discord.ui.DynamicItem[discord.ui.Button], template=r"mmpp:reroll:(?P<job>[0-9]+)"):
    def __init__(self, job_id: int) -> None:
        super().__init__(
            discord.ui.Button(
                label="Re-roll", emoji="🔁", style=discord.ButtonStyle.secondary, custom_id=f"mmpp:reroll:{job_id}",
                row=1,
            )
        )  # fmt: skip
        self.job_id = job_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str], /
    ) -> RerollButton:
        return cls(int(match["job"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        await run_followup_job(interaction, self.job_id, None)


class RestyleSelect(discord.ui.DynamicItem[discord.ui.Select], template=r"mmpp:restyle:(?P<job>[0-9]+)"):
    def __init__(self, job_id: int, core: ChatCore | None = None) -> None:
        options = [
            discord.SelectOption(
                label=texts.shorten(item.display_name, CHOICE_NAME_MAX), value=item.name, emoji=item.emoji or None
            )
            for item in (core.styles.values() if core else [])
            if len(item.name) <= CHOICE_NAME_MAX
        ][:CHOICES_MAX]
        select: discord.ui.Select = discord.ui.Select(
            placeholder="🎨 Another style", custom_id=f"mmpp:restyle:{job_id}",
            options=options or [discord.SelectOption(label="anime", value="anime")], row=2,
        )  # fmt: skip
        super().__init__(select)
        self.job_id = job_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str], /
    ) -> RestyleSelect:
        return cls(int(match["job"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        data: dict[str, Any] = dict(interaction.data or {})
        values = data.get("values") or []
        await run_followup_job(interaction, self.job_id, str(values[0]) if values else None)


class UpscaleButton(discord.ui.DynamicItem[discord.ui.Button], template=r"mmpp:upscale:(?P<picture>[0-9]+)"):
    """The picture at twice its size, as a file.  A stranger's press is refused privately at once (the core's
    check is a few reads); the requester's is deferred (within Discord's 3 s) before the job is ordered."""

    def __init__(self, picture_id: int) -> None:
        super().__init__(
            discord.ui.Button(
                label=texts.UPSCALE_LABEL, emoji="⬆️", style=discord.ButtonStyle.secondary,
                custom_id=f"mmpp:upscale:{picture_id}", row=1,
            )
        )  # fmt: skip
        self.picture_id = picture_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str], /
    ) -> UpscaleButton:
        return cls(int(match["picture"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        client: MmppClient = interaction.client  # type: ignore[assignment]
        presser = person_of(interaction.user)
        try:
            await client.core.check_upscale(presser, self.picture_id)
        except MmppError as error:
            await interaction.response.send_message(failure_line(error.code, error.message), ephemeral=True)
            return
        await interaction.response.defer(thinking=True)
        original = await interaction.original_response()
        context = {**interaction_context(interaction), "original_message_id": original.id}
        chat_id, server_id = where(interaction)
        try:
            job, created = await client.core.upscale(presser, self.picture_id, chat_id, context, server_id=server_id)
        except MmppError as error:
            await replace_with_ephemeral_error(interaction, error)
            return
        if not created:  # a second press: the first one's job is the answer, told privately
            try:
                await interaction.delete_original_response()
            except discord.HTTPException:
                logger.info("could not delete the deferred response")
            await interaction.followup.send(texts.already_upscaled(job.id), ephemeral=True)


async def run_followup_job(interaction: discord.Interaction, job_id: int, style: str | None) -> None:
    client: MmppClient = interaction.client  # type: ignore[assignment]
    await interaction.response.defer(thinking=True)
    original = await interaction.original_response()
    context = {**interaction_context(interaction), "original_message_id": original.id}
    chat_id, server_id = where(interaction)
    try:
        await client.core.reroll(
            person_of(interaction.user), job_id, f"interaction:{interaction.id}", chat_id, context,
            style=style, server_id=server_id,
        )  # fmt: skip
    except MmppError as error:
        await replace_with_ephemeral_error(interaction, error)


async def replace_with_ephemeral_error(interaction: discord.Interaction, error: MmppError) -> None:
    """After a public defer, an error should still be private: drop the public reply, send an ephemeral one."""
    try:
        await interaction.delete_original_response()
    except discord.HTTPException:
        logger.info("could not delete the deferred response")
    await interaction.followup.send(failure_line(error.code, error.message), ephemeral=True)


# --------------------------------------------------------------------------- the client


#: Discord's session-start rule: one IDENTIFY per this many seconds per bucket (``shard_id % max_concurrency``), for
#: all of a bot's processes together (https://discord.com/developers/docs/events/gateway#session-start-limit).
IDENTIFY_INTERVAL_SECONDS = 5.0
#: Booked IDENTIFY slots lie this much further apart than Discord's 5 s: the machines' wall clocks agree only as
#: closely as NTP keeps them, and an IDENTIFY sent on time may reach Discord later than the next one does.
IDENTIFY_SLOT_MARGIN_SECONDS = 0.5
#: How long booking a slot (or asking Discord for ``max_concurrency``) may take before this process paces its shards
#: on its own: a database or an API that does not answer must not hold a shard's connection back.
IDENTIFY_BOOKING_TIMEOUT_SECONDS = 5.0


def shard_of_guild(guild_id: int, shard_count: int) -> int:
    """The shard Discord sends a server's events on (https://discord.com/developers/docs/topics/gateway#sharding)."""
    return (guild_id >> 22) % shard_count


class MmppClient(discord.AutoShardedClient):
    """Sharded from the start: Discord refuses an unsharded connection once a bot is in 2,500 servers (4011).

    Without settings it asks the gateway how many shards to run and connects all of them; with
    ``MMPP_DISCORD_SHARD_COUNT`` and ``MMPP_DISCORD_SHARD_IDS`` several processes split them.  Their IDENTIFYs
    are paced together through the shared database (:meth:`before_identify_hook`), as Discord's session-start
    limit asks of all of a bot's processes.
    """

    def __init__(self, core: ChatCore, settings: BotSettings) -> None:
        # Default intents: guilds and reactions; no privileged message content.
        intents = discord.Intents.default()
        intents.message_content = False
        shard_count, shard_ids = settings.discord_shards()
        shards: dict[str, Any] = {"shard_count": shard_count} if shard_ids is None else {
            "shard_count": shard_count, "shard_ids": shard_ids,
        }  # fmt: skip
        super().__init__(intents=intents, guild_ready_timeout=settings.discord_guild_ready_timeout, **shards)
        # This client's own addresses (Discord's, or a loopback fake's), without touching discord.py's
        # class attributes: see bot/discord_app/endpoints.py.  Swapped in before anything holds the old one.
        self.endpoints = Endpoints(settings.discord_api_base, settings.discord_gateway_url)
        self.http = EndpointHTTPClient(self.loop, endpoints=self.endpoints)
        self._connection.http = self.http
        self.core = core
        self.settings = settings
        self.tree = app_commands.CommandTree(self)
        self.tree.on_error = self.on_tree_error  # type: ignore[method-assign]
        self.ready = asyncio.Event()
        self._identify_concurrency: int | None = None  # Discord's max_concurrency, once asked
        register_commands(self)

    async def setup_hook(self) -> None:
        self.add_dynamic_items(RateButton, RerollButton, RestyleSelect, UpscaleButton)
        if self.settings.discord_guild_id:
            guild = discord.Object(id=int(self.settings.discord_guild_id))
            self.tree.copy_global_to(guild=guild)
            await self.tree.sync(guild=guild)
        else:
            await self.tree.sync()

    async def on_ready(self) -> None:
        self.ready.set()

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        """Wait for this IDENTIFY's slot in its bucket, booked in the database the bot's processes share.

        Why: Discord allows one IDENTIFY per 5 s per bucket (``shard_id % max_concurrency``) across all of a bot's
        processes and answers one sooner with op 9 Invalid Session; discord.py only paces the shards of one process
        (5 s before each but its first), so two processes starting together would IDENTIFY in one bucket at once.
        Hence every IDENTIFY, a process's first included, books its slot (:meth:`Storage.book_identify_slot`).
        The slots are ``time.time()`` moments, not the event loop's clock: processes on several machines compare
        them, and the wall clock (kept by NTP) is the only clock those machines share.  Where no slot can be
        booked (the database does not answer), discord.py's own pacing serves, with one log line: a shard never
        fails to connect because of its pacing.
        """
        shard = shard_id or 0
        interval = IDENTIFY_INTERVAL_SECONDS + IDENTIFY_SLOT_MARGIN_SECONDS
        concurrency = await self.identify_concurrency()
        try:
            slot = await asyncio.wait_for(
                self.core.storage.book_identify_slot(shard % concurrency, time.time(), interval),
                IDENTIFY_BOOKING_TIMEOUT_SECONDS,
            )
        except Exception as error:  # noqa: BLE001 - whatever the database raised, the shard connects all the same
            logger.warning(
                "could not book an IDENTIFY slot for shard %s in the database (%s): pacing this process's shards only",
                shard, type(error).__name__,
            )  # fmt: skip
            await super().before_identify_hook(shard_id, initial=initial)
            return
        # The longest a slot can lie ahead when every shard of the bucket books once before this one; further is a
        # machine whose clock runs ahead, and waiting for it would hold the shard back for as long.
        longest = interval * (math.ceil((self.shard_count or 1) / concurrency) + 1)
        wait = slot - time.time()
        if wait > longest:
            logger.warning("the IDENTIFY slot of shard %s lies %.0f s ahead (a clock ahead?): waiting %.0f s", shard,
                           wait, longest)  # fmt: skip
            wait = longest
        if wait > 0:
            await asyncio.sleep(wait)

    async def identify_concurrency(self) -> int:
        """Discord's ``max_concurrency`` (the number of IDENTIFY buckets), asked once: discord.py keeps it nowhere,
        and a process with shard settings does not even ask for it.  Where Discord does not say, 1: every shard in
        one bucket, the slowest pacing and so never too fast."""
        if self._identify_concurrency is None:
            try:
                limits = await asyncio.wait_for(self.fetch_session_start_limits(), IDENTIFY_BOOKING_TIMEOUT_SECONDS)
            except Exception as error:  # noqa: BLE001 - whatever went wrong, one bucket is always slow enough
                logger.warning("could not read max_concurrency from Discord (%s): pacing in one bucket",
                               type(error).__name__)  # fmt: skip
                return 1
            self._identify_concurrency = max(1, int(limits.max_concurrency))
        return self._identify_concurrency

    def owned_shards(self) -> list[int]:
        """The shards this process connects: its settings', else all the gateway recommended (known once
        connecting began; before, shard 0 of 1)."""
        if self.shard_ids is not None:
            return list(self.shard_ids)
        return list(range(self.shard_count or 1))

    async def on_raw_reaction_add(self, payload: discord.RawReactionActionEvent) -> None:
        if self.user is not None and payload.user_id == self.user.id:
            return  # the bot's own reactions are no ratings (it adds none, but a server admin could make it)
        rater = Person(PLATFORM, str(payload.user_id), payload.member.display_name if payload.member else "")
        await self.core.reaction_added(rater, str(payload.message_id), str(payload.emoji))

    async def on_raw_reaction_remove(self, payload: discord.RawReactionActionEvent) -> None:
        if self.user is not None and payload.user_id == self.user.id:
            return
        await self.core.reaction_removed(
            Person(PLATFORM, str(payload.user_id)), str(payload.message_id), str(payload.emoji)
        )

    async def on_tree_error(self, interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
        original = getattr(error, "original", error)
        if isinstance(original, MmppError):
            text = failure_line(original.code, original.message)
        elif isinstance(error, app_commands.TransformerError):
            text = failure_line(ErrorCode.INVALID_REQUEST, f"I could not read the value {str(error.value)[:40]!r}.")
        else:
            logger.error("command failed: %s", type(original).__name__, exc_info=original)
            text = failure_line(ErrorCode.INTERNAL, texts.SOMETHING_WENT_WRONG)
        try:
            if interaction.response.is_done():
                await interaction.followup.send(text, ephemeral=True)
            else:
                await interaction.response.send_message(text, ephemeral=True)
        except discord.HTTPException:
            logger.warning("could not send the error reply")


def register_commands(client: MmppClient) -> None:
    core = client.core

    @client.tree.command(name="profile", description="Turn your selfie into profile pictures")
    @app_commands.describe(
        photo=f"a clear selfie: one face, {texts.accepted_photos()}",
        style="the style of the pictures (without it: your default style, see /settings)",
        prompt="who or what you are in the picture (optional)",
        count="how many pictures, 1-4",
        mode="fast (a few seconds) or quality (slower, finer)",
    )
    async def profile(
        interaction: discord.Interaction,
        photo: discord.Attachment,
        style: str | None = None,
        prompt: str | None = None,
        count: app_commands.Range[int, 1, MAX_PICTURES] | None = None,
        mode: Literal["fast", "quality"] | None = None,
    ) -> None:
        # Only what was given: what was not is the person's default (/settings) or the style's.
        options = {"style": style or "", "prompt": prompt or ""}
        if count is not None:
            options["count"] = str(count)
        if mode:
            options["mode"] = mode
        checking = asyncio.ensure_future(core.check_order(person_of(interaction.user), options))
        deferred = not (await asyncio.wait({checking}, timeout=CHECK_BEFORE_DEFER_SECONDS))[0]
        if deferred:
            await interaction.response.defer(thinking=True)
        try:
            await checking
            core.check_photo(photo.size, photo.content_type)  # before downloading it
        except MmppError as error:
            if deferred:
                await replace_with_ephemeral_error(interaction, error)
            else:
                await interaction.response.send_message(failure_line(error.code, error.message), ephemeral=True)
            return
        if not deferred:
            await interaction.response.defer(thinking=True)
        try:
            data = await photo.read()
        except discord.HTTPException:
            await replace_with_ephemeral_error(
                interaction, MmppError(ErrorCode.NOT_AN_IMAGE, "I could not download the photo; please try again.")
            )
            return
        original = await interaction.original_response()
        context = {**interaction_context(interaction), "original_message_id": original.id}
        chat_id, server_id = where(interaction)
        order = ProfileOrder(
            person_of(interaction.user), f"interaction:{interaction.id}", chat_id, context, options, data,
            server_id=server_id, photo_type=photo.content_type,
        )  # fmt: skip
        try:
            await core.order_profile(order)
        except MmppError as error:
            await replace_with_ephemeral_error(interaction, error)

    @profile.autocomplete("style")
    async def style_autocomplete(interaction: discord.Interaction, typed: str) -> list[app_commands.Choice[str]]:
        # Autocomplete rather than fixed choices: the catalogue can change without
        # waiting up to an hour for Discord to pick up re-registered commands.
        typed = typed.lower().strip()
        return [
            app_commands.Choice(
                name=texts.shorten(f"{item.emoji} {item.display_name}", CHOICE_NAME_MAX), value=item.name
            )
            for item in core.styles.values()
            if typed in item.name or typed in item.display_name.lower()
        ][:CHOICES_MAX]

    @client.tree.command(name="styles", description="List the styles")
    async def styles(interaction: discord.Interaction) -> None:
        await interaction.response.send_message(embeds=style_embeds(core), ephemeral=True)

    @client.tree.command(name="history", description="Your recent jobs")
    async def history(interaction: discord.Interaction) -> None:
        text = await core.history_text(person_of(interaction.user))
        await interaction.response.send_message(fit(text), ephemeral=True)

    @client.tree.command(name="forget", description="Delete everything this bot stored about you")
    async def forget(interaction: discord.Interaction) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        await interaction.followup.send(await core.forget(person_of(interaction.user)), ephemeral=True)

    @client.tree.command(name="help", description="How to use this bot")
    async def help_command(interaction: discord.Interaction) -> None:
        text = await core.help_for(person_of(interaction.user), HOW_TO_ORDER)
        await interaction.response.send_message(fit(text), ephemeral=True)

    # Fixed choices, as Discord shows them (at most 25; a longer catalogue offers its first 25 here, and every
    # style stays orderable by name in /profile).
    style_choices = [
        app_commands.Choice(name=texts.shorten(f"{item.emoji} {item.display_name}", CHOICE_NAME_MAX), value=item.name)
        for item in core.styles.values()
        if len(item.name) <= CHOICE_NAME_MAX
    ][:CHOICES_MAX]

    @client.tree.command(name="settings", description="Your defaults for /profile: style, mode, count, prompt suffix")
    @app_commands.describe(
        style="your default style",
        mode="your default mode: fast or quality",
        count="how many pictures by default, 1-4",
        suffix="words added after every prompt of yours (none: remove it)",
        clear="remove all your defaults (before setting the ones given here)",
    )
    @app_commands.choices(style=style_choices)
    async def settings(
        interaction: discord.Interaction,
        style: str | None = None,
        mode: Literal["fast", "quality"] | None = None,
        count: app_commands.Range[int, 1, MAX_PICTURES] | None = None,
        suffix: app_commands.Range[str, 1, MAX_SUFFIX_CHARACTERS] | None = None,
        clear: bool = False,
    ) -> None:
        """Without options it shows the defaults; the reply is private either way."""
        given = {"style": style, "mode": mode, "count": None if count is None else str(count), "suffix": suffix}
        typed = parse_settings_text((), {key: value for key, value in given.items() if value is not None})
        text = await core.change_settings(person_of(interaction.user), SettingsRequest(typed.changes, clear=clear))
        await interaction.response.send_message(fit(text), ephemeral=True)


def style_embeds(core: ChatCore) -> list[discord.Embed]:
    """The catalogue as embeds within Discord's limits: 25 fields an embed, 10 embeds, 6000 characters in all
    (a catalogue too long for one message lists what fits; the autocomplete still offers every style)."""
    embeds: list[discord.Embed] = []
    characters = len("Styles")
    for item in core.styles.values():
        name, value = f"{item.emoji} {item.display_name} (`{item.name}`)", item.description
        characters += len(name) + len(value)
        if characters > EMBED_CHARACTERS_MAX:
            break
        if not embeds or len(embeds[-1].fields) == EMBED_FIELDS_MAX:
            if len(embeds) == EMBEDS_MAX:
                break
            embeds.append(discord.Embed(title=None if embeds else "Styles", colour=discord.Colour.blurple()))
        embeds[-1].add_field(name=name, value=value, inline=False)
    return embeds


class DiscordAdapter:
    def __init__(self, core: ChatCore, settings: BotSettings, token: str | None = None) -> None:
        self.settings = settings
        self.token = token or settings.discord_token.get_secret_value()
        self.client = MmppClient(core, settings)
        self.delivery = DiscordDelivery(self.client)
        core.attach(self.delivery)
        self._runner: asyncio.Task[None] | None = None

    async def open(self) -> None:
        """Log in and wait for READY, so resumed jobs can be delivered at once."""
        await self.client.login(self.token)
        # Every event handler runs in a task started from this one, so inherits its context: the webhook
        # requests of interactions go to this client's endpoints.
        self._runner = asyncio.create_task(self.client.connect(reconnect=True), context=self.client.endpoints.context())
        ready = asyncio.create_task(self.client.ready.wait())
        done, _ = await asyncio.wait({ready, self._runner}, return_when=asyncio.FIRST_COMPLETED)
        if self._runner in done:
            ready.cancel()
            self._runner.result()

    def healthy(self) -> bool:
        return self.client.is_ready() and not self.client.is_closed()

    async def run(self) -> None:
        if self._runner is not None:
            await self._runner

    async def close(self) -> None:
        await self.client.close()
        if self._runner is not None:
            self._runner.cancel()
            await asyncio.gather(self._runner, return_exceptions=True)
