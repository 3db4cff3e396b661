"""The chat core: validation, quotas, the job lifecycle and feedback.

A job's life: the row (with the selfie) is written first, then the status
message is posted, then the job is enqueued by task name with the job's own
task id.  A follower polls the result backend, edits the status message,
stores the pictures, hands them to the platform adapter, and marks the job
delivered.  If the bot dies anywhere in between, :meth:`ChatCore.start`
picks every undelivered job up again: it re-sends what was never enqueued
(same task id, so the worker's result is shared) and delivers what finished.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from bot import metrics
from bot.core.commands import ProfileOptions, profile_options
from bot.queue import JobQueue
from bot.settings import BotSettings
from bot.storage import Job, Storage, StoredPicture, timestamp, utc_now
from mmpp.catalogue import Catalogue, Style, load_catalogue
from mmpp.contract import GenerateRequest, GenerateResult, Mode, queue_for
from mmpp.errors import ErrorCode, MmppError
from mmpp.feedback import summarise
from mmpp.stats import mean_interval  # noqa: F401 - tests import it from here until the split

logger = logging.getLogger(__name__)

#: What a 1-5 rating means, shown in help texts.
RATING_SCALE = "1 = poor, 3 = fine, 5 = love it"

#: Reactions that count as ratings.  Discord offers the keycaps 1️⃣-5️⃣ under
#: each picture; Telegram only allows its fixed reaction set, so common ones
#: are mapped onto the same 1-5 scale.  Any other reaction is not a rating.
REACTION_SCORES: dict[str, int] = {
    "1️⃣": 1, "2️⃣": 2, "3️⃣": 3, "4️⃣": 4, "5️⃣": 5,
    "🔥": 5, "😍": 5, "🤩": 5, "🏆": 5, "💯": 5, "❤": 5, "❤️": 5, "❤‍🔥": 5,
    "👍": 4, "👏": 4, "👌": 4, "🥰": 4, "🎉": 4,
    "🤔": 3, "😐": 3, "🤷": 3,
    "👎": 2, "😢": 2, "🥱": 2,
    "💩": 1, "🤮": 1, "😡": 1, "🤡": 1,
}  # fmt: skip
RATING_KEYCAPS = ["1️⃣", "2️⃣", "3️⃣", "4️⃣", "5️⃣"]
#: Pauses between attempts to deliver a finished job while the platform fails.
DELIVERY_RETRY_FIRST_SECONDS = 2.0
DELIVERY_RETRY_MAX_SECONDS = 300.0
#: How many times a reaction on a not-yet-known message looks again (about 1.5 s in all).
REACTION_WAIT_ATTEMPTS = 5


def score_for_reaction(emoji: str) -> int | None:
    return REACTION_SCORES.get(emoji)


@dataclass(frozen=True)
class Person:
    """Someone on a platform; ``user_id`` is the platform's own id."""

    platform: str
    user_id: str
    display_name: str = ""


@dataclass(frozen=True)
class ProfileOrder:
    """A request for profile pictures, as an adapter hands it over."""

    requester: Person
    event_key: str
    chat_id: str
    reply_context: dict[str, Any]
    options: dict[str, str] = field(default_factory=dict)
    photo: bytes | None = None


def parse_people(text: str) -> set[tuple[str, str]]:
    """``"discord:1,telegram:2"`` → ``{("discord", "1"), ("telegram", "2")}``."""
    people = set()
    for item in text.split(","):
        platform, _, user_id = item.strip().partition(":")
        if platform and user_id:
            people.add((platform.strip().lower(), user_id.strip()))
    return people


class PromptFilter:
    """Refuses prompts containing configured words or phrases (whole words, any case).

    Whole words, so that a deny-listed "ass" does not refuse "glasses"; the
    prompt is normalised (case, accents folded, punctuation as spaces, spelled
    out letters joined) so that "N.U.D.E" is caught along with the plain word.
    """

    def __init__(self, phrases: list[str]) -> None:
        import re

        cleaned = sorted({" ".join(self.normalise(phrase).split()) for phrase in phrases if phrase.strip()})
        cleaned = [phrase for phrase in cleaned if phrase]
        self._pattern = (
            re.compile(r"(?<![\w])(" + "|".join(re.escape(phrase) for phrase in cleaned) + r")(?![\w])")
            if cleaned
            else None
        )

    @staticmethod
    def normalise(text: str) -> str:
        import unicodedata

        folded = unicodedata.normalize("NFKD", text.casefold())
        letters = "".join(character for character in folded if not unicodedata.combining(character))
        return " ".join("".join(ch if ch.isalnum() else " " for ch in letters).split())

    def blocked(self, prompt: str) -> str | None:
        if self._pattern is None or not prompt:
            return None
        normalised = self.normalise(prompt)
        match = self._pattern.search(normalised) or self._pattern.search(self._join_spelled_out(normalised))
        return match.group(1) if match else None

    @staticmethod
    def _join_spelled_out(text: str) -> str:
        """``"a portrait n u d e"`` → ``"a portrait nude"``: runs of single letters become one word."""
        words: list[str] = []
        run: list[str] = []
        for token in [*text.split(), ""]:
            if len(token) == 1:
                run.append(token)
                continue
            if run:
                words.append("".join(run) if len(run) > 1 else run[0])
                run = []
            if token:
                words.append(token)
        return " ".join(words)

    @classmethod
    def from_settings(cls, settings: BotSettings) -> PromptFilter:
        phrases = [item for item in settings.prompt_deny_list.split(",")]
        if settings.prompt_deny_file is not None:
            phrases += settings.prompt_deny_file.read_text(encoding="utf-8").splitlines()
        return cls(phrases)


PostedCallback = Callable[[StoredPicture, str], Awaitable[None]]


class Delivery(Protocol):
    """What an adapter implements so the core can talk on its platform."""

    platform: str
    #: Seconds between two edits of a status message (platform rate limits).
    status_edit_interval: float

    async def post_status(self, job: Job, text: str) -> str | None: ...

    async def edit_status(self, job: Job, message_ref: str, text: str) -> None: ...

    async def post_pictures(
        self, job: Job, pictures: list[StoredPicture], caption: str, on_posted: PostedCallback
    ) -> None:
        """Post the pictures; call ``on_posted(picture, message_ref)`` as soon as each exists.

        Right away, before adding rating controls: people react within
        milliseconds, and a reaction on a message the core does not know yet
        would be lost.
        """

    async def post_failure(self, job: Job, code: ErrorCode, text: str) -> None: ...

    async def post_notice(self, job: Job, text: str) -> None: ...


class ChatCore:
    def __init__(
        self,
        storage: Storage,
        queue: JobQueue,
        settings: BotSettings,
        catalogue: Catalogue | None = None,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.storage = storage
        self.queue = queue
        self.settings = settings
        # The same catalogue, read by the same code, as the worker's: a style the
        # menu offers is a style the worker knows, and UNKNOWN_STYLE needs no round trip.
        self.catalogue = catalogue if catalogue is not None else load_catalogue(settings.styles_file)
        self.styles = {style.name: style for style in self.catalogue}
        self._clock = clock
        self._deliveries: dict[str, Delivery] = {}
        self.admins = parse_people(settings.admins)
        self.denied = parse_people(settings.denied_users)
        self.prompt_filter = PromptFilter.from_settings(settings)
        self._followers: dict[int, asyncio.Task[None]] = {}
        self._housekeeping: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ lifecycle

    def attach(self, delivery: Delivery) -> None:
        self._deliveries[delivery.platform] = delivery

    async def start(self) -> None:
        """Resume every undelivered job of the attached platforms."""
        await self.storage.purge_expired_selfies()
        for job in await self.storage.undelivered_jobs(list(self._deliveries)):
            logger.info("resuming job %s (%s)", job.id, job.state)
            if job.enqueued_at is None and job.state == "queued":
                await self._enqueue(job)
            self._follow(job)
        self._housekeeping = asyncio.create_task(self._purge_periodically())

    async def stop(self) -> None:
        tasks = [*self._followers.values(), *([self._housekeeping] if self._housekeeping else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._followers.clear()

    async def wait_idle(self, timeout: float | None = None) -> None:
        """Wait until every followed job has been delivered (console and tests)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._followers:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if remaining == 0.0:
                raise TimeoutError("jobs still running")
            await asyncio.wait(list(self._followers.values()), timeout=remaining)

    async def _purge_periodically(self) -> None:
        while True:
            await asyncio.sleep(600)
            try:
                await self.storage.purge_expired_selfies()
            except Exception:
                logger.exception("purging expired selfies failed")

    # ------------------------------------------------------------------ ordering

    def style_names(self) -> list[str]:
        return list(self.styles)

    def check_style(self, name: str | None) -> Style:
        if not name:
            raise MmppError(ErrorCode.UNKNOWN_STYLE, f"Name a style: {', '.join(self.styles)}.")
        return self.catalogue.get(name)

    def check_profile(self, options: dict[str, str]) -> tuple[ProfileOptions, Style]:
        """The checks that need no photo, so adapters can refuse before downloading one."""
        parsed = profile_options(options)
        return parsed, self.check_style(parsed.style)

    async def order_profile(self, order: ProfileOrder) -> tuple[Job, bool]:
        """Validate, check quotas, write the job, post its status and enqueue it.

        Returns ``(job, created)``; for a duplicate delivery of the same
        platform event the existing job comes back with ``created`` false and
        nothing is posted or enqueued again.
        """
        options, style = self.check_profile(order.options)
        if not order.photo:
            raise MmppError(ErrorCode.NOT_AN_IMAGE, "Attach a selfie: one clear photo of your face.")
        return await self._create_job(
            order.requester, order.event_key, order.chat_id, order.reply_context, style.name,
            options.prompt, options.mode, options.count, options.seed, order.photo, parent_job_id=None,
        )  # fmt: skip

    async def reroll(
        self, requester: Person, job_id: int, event_key: str, chat_id: str, reply_context: dict[str, Any],
        style: str | None = None,
    ) -> tuple[Job, bool]:  # fmt: skip
        """Same selfie, new seed; with ``style``, the same selfie in another style."""
        parent = await self.storage.job(job_id)
        if parent is None or parent.platform != requester.platform:
            raise MmppError(ErrorCode.NOT_FOUND, f"There is no job {job_id}.")
        owner = await self.storage.user_id(requester.platform, requester.user_id, requester.display_name)
        if owner != parent.user_id:
            raise MmppError(ErrorCode.INVALID_REQUEST, "Only the person who sent the selfie can make more from it.")
        selfie = await self.storage.selfie(parent.id, self._clock())
        if selfie is None:
            hours = self.settings.selfie_retention_hours
            raise MmppError(
                ErrorCode.NOT_FOUND,
                f"The selfie of job {job_id} is no longer kept (selfies are deleted {hours:g} h after their job); "
                "send it again.",
            )
        chosen = self.check_style(style).name if style else parent.style
        return await self._create_job(
            requester, event_key, chat_id, reply_context, chosen, parent.prompt, parent.mode,
            parent.picture_count, None, selfie, parent_job_id=parent.id,
        )  # fmt: skip

    async def _create_job(
        self, requester: Person, event_key: str, chat_id: str, reply_context: dict[str, Any], style: str,
        prompt: str, mode: str | None, count: int, seed: int | None, selfie: bytes, parent_job_id: int | None,
    ) -> tuple[Job, bool]:  # fmt: skip
        request = GenerateRequest(
            selfie=selfie, style=style, prompt=prompt, mode=Mode(mode) if mode else None, count=count, seed=seed
        )
        if (requester.platform, requester.user_id) in self.denied:
            raise MmppError(ErrorCode.NOT_ALLOWED, "You are not allowed to use this bot here.")
        try:
            request.validate()
        except MmppError as error:
            raise MmppError(error.code, error.message) from None
        blocked = self.prompt_filter.blocked(prompt)
        if blocked:
            raise MmppError(ErrorCode.PROMPT_BLOCKED, f"The prompt contains '{blocked}', which is not allowed here.")
        user_id = await self.storage.user_id(requester.platform, requester.user_id, requester.display_name)
        existing = await self.storage.job_by_event(requester.platform, event_key)
        if existing is not None:
            return existing, False
        if (requester.platform, requester.user_id) not in self.admins:
            await self._check_quota(user_id, count)
            await self._check_chat_quota(requester.platform, chat_id, count)
        job, created = await self.storage.create_job(
            task_id=str(uuid.uuid4()), user_id=user_id, platform=requester.platform, event_key=event_key,
            chat_id=chat_id, style=style, prompt=prompt, mode=mode, picture_count=count, seed=seed, selfie=selfie,
            reply_context=reply_context, parent_job_id=parent_job_id,
        )  # fmt: skip
        if not created:
            return job, False
        metrics.JOBS_CREATED.labels(job.platform).inc()
        delivery = self._deliveries.get(job.platform)
        if delivery is not None:
            try:
                ref = await delivery.post_status(job, await self._status_text(job))
                if ref:
                    await self.storage.update_job(job.id, status_message_id=ref)
                    job = await self._reload(job)
            except Exception:
                logger.exception("posting the status of job %s failed; the job goes on", job.id)
        # After the status: on Discord the first follow-up fills the public
        # "thinking" message, and the notice must stay private.
        if delivery is not None and await self.storage.take_privacy_notice(user_id):
            try:
                await delivery.post_notice(job, self.privacy_notice())
            except Exception:
                logger.exception("posting the privacy notice of job %s failed", job.id)
        await self._enqueue(job)
        self._follow(job)
        return job, True

    async def _check_quota(self, user_id: int, count: int) -> None:
        pending = await self.storage.pending_jobs(user_id)
        if pending >= self.settings.max_pending_jobs:
            raise MmppError(
                ErrorCode.QUOTA_EXCEEDED,
                f"You already have {pending} job{'s' if pending != 1 else ''} in progress; wait until they are done.",
            )
        now = self._clock()
        day_start = datetime(now.year, now.month, now.day, tzinfo=UTC)
        used = await self.storage.pictures_requested_since(user_id, day_start)
        quota = self.settings.daily_picture_quota
        if used + count > quota:
            reset = day_start + timedelta(days=1)
            minutes = max(1, int((reset - now).total_seconds() // 60))
            raise MmppError(
                ErrorCode.QUOTA_EXCEEDED,
                f"You have used {used} of your {quota} pictures for today; the quota resets at 00:00 UTC "
                f"(in {minutes // 60} h {minutes % 60} min).",
            )

    async def _check_chat_quota(self, platform: str, chat_id: str, count: int) -> None:
        now = self._clock()
        day_start = datetime(now.year, now.month, now.day, tzinfo=UTC)
        used = await self.storage.pictures_requested_in_chat_since(platform, chat_id, day_start)
        quota = self.settings.chat_daily_picture_quota
        if used + count > quota:
            minutes = max(1, int((day_start + timedelta(days=1) - now).total_seconds() // 60))
            raise MmppError(
                ErrorCode.QUOTA_EXCEEDED,
                f"This chat has used its {quota} pictures for today; the quota resets at 00:00 UTC "
                f"(in {minutes // 60} h {minutes % 60} min).",
            )

    def privacy_notice(self) -> str:
        hours = self.settings.selfie_retention_hours
        kept = f"then for {hours:g} h so you can re-roll, then it is deleted" if hours > 0 else "then it is deleted"
        return (
            "Privacy: your selfie is biometric data. I keep it only while your pictures are made, "
            f"{kept}. I store the pictures, your ratings and your job list to improve the styles; "
            "/forget deletes all of it at any time."
        )

    async def _enqueue(self, job: Job) -> None:
        selfie = await self.storage.selfie(job.id)
        if selfie is None:
            await self._finish_failed(job, ErrorCode.NOT_FOUND, "The selfie for this job is gone; send it again.")
            return
        request = GenerateRequest(
            selfie=selfie, style=job.style, prompt=job.prompt, mode=Mode(job.mode) if job.mode else None,
            count=job.picture_count, seed=job.seed, job_id=str(job.id),
        )  # fmt: skip
        style = self.styles.get(job.style)
        mode = job.mode or (style.mode if style else None)
        try:
            await self.queue.submit(job.task_id, request.to_payload(), queue_for(self.settings.queue, mode))
        except Exception:
            # The broker is down: the job stays queued and unenqueued, and the
            # follower retries the submission until the job times out.
            logger.exception("enqueueing job %s failed; will retry", job.id)
            return
        await self.storage.update_job(job.id, enqueued_at=timestamp())

    async def _reload(self, job: Job) -> Job:
        fresh = await self.storage.job(job.id)
        if fresh is None:
            raise MmppError(ErrorCode.NOT_FOUND, f"Job {job.id} was deleted.")
        return fresh

    # ------------------------------------------------------------------ following

    def _follow(self, job: Job) -> None:
        if job.id in self._followers:
            return
        task = asyncio.create_task(self._follow_job(job.id), name=f"follow-job-{job.id}")
        self._followers[job.id] = task
        task.add_done_callback(lambda _: self._followers.pop(job.id, None))

    async def _follow_job(self, job_id: int) -> None:
        """Follow until delivered, retrying with a growing pause while the platform or broker fails.

        Safe to repeat: a delivered job is never delivered again, and Discord's
        channel sends carry a nonce.
        """
        pause = DELIVERY_RETRY_FIRST_SECONDS
        while True:
            try:
                await self._follow_until_delivered(job_id)
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("following job %s failed; trying again in %.0f s", job_id, pause)
            await asyncio.sleep(pause)
            pause = min(pause * 2, DELIVERY_RETRY_MAX_SECONDS)

    async def _follow_until_delivered(self, job_id: int) -> None:
        job = await self.storage.job(job_id)
        if job is None:
            return
        if job.state in {"done", "failed"}:
            await self._deliver(job)
            return
        delivery = self._deliveries.get(job.platform)
        last_text, last_edit = "", 0.0
        created = datetime.fromisoformat(job.created_at)
        while True:
            if job.enqueued_at is None:
                await self._enqueue(job)
                job = await self._reload(job)
            try:
                status = await self.queue.status(job.task_id)
            except Exception:
                logger.warning("result backend unreachable for job %s; retrying", job.id, exc_info=True)
                status = None
            if status is not None and status.ready:
                await self._complete(job, status.result if status.state == "SUCCESS" else None)
                return
            if (self._clock() - created).total_seconds() > self.settings.job_timeout_seconds:
                await self._finish_failed(job, ErrorCode.TIMEOUT, "The job took too long; please try again later.")
                return
            if status is not None and status.state == "PROGRESS" and job.state != "running":
                await self.storage.update_job(job.id, state="running")
            if status is not None and status.state == "PROGRESS":
                await self.storage.update_job(
                    job.id, progress_done=status.done_steps, progress_total=status.total_steps
                )
            job = await self._reload(job)
            text = await self._status_text(job)
            now = time.monotonic()
            if (
                delivery is not None
                and job.status_message_id
                and text != last_text
                and now - last_edit >= delivery.status_edit_interval
            ):
                try:
                    await delivery.edit_status(job, job.status_message_id, text)
                except Exception:
                    logger.warning("editing the status of job %s failed", job.id, exc_info=True)
                last_text, last_edit = text, now
            await asyncio.sleep(self.settings.poll_interval_seconds)

    async def _status_text(self, job: Job) -> str:
        style = self.styles.get(job.style)
        label = f"{style.emoji} {style.display_name}" if style else job.style
        count = f"{job.picture_count} picture{'s' if job.picture_count != 1 else ''}"
        if job.state == "running" and job.progress_total:
            percent = int(100 * job.progress_done / job.progress_total)
            return f"{label}: painting {count}… {percent}%"
        position = await self.storage.queue_position(job)
        if position:
            return f"{label}: {count} queued, {position} job{'s' if position != 1 else ''} ahead"
        return f"{label}: {count} queued, starting soon"

    async def _complete(self, job: Job, payload: dict[str, Any] | None) -> None:
        if payload is None:
            await self._finish_failed(job, ErrorCode.INTERNAL, "Something went wrong on our side; please try again.")
            return
        result = GenerateResult.from_payload(payload)
        if not result.ok:
            assert result.error_code is not None
            await self._finish_failed(job, result.error_code, result.error_message)
            return
        await self.storage.store_pictures(job.id, [(picture.seed, picture.png) for picture in result.pictures])
        meta = {
            "mode": result.mode, "steps": result.steps, "guidance": result.guidance, "scales": result.scales,
            "timings": result.timings, "model": result.model, "test_sized_model": result.test_sized_model,
        }  # fmt: skip
        await self.storage.update_job(
            job.id, state="done", finished_at=timestamp(), result_meta=meta,
            progress_done=job.progress_total, error_code=None, error_message=None,
        )  # fmt: skip
        await self.storage.release_selfie(job.id, timedelta(hours=self.settings.selfie_retention_hours))
        await self._deliver(await self._reload(job))

    async def _finish_failed(self, job: Job, code: ErrorCode, message: str) -> None:
        await self.storage.update_job(
            job.id, state="failed", error_code=code.value, error_message=message, finished_at=timestamp()
        )
        await self.storage.release_selfie(job.id, timedelta(0))
        await self._deliver(await self._reload(job))

    async def _deliver(self, job: Job) -> None:
        """Hand the outcome to the adapter once; mark it delivered right after."""
        if job.delivered_at is not None:
            return
        delivery = self._deliveries.get(job.platform)
        if delivery is None:
            return
        if job.state == "failed":
            code = ErrorCode(job.error_code or ErrorCode.INTERNAL.value)
            await delivery.post_failure(job, code, job.error_message or "")
        else:
            pictures = await self.storage.pictures(job.id)

            async def remember(picture: StoredPicture, ref: str) -> None:
                await self.storage.set_picture_message(picture.id, ref)

            await delivery.post_pictures(job, pictures, self._caption(job), remember)
        await self.storage.update_job(job.id, delivered_at=timestamp())
        metrics.JOBS_FINISHED.labels(job.state, job.error_code or "").inc()
        waited = (self._clock() - datetime.fromisoformat(job.created_at)).total_seconds()
        metrics.DELIVERY_SECONDS.observe(max(0.0, waited))

    def _caption(self, job: Job) -> str:
        style = self.styles.get(job.style)
        label = f"{style.emoji} {style.display_name}" if style else job.style
        meta = job.result_meta or {}
        caption = f"{label} · job {job.id} · {meta.get('mode', job.mode or '')}".rstrip(" ·")
        if meta.get("test_sized_model"):
            caption += " · test-sized model: these pictures are noise"
        return caption

    # ------------------------------------------------------------------ feedback

    async def rate(self, rater: Person, picture_id: int, stars: int | None, source: str) -> StoredPicture:
        if stars is not None and not 1 <= stars <= 5:
            raise MmppError(ErrorCode.INVALID_REQUEST, f"Ratings go from 1 to 5 ({RATING_SCALE}).")
        picture = await self.storage.picture(picture_id)
        if picture is None:
            raise MmppError(ErrorCode.NOT_FOUND, "That picture no longer exists.")
        job = await self.storage.job(picture.job_id)
        if job is None or job.platform != rater.platform:
            raise MmppError(ErrorCode.NOT_FOUND, "That picture no longer exists.")
        rater_id = await self.storage.user_id(rater.platform, rater.user_id, rater.display_name)
        await self.storage.set_rating(picture.id, rater_id, stars, source)
        metrics.RATINGS.labels(source).inc()
        return picture

    async def rate_message(self, rater: Person, message_ref: str, stars: int | None, source: str) -> bool:
        """A reaction on a posted picture; ``False`` when the message is not one of ours."""
        picture = await self._picture_for_message(rater.platform, message_ref)
        if picture is None:
            return False
        await self.rate(rater, picture.id, stars, source)
        return True

    async def _picture_for_message(self, platform: str, message_ref: str) -> StoredPicture | None:
        """The picture posted as this message, waiting a moment for one being posted right now.

        A reaction can overtake the adapter's report that the message exists;
        a short wait keeps that rating instead of dropping it.
        """
        for attempt in range(REACTION_WAIT_ATTEMPTS):
            picture = await self.storage.picture_by_message(platform, message_ref)
            if picture is not None or not self._followers:
                return picture
            await asyncio.sleep(0.1 * (attempt + 1))
        return None

    async def withdraw_reaction(self, rater: Person, message_ref: str, stars: int) -> bool:
        """A removed reaction withdraws the rating only if it was the one in force.

        Someone who reacted 4️⃣ and then 5️⃣ and removes the 4️⃣ still means 5.
        """
        picture = await self._picture_for_message(rater.platform, message_ref)
        rater_id = await self.storage.find_user(rater.platform, rater.user_id)
        if picture is None or rater_id is None:
            return False
        if await self.storage.rating(picture.id, rater_id) == stars:
            await self.storage.set_rating(picture.id, rater_id, None, "reaction")
        return True

    async def rate_job_picture(self, rater: Person, job_id: int, position: int, stars: int, source: str) -> None:
        job = await self.storage.job(job_id)
        if job is None or job.platform != rater.platform:
            raise MmppError(ErrorCode.NOT_FOUND, f"There is no job {job_id}.")
        pictures = {picture.position: picture for picture in await self.storage.pictures(job_id)}
        if position not in pictures:
            raise MmppError(ErrorCode.NOT_FOUND, f"Job {job_id} has no picture {position}.")
        await self.rate(rater, pictures[position].id, stars, source)

    # ------------------------------------------------------------------ information

    def styles_text(self) -> str:
        return "\n".join(f"{item.emoji} {item.name}: {item.description}" for item in self.styles.values())

    def help_text(self, how_to_order: str) -> str:
        return (
            "I turn a selfie into profile pictures in the style you pick.\n"
            f"{how_to_order}\n"
            "Styles: " + ", ".join(self.styles) + ".\n"
            f"Rate the pictures 1-5 ({RATING_SCALE}); /history lists your jobs; /forget deletes everything about you.\n"
            f"Your selfie is kept only for re-rolls, {self.settings.selfie_retention_hours:g} h at most, then deleted."
        )

    async def history_text(self, person: Person) -> str:
        user_id = await self.storage.find_user(person.platform, person.user_id)
        jobs = await self.storage.recent_jobs(user_id) if user_id is not None else []
        if not jobs:
            return "You have no jobs yet."
        lines = []
        for job in jobs:
            outcome = {"done": f"{job.picture_count} pictures", "failed": f"failed ({job.error_code})"}.get(
                job.state, job.state
            )
            lines.append(f"job {job.id}: {job.style}, {outcome}, {job.created_at[:16].replace('T', ' ')} UTC")
        return "\n".join(lines)

    async def forget(self, person: Person) -> str:
        """Delete the person, their jobs, selfies, pictures and ratings, and their results in the broker."""
        user_id = await self.storage.find_user(person.platform, person.user_id)
        if user_id is None:
            return "I had nothing stored about you."
        for job in await self.storage.recent_jobs(user_id, limit=1_000_000):
            follower = self._followers.get(job.id)
            if follower is not None:
                follower.cancel()
        task_ids = await self.storage.forget_user(user_id)
        for task_id in task_ids:
            try:
                await self.queue.forget(task_id)
            except Exception:
                logger.warning("could not remove a result from the result backend", exc_info=True)
        return "Done: I deleted everything I had about you (jobs, selfies, pictures and ratings)."


# --------------------------------------------------------------------------- feedback statistics

async def feedback_report(storage: Storage) -> list[dict[str, Any]]:
    """Per style: jobs, pictures, ratings, mean with 95 % interval, positive share (``mmpp feedback``)."""
    rows = []
    for row in summarise(await storage.feedback_rows()).by_style:
        figures = row.figures
        rows.append(
            {"style": row.style, "jobs": row.jobs, "pictures": row.pictures, "ratings": figures.ratings,
             "mean": figures.mean, "ci95_low": figures.ci95_low, "ci95_high": figures.ci95_high,
             "positive_share": figures.positive_share}
        )  # fmt: skip
    return rows
