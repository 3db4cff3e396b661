"""ChatCore: the one object the adapters talk to, composed of the core's parts.

Each part owns one thing: :mod:`bot.core.jobs` the job lifecycle, :mod:`bot.core.ratings`
ratings and reactions, :mod:`bot.core.moderation` who may ask for what, :mod:`bot.core.texts`
what people read, :mod:`bot.core.choices` photos waiting for a style.  This facade only
forwards, so adapters (and tests) call one object whatever part decides.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime
from typing import Any

from bot.core import texts
from bot.core.choices import PendingChoice, PendingChoices
from bot.core.commands import ProfileOptions
from bot.core.jobs import Jobs, check_photo
from bot.core.moderation import Moderation, PromptFilter
from bot.core.person_settings import SettingsRequest, parse_settings_text
from bot.core.platform import Delivery, Person, ProfileOrder
from bot.core.ratings import Ratings, rating_of_reactions, score_for_reaction
from bot.queue import JobQueue
from bot.settings import BotSettings
from bot.storage import Job, PersonSettings, Storage, StoredPicture, utc_now
from mmpp.catalogue import Catalogue, Style, load_catalogue

#: How long a chat where the bot sees reactions is believed to stay so before the platform is asked again.
REACTIONS_RECHECK_SECONDS = 3600.0


class ChatCore:
    def __init__(
        self,
        storage: Storage,
        queue: JobQueue,
        settings: BotSettings,
        catalogue: Catalogue | None = None,
        clock: Callable[[], datetime] = utc_now,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        """``clock`` is the core's now (quotas, selfie retention), ``sleep`` how it waits between selfie purges;
        tests turn both by hand."""
        self.storage = storage
        self.queue = queue
        self.settings = settings
        # The same catalogue, read by the same code, as the worker's: a style the
        # menu offers is a style the worker knows, and UNKNOWN_STYLE needs no round trip.
        self.catalogue = catalogue if catalogue is not None else load_catalogue(settings.styles_file)
        self.styles = {style.name: style for style in self.catalogue}
        self.moderation = Moderation(storage, settings, clock)
        self.jobs = Jobs(storage, queue, settings, self.catalogue, self.moderation, clock, sleep=sleep)
        self.ratings = Ratings(storage, self.jobs)
        self.defaults = self.jobs.defaults
        self.pending_choices = PendingChoices()
        self._monotonic = time.monotonic
        #: Chats where the bot was found to see reactions, and when (see :meth:`reactions_notice`).
        self._reactions_seen: dict[tuple[str, str], float] = {}

    @property
    def admins(self) -> set[tuple[str, str]]:
        return self.moderation.admins

    @property
    def denied(self) -> set[tuple[str, str]]:
        return self.moderation.denied

    @property
    def prompt_filter(self) -> PromptFilter:
        return self.moderation.prompt_filter

    # ------------------------------------------------------------------ lifecycle

    def attach(self, delivery: Delivery) -> None:
        self.jobs.attach(delivery)

    async def start(self) -> None:
        """Resume every undelivered job of the attached platforms."""
        await self.jobs.start()

    async def stop(self) -> None:
        await self.jobs.stop()

    async def wait_idle(self, timeout: float | None = None) -> None:
        """Wait until every followed job has been delivered (console and tests)."""
        await self.jobs.wait_idle(timeout)

    def rate_limited(self, platform: str, chat_id: str, retry_after: float) -> None:
        """The platform refused a request in a chat as too many: its status edits wait and then slow down
        (:meth:`bot.core.status.StatusEdits.hold`), so pictures and replies keep the chat's budget."""
        self.jobs.status_edits.hold(platform, chat_id, retry_after)

    async def reactions_notice(
        self, platform: str, chat_id: str, bot_sees_reactions: Callable[[], Awaitable[bool]]
    ) -> str | None:
        """The line to post in a chat where people's reactions never reach the bot, once per chat (durably);
        ``None`` when it was given before or is not needed.

        ``bot_sees_reactions`` asks the platform (a request): it is asked only while the notice has
        not been given, and a chat where the bot sees them is asked again after
        :data:`REACTIONS_RECHECK_SECONDS` (it may lose the rights that made it see them).
        """
        chat = (platform, chat_id)
        checked = self._reactions_seen.get(chat)
        if checked is not None and self._monotonic() - checked < REACTIONS_RECHECK_SECONDS:
            return None
        if await self.storage.chat_notice_given(platform, chat_id, texts.REACTIONS_UNSEEN_NOTICE):
            return None
        if await bot_sees_reactions():
            if len(self._reactions_seen) > 4096:
                self._reactions_seen.clear()
            self._reactions_seen[chat] = self._monotonic()
            return None
        if not await self.storage.take_chat_notice(platform, chat_id, texts.REACTIONS_UNSEEN_NOTICE):
            return None  # another update of the same chat took it meanwhile
        return texts.REACTIONS_UNSEEN

    # ------------------------------------------------------------------ ordering

    def style_names(self) -> list[str]:
        return list(self.styles)

    def check_style(self, name: str | None) -> Style:
        return self.jobs.check_style(name)

    def check_profile(self, options: dict[str, str]) -> tuple[ProfileOptions, Style]:
        """The checks that need no photo, so adapters can refuse before downloading one."""
        return self.jobs.check_profile(options)

    def check_photo(self, size: int | None, mime_type: str | None) -> None:
        """What the platform says about a photo (size, declared type), checked before downloading it."""
        check_photo(size, mime_type)

    async def order_profile(self, order: ProfileOrder) -> tuple[Job, bool]:
        """Validate, check quotas, write the job, post its status and enqueue it; ``(job, created)``."""
        return await self.jobs.order_profile(order)

    async def order_options(self, person: Person, options: dict[str, str]) -> dict[str, str]:
        """The options an order of ``person`` will have once their defaults complete it (to decide, before a
        download, whether a style is still missing); hand :meth:`order_profile` the options as typed."""
        return await self.defaults.order_options(person, options)

    async def check_order(self, person: Person, options: dict[str, str]) -> tuple[ProfileOptions, Style]:
        """:meth:`check_profile` of the order as the person's defaults complete it, before a photo is downloaded."""
        return self.check_profile(await self.order_options(person, options))

    async def reroll(
        self, requester: Person, job_id: int, event_key: str, chat_id: str, reply_context: dict[str, Any],
        style: str | None = None, server_id: str | None = None,
    ) -> tuple[Job, bool]:  # fmt: skip
        """Same selfie, new seed; with ``style``, the same selfie in another style."""
        return await self.jobs.reroll(requester, job_id, event_key, chat_id, reply_context, style, server_id)

    async def upscale(
        self, requester: Person, picture_id: int, chat_id: str, reply_context: dict[str, Any],
        server_id: str | None = None,
    ) -> tuple[Job, bool]:  # fmt: skip
        """One picture at twice its size, as a job of its own; only its requester may, once per picture."""
        return await self.jobs.upscale(requester, picture_id, chat_id, reply_context, server_id)

    async def check_upscale(self, requester: Person, picture_id: int) -> None:
        """Refuse (``MmppError``) a press of a picture's upscale control that :meth:`upscale` would refuse."""
        await self.jobs.check_upscale(requester, picture_id)

    async def upscale_job_picture(
        self, requester: Person, job_id: int, position: int, chat_id: str, reply_context: dict[str, Any]
    ) -> tuple[Job, bool]:
        return await self.jobs.upscale_job_picture(requester, job_id, position, chat_id, reply_context)

    def await_style(self, owner: Person, photo: Any, options: dict[str, str]) -> str:
        """Keep a photo sent without a style until its owner picks one; the token for the buttons."""
        return self.pending_choices.put(owner, photo, options)

    def take_style_choice(self, token: str, chooser: Person, style: str) -> PendingChoice:
        """The photo waiting under ``token`` with ``style`` chosen, checked before it is downloaded."""
        choice = self.pending_choices.take(token, chooser)
        options = {**choice.options, "style": style}
        self.check_profile(options)
        return PendingChoice(choice.owner, choice.photo, options, choice.created)

    # ------------------------------------------------------------------ ratings

    async def rate(self, rater: Person, picture_id: int, stars: int | None, source: str) -> StoredPicture:
        return await self.ratings.rate(rater, picture_id, stars, source)

    async def rate_message(self, rater: Person, message_ref: str, stars: int | None, source: str) -> bool:
        """A reaction on a posted picture; ``False`` when the message is not one of ours."""
        return await self.ratings.rate_message(rater, message_ref, stars, source)

    async def reaction_added(self, rater: Person, message_ref: str, emoji: str) -> bool:
        """One reaction added (Discord): a rating if the emoji means one, else nothing."""
        stars = score_for_reaction(emoji)
        if stars is None:
            return False
        return await self.rate_message(rater, message_ref, stars, "reaction")

    async def reaction_removed(self, rater: Person, message_ref: str, emoji: str) -> bool:
        """One reaction removed (Discord): withdraws the rating only if it was the one in force."""
        stars = score_for_reaction(emoji)
        if stars is None:
            return False
        return await self.withdraw_reaction(rater, message_ref, stars)

    async def reactions_now(self, rater: Person, message_ref: str, emojis: Iterable[str]) -> bool:
        """All of someone's reactions on a picture now (Telegram): the last rating among them wins."""
        return await self.rate_message(rater, message_ref, rating_of_reactions(emojis), "reaction")

    async def withdraw_reaction(self, rater: Person, message_ref: str, stars: int) -> bool:
        return await self.ratings.withdraw_reaction(rater, message_ref, stars)

    async def rate_job_picture(self, rater: Person, job_id: int, position: int, stars: int, source: str) -> None:
        await self.ratings.rate_job_picture(rater, job_id, position, stars, source)

    # ------------------------------------------------------------------ per-person settings

    async def settings_of(self, person: Person) -> PersonSettings | None:
        return await self.defaults.of(person)

    async def change_settings(self, person: Person, request: SettingsRequest) -> str:
        """Show, change or clear the person's defaults (:mod:`bot.core.person_settings`); the reply."""
        return await self.defaults.change(person, request)

    async def settings_command(self, person: Person, arguments: tuple[str, ...], options: dict[str, str]) -> str:
        """``/settings`` as typed (console, Telegram): ``key:value`` options, ``clear``, or nothing to show them."""
        return await self.change_settings(person, parse_settings_text(arguments, options))

    # ------------------------------------------------------------------ information

    def styles_text(self) -> str:
        return texts.styles_text(self.styles.values())

    def help_text(self, how_to_order: str) -> str:
        return texts.help_text(self.styles, self.settings.selfie_retention_hours, how_to_order)

    async def help_for(self, person: Person, how_to_order: str) -> str:
        """The help, with the person's own defaults (/settings) in it."""
        defaults = texts.settings_text(await self.settings_of(person))
        return texts.help_text(self.styles, self.settings.selfie_retention_hours, how_to_order, defaults)

    def privacy_notice(self) -> str:
        return texts.privacy_notice(self.settings.selfie_retention_hours)

    async def history_text(self, person: Person) -> str:
        user_id = await self.storage.find_user(person.platform, person.user_id)
        return texts.history_text(await self.storage.recent_jobs(user_id) if user_id is not None else [])

    async def forget(self, person: Person) -> str:
        """Delete the person, their jobs, selfies, pictures and ratings, and their results in the broker."""
        return await self.jobs.forget(person)
