"""The job lifecycle: check an order, write it, enqueue it, follow it, complete it, deliver it, and pick
every undelivered job up again after a restart.

A job's life: the row (with the selfie) is written first, then the status
message is posted, then the job is enqueued by task name with the job's own
task id.  A follower polls the result backend, edits the status message
(progress, and the worker's live previews, at the pace of :mod:`bot.core.status`),
stores the pictures, hands them to the platform adapter, and marks the job
delivered.  If the bot dies anywhere in between, :meth:`Jobs.start` picks
every undelivered job up again: it re-sends what was never enqueued (same
task id, so the worker's result is shared) and delivers what finished.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

from bot import metrics
from bot.core import texts
from bot.core.admission import Admission, BrokerRefusal
from bot.core.commands import ProfileOptions, profile_options
from bot.core.moderation import Moderation, quota_chat
from bot.core.person_settings import PersonalDefaults
from bot.core.platform import Delivery, DeliveryRefused, DirectMessages, FindsPosted, Person, ProfileOrder, Shards
from bot.core.positions import QueuePositions
from bot.core.selfies import prepare_selfie
from bot.core.status import StatusEdit, StatusEdits, StatusPacer
from bot.core.variants import Variants
from bot.queue import JobQueue
from bot.settings import BotSettings
from bot.storage import Job, QuotaRefused, Storage, StoredPicture, timestamp
from mmpp.catalogue import KLEIN_FAMILY, Catalogue, Style
from mmpp.contract import ACCEPTED_PHOTO_TYPES, MAX_UPLOAD_BYTES, GenerateRequest, GenerateResult, Mode, queue_for
from mmpp.errors import ErrorCode, MmppError
from mmpp.prompts import clean_prompt, has_prompt_weights

logger = logging.getLogger(__name__)

#: The longest the one private message about a job given up may take (a hung platform must not hold the follower).
DIRECT_MESSAGE_TIMEOUT_SECONDS = 30.0
#: What a claim's lease adds to the longest a follower lives before another process may take the job over.
CLAIM_MARGIN_SECONDS = 60.0
#: Where bot processes share the database: how often one looks for jobs it may take over (see _resume_periodically).
RESUME_INTERVAL_SECONDS = 300.0
#: How often the running bot deletes the selfies past their retention (it also does at start).
SELFIE_PURGE_INTERVAL_SECONDS = 600.0
#: The longest one status edit may hold up the follower (a hung platform must not hold up the pictures).
STATUS_EDIT_TIMEOUT_SECONDS = 10.0
#: How often the status of a job waiting in the database for its place in the broker is looked at again
#: (its queue position, and whether the broker is busy); it is sent as soon as it gets a place whatever this is.
WAITING_REFRESH_SECONDS = 1.0
TOOK_TOO_LONG = "The job took too long; please try again later."
ACCEPTED_MIME_TYPES = frozenset(photo.mime_type for photo in ACCEPTED_PHOTO_TYPES)
#: Families whose workers refuse an upscale (engine/klein.py): a picture they painted is not offered one.
UPSCALE_UNAVAILABLE_FAMILIES = frozenset({KLEIN_FAMILY})


def check_photo(size: int | None, mime_type: str | None) -> None:
    """What a platform says about a photo, checked before it is downloaded and again before a job exists.

    ``mime_type`` is the type the platform declared (``None``: it declared none, and the worker's
    decoder decides); only the kernel's ``ACCEPTED_PHOTO_TYPES`` pass, so a HEIC photo is refused
    here, at once, instead of by the worker after a trip through the queue.
    """
    if size is not None and size > MAX_UPLOAD_BYTES:
        raise MmppError(ErrorCode.IMAGE_TOO_LARGE, f"The photo is over {MAX_UPLOAD_BYTES // 2**20} MiB.")
    if not mime_type:
        return
    declared = mime_type.split(";")[0].strip().lower()
    if declared in ACCEPTED_MIME_TYPES:
        return
    kind, _, subtype = declared.partition("/")
    if kind == "image" and subtype:
        raise MmppError(
            ErrorCode.NOT_AN_IMAGE,
            f"{subtype.upper()} photos are not accepted; send a {texts.accepted_photos()} photo.",
        )
    raise MmppError(ErrorCode.NOT_AN_IMAGE, f"Attach a photo: {texts.accepted_photos()}.")


def upscale_event_key(picture_id: int) -> str:
    """The one event key of a picture's upscale (see :meth:`Jobs.upscale`)."""
    return f"upscale:{picture_id}"


class Jobs:
    def __init__(
        self,
        storage: Storage,
        queue: JobQueue,
        settings: BotSettings,
        catalogue: Catalogue,
        moderation: Moderation,
        clock: Callable[[], datetime],
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.storage = storage
        self.queue = queue
        self.settings = settings
        self.catalogue = catalogue
        self.styles = {style.name: style for style in catalogue}
        self.moderation = moderation
        #: Each person's defaults (/settings), which complete every order the same way on every platform.
        self.defaults = PersonalDefaults(storage, catalogue, moderation)
        #: The queue base of each engine family served besides ``settings.queue``'s (MMPP_FAMILY_QUEUES): a job of
        #: a variant that names its family goes there.
        self.family_queues = settings.family_queues_map()
        #: Which variant of its style each new job renders (ratings steer it; bot.core.variants says how).
        self.variants = Variants(storage, catalogue, served_families=self.family_queues)
        self._clock = clock
        #: How the housekeeping waits between purges: with ``clock``, what a test turns to run the schedule.
        self._sleep = sleep
        self.status_edits = StatusEdits(monotonic)
        self._monotonic = monotonic
        #: Every waiting job's place in line, from one read shared by all the followers (bot.core.positions).
        self.positions = QueuePositions(storage, monotonic, WAITING_REFRESH_SECONDS)
        self._deliveries: dict[str, Delivery] = {}
        self._followers: dict[int, asyncio.Task[None]] = {}
        self._housekeeping: asyncio.Task[None] | None = None
        self._rescanning: asyncio.Task[None] | None = None
        #: The feeder that hands jobs to the broker within its limits (bot.core.admission says why).
        self.admission = Admission(storage, settings, self._enqueue)

    # ------------------------------------------------------------------ lifecycle

    def attach(self, delivery: Delivery) -> None:
        self._deliveries[delivery.platform] = delivery

    @property
    def busy(self) -> bool:
        """Whether some job is being followed (its pictures may be being posted right now)."""
        return bool(self._followers)

    async def start(self) -> None:
        """Resume every undelivered job of the attached platforms, and feeding the waiting ones to the broker."""
        await self.storage.purge_expired_selfies(self._clock())  # the selfies that expired while the bot was down
        platforms = list(self._deliveries)
        for job in await self.storage.jobs_without_queue(platforms):  # written before jobs named their queue
            await self.storage.update_job(job.id, queue=self._queue_of(job.style, job.mode))
        await self._resume_undelivered(platforms)
        self.admission.platforms.update(platforms)
        self.admission.start()
        self._housekeeping = asyncio.create_task(self._purge_periodically())
        sharded = [name for name, delivery in self._deliveries.items() if isinstance(delivery, Shards)]
        if sharded:
            self._rescanning = asyncio.create_task(self._resume_periodically(sharded))

    async def _resume_undelivered(self, platforms: list[str]) -> None:
        """Follow the undelivered jobs of ``platforms`` this process may deliver and does not follow yet."""
        for job in await self.storage.undelivered_jobs(platforms):
            if job.id in self._followers or not self.may_deliver(job):
                continue  # followed already, or another process's shard: that process follows it
            logger.info("resuming job %s (%s)", job.id, job.state)
            self._follow(job)

    async def _resume_periodically(self, platforms: list[str]) -> None:
        """Where processes share the database, look again every :data:`RESUME_INTERVAL_SECONDS` for jobs this one
        may deliver but nobody follows: a process that died for good leaves its jobs claimed, and once those
        claims are stale (or a job's token expired, so its pictures go to the channel) this one takes them over
        without waiting for a restart.  A job another live process follows fails the claim and is left alone."""
        while True:
            await self._sleep(RESUME_INTERVAL_SECONDS)
            try:
                await self._resume_undelivered(platforms)
            except Exception:
                logger.exception("looking for jobs left by other processes failed")

    async def stop(self) -> None:
        await self.admission.stop()
        periodic = [task for task in (self._housekeeping, self._rescanning) if task is not None]
        tasks = [*self._followers.values(), *periodic]
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

    def may_deliver(self, job: Job) -> bool:
        """Whether this process may follow and deliver ``job``: always, where its platform is not split between
        processes; else when this process owns the job's shard, or when the reply goes through the channel
        anyway (the interaction's token expired), which any process can post to.

        Being allowed is not enough to deliver: the follower also holds the job's claim (:meth:`_claim`), so
        two allowed processes (an owner and a late starter) never both post.
        """
        delivery = self._deliveries.get(job.platform)
        if not isinstance(delivery, Shards):
            return True
        return delivery.owns_shard(delivery.shard_of(job)) or delivery.replies_through_channel(job)

    async def _claim(self, job: Job) -> bool:
        """Take (or renew) the job's claim for this process, where its platform is split between processes.

        A claim older than any follower can live (the job's timeout plus the delivery retries) is a dead
        process's and may be taken over; a live one is never taken, so one job has one follower.
        """
        delivery = self._deliveries.get(job.platform)
        if not isinstance(delivery, Shards):
            return True
        settings = self.settings
        lease = settings.job_timeout_seconds + settings.delivery_retry_seconds + settings.delivery_pause_max_seconds
        now = self._clock()
        claimed = await self.storage.claim_delivery(
            job.id, delivery.claimant, now, now - timedelta(seconds=lease + CLAIM_MARGIN_SECONDS)
        )
        if not claimed:
            logger.info("job %s is claimed by another process; it delivers it", job.id)
        return claimed

    async def _purge_periodically(self) -> None:
        """Delete the selfies past their retention every :data:`SELFIE_PURGE_INTERVAL_SECONDS`, for as long as the
        bot runs: a selfie is biometric data and its deadline is a promise made to its owner."""
        while True:
            await self._sleep(SELFIE_PURGE_INTERVAL_SECONDS)
            try:
                await self.storage.purge_expired_selfies(self._clock())
            except Exception:
                logger.exception("purging expired selfies failed")

    # ------------------------------------------------------------------ ordering

    def check_style(self, name: str | None) -> Style:
        if not name:
            raise MmppError(ErrorCode.UNKNOWN_STYLE, f"Name a style: {', '.join(self.styles)}.")
        return self.catalogue.get(name)

    def check_profile(self, options: dict[str, str]) -> tuple[ProfileOptions, Style]:
        """The checks that need no photo, so adapters can refuse before downloading one."""
        parsed = profile_options(options)
        style = self.check_style(parsed.style)
        style.compose_prompt(parsed.prompt)  # its weights, before a photo is downloaded
        return parsed, style

    async def order_profile(self, order: ProfileOrder) -> tuple[Job, bool]:
        """Validate, check quotas, write the job, post its status and enqueue it.

        Returns ``(job, created)``; for a duplicate delivery of the same
        platform event the existing job comes back with ``created`` false and
        nothing is posted or enqueued again.  The order's options are completed by the person's defaults here,
        once for every platform (adapters hand over what was typed, not what it was completed with).
        """
        options, style = self.check_profile(await self.defaults.order_options(order.requester, order.options))
        if not order.photo:
            raise MmppError(ErrorCode.NOT_AN_IMAGE, "Attach a selfie: one clear photo of your face.")
        check_photo(None, order.photo_type)
        # The upright, downscaled copy is what the job keeps and sends (bot.core.selfies says why).
        selfie = await asyncio.to_thread(prepare_selfie, order.photo)
        metrics.SELFIE_BYTES.labels("received").observe(selfie.received_bytes)
        metrics.SELFIE_BYTES.labels("kept").observe(len(selfie.data))
        return await self._create_job(
            order.requester, order.event_key, quota_chat(order.chat_id, order.server_id), order.reply_context,
            style.name, options.prompt, options.mode, options.count, options.seed, selfie.data, parent_job_id=None,
        )  # fmt: skip

    async def reroll(
        self, requester: Person, job_id: int, event_key: str, chat_id: str, reply_context: dict[str, Any],
        style: str | None = None, server_id: str | None = None,
    ) -> tuple[Job, bool]:  # fmt: skip
        """Same selfie, new seed; with ``style``, the same selfie in another style."""
        parent = await self.storage.job(job_id)
        if parent is None or parent.platform != requester.platform:
            raise MmppError(ErrorCode.NOT_FOUND, f"There is no job {job_id}.")
        owner = await self.storage.ensure_user(requester.platform, requester.user_id, requester.display_name)
        if owner != parent.user_id:
            raise MmppError(ErrorCode.INVALID_REQUEST, "Only the person who sent the selfie can make more from it.")
        if parent.is_upscale:
            raise MmppError(ErrorCode.INVALID_REQUEST, f"Job {job_id} is an upscale; re-roll the job it came from.")
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
            requester, event_key, quota_chat(chat_id, server_id), reply_context, chosen, parent.prompt, parent.mode,
            parent.picture_count, None, selfie, parent_job_id=parent.id,
            preferred_variant=parent.variant if chosen == parent.style else None,
        )  # fmt: skip

    async def upscale(
        self, requester: Person, picture_id: int, chat_id: str, reply_context: dict[str, Any],
        server_id: str | None = None,
    ) -> tuple[Job, bool]:  # fmt: skip
        """Paint one delivered picture again at twice its size: a job like any other (the quality queue, the
        quota, progress, delivery, ratings, /forget), with the picture's own style, prompt, variant and seed.

        Its event key is the picture's, not the press's: however often (and wherever) its control is
        pressed, a picture makes one upscale job, and a second press gets that job back.
        """
        picture, original = await self.check_upscale(requester, picture_id)
        # Its variant left the catalogue: the picture is repainted as the style serves now.
        kept = original.variant in self.check_style(original.style).variant_names
        preferred = original.variant if kept else None
        return await self._create_job(
            requester, upscale_event_key(picture.id), quota_chat(chat_id, server_id), reply_context, original.style,
            original.prompt, Mode.QUALITY.value, 1, picture.seed, picture.png, parent_job_id=original.id,
            preferred_variant=preferred, upscale_of_picture_id=picture.id,
        )  # fmt: skip

    async def check_upscale(self, requester: Person, picture_id: int) -> tuple[StoredPicture, Job]:
        """The picture and its job, if ``requester`` may upscale it: a few reads and nothing written, so an
        adapter can refuse a stranger's press in private (an alert, an ephemeral reply) before it answers."""
        picture = await self.storage.picture(picture_id)
        original = await self.storage.job(picture.job_id) if picture is not None else None
        if picture is None or original is None or original.platform != requester.platform:
            raise MmppError(ErrorCode.NOT_FOUND, f"There is no picture {picture_id}.")
        if await self.storage.find_user(requester.platform, requester.user_id) != original.user_id:
            raise MmppError(ErrorCode.NOT_YOURS, "Only the person who ordered this picture can upscale it.")
        if original.is_upscale:
            raise MmppError(ErrorCode.INVALID_REQUEST, "This picture is an upscale already.")
        if original.family and original.family not in self.family_queues:
            raise MmppError(
                ErrorCode.MODEL_UNAVAILABLE,
                f"This picture was painted by {original.family}, which this bot does not serve now; it cannot be "
                "upscaled.",
            )
        painted_by = (original.result_meta or {}).get("family") or original.family
        if painted_by in UPSCALE_UNAVAILABLE_FAMILIES:
            # Its family's workers cannot upscale (engine/klein.py), and another family's would repaint the
            # picture with another model: refused here, before a job, a place in the queue or the quota is spent.
            raise MmppError(
                ErrorCode.MODEL_UNAVAILABLE, f"Upscaling is not available for pictures painted by {painted_by} yet."
            )
        return picture, original

    async def upscale_job_picture(
        self, requester: Person, job_id: int, position: int, chat_id: str, reply_context: dict[str, Any]
    ) -> tuple[Job, bool]:
        """:meth:`upscale` for a picture named by its job and position (the console names pictures so)."""
        job = await self.storage.job(job_id)
        pictures = {picture.position: picture for picture in await self.storage.pictures(job_id)} if job else {}
        if job is None or job.platform != requester.platform or position not in pictures:
            raise MmppError(ErrorCode.NOT_FOUND, f"Job {job_id} has no picture {position}.")
        return await self.upscale(requester, pictures[position].id, chat_id, reply_context)

    async def _create_job(
        self, requester: Person, event_key: str, chat_id: str, reply_context: dict[str, Any], style: str,
        prompt: str, mode: str | None, count: int, seed: int | None, selfie: bytes, parent_job_id: int | None,
        preferred_variant: str | None = None, upscale_of_picture_id: int | None = None,
    ) -> tuple[Job, bool]:  # fmt: skip
        """``selfie`` is the job's input: the selfie, or for an upscale (``upscale_of_picture_id``) the picture."""
        upscale = upscale_of_picture_id is not None
        request = GenerateRequest(
            selfie=b"" if upscale else selfie, style=style, prompt=prompt, mode=Mode(mode) if mode else None,
            count=count, seed=seed, upscale_source=selfie if upscale else None,
        )  # fmt: skip
        self.moderation.check_allowed(requester)
        try:
            request.validate()
            catalogued = self.check_style(style)
            catalogued.compose_prompt(prompt)  # the worker's own check, before a job exists
        except MmppError as error:
            raise MmppError(error.code, error.message) from None
        self.moderation.check_prompt(prompt)
        user_id = await self.storage.ensure_user(requester.platform, requester.user_id, requester.display_name)
        existing = await self.storage.job_by_event(requester.platform, event_key)
        if existing is not None:
            return existing, False
        await self.moderation.check_quotas(requester, user_id, chat_id, count)
        if upscale and preferred_variant is not None:
            variant = preferred_variant  # an upscale repaints its picture: the picture's variant, whatever is served
        else:
            weighted = has_prompt_weights(clean_prompt(prompt))
            variant = await self.variants.assign(catalogued, preferred_variant, weighted_prompt=weighted)
        # The family travels with the variant: a re-roll or an upscale keeping its job's variant keeps its family.
        family = catalogued.with_variant(variant).family
        try:
            job, created = await self.storage.create_job(
                task_id=str(uuid.uuid4()), user_id=user_id, platform=requester.platform, event_key=event_key,
                chat_id=chat_id, style=style, prompt=prompt, mode=mode, picture_count=count, seed=seed,
                selfie=selfie, reply_context=reply_context, parent_job_id=parent_job_id,
                queue=self._queue_of(style, mode, family), variant=variant, family=family,
                upscale_of_picture_id=upscale_of_picture_id, limits=self.moderation.limits(requester),
            )  # fmt: skip
        except QuotaRefused as refused:  # another order took the last place since the check above
            raise self.moderation.refusal(refused) from None
        if not created:
            return job, False
        metrics.JOBS_CREATED.labels(job.platform).inc()
        delivery = self._deliveries.get(job.platform)
        if delivery is not None:
            try:
                text = await self._status_text(job)
                ref = await delivery.post_status(job, text)
                if ref:
                    self.status_edits.posted(job, delivery.status_edit_pace, text)
                    await self.storage.update_job(job.id, status_message_id=ref)
                    job = await self._reload(job)
            except Exception:
                logger.exception("posting the status of job %s failed; the job goes on", job.id)
        # After the status: on Discord the first follow-up fills the public
        # "thinking" message, and the notice must stay private.
        if delivery is not None and await self._privacy_notice_due(user_id, job.id):
            try:
                await delivery.post_notice(job, texts.privacy_notice(self.settings.selfie_retention_hours))
            except Exception:
                logger.exception("posting the privacy notice of job %s failed", job.id)
        # Sent now if its queue has room in the broker; otherwise it waits here for its turn, in order.
        self.admission.platforms.add(job.platform)
        await self.admission.feed_now()
        self._follow(job)
        return job, True

    async def _privacy_notice_due(self, user_id: int, job_id: int) -> bool:
        """Whether the person's first-order privacy notice is due.  The job is written by now: a failure here (a
        PostgreSQL restart losing this write's COMMIT) must not turn into an error for an order that was made,
        nor leave the job unfollowed; the notice is then posted, as telling twice beats never telling."""
        try:
            return await self.storage.take_privacy_notice(user_id)
        except Exception as error:  # noqa: BLE001 - whatever the database did, the order stands
            logger.warning("job %s: could not record the privacy notice (%s); posting it", job_id, type(error).__name__)
            return True

    def _queue_of(self, style_name: str, mode: str | None, family: str = "") -> str:
        """The Celery queue of a job: its family's (``MMPP_FAMILY_QUEUES``; the bot's own queue for a variant that
        names none), then its mode's, or its style's default mode's."""
        style = self.styles.get(style_name)
        # "" (a variant naming no family) is never a key of MMPP_FAMILY_QUEUES: the bot's own queue.
        base = self.family_queues.get(family, self.settings.queue)
        return queue_for(base, mode or (style.mode if style else None))

    async def _enqueue(self, job: Job) -> None:
        """Send one job that holds a place in the broker; the feeder (:mod:`bot.core.admission`) calls this.

        Raises :class:`BrokerRefusal` when the broker does not take it: the job keeps its place, and the
        feeder tries again.  A job that cannot even be put into words (a damaged row) fails on its own
        instead of holding up its queue.
        """
        fresh = await self.storage.job(job.id)
        if fresh is None or fresh.state != "queued" or fresh.enqueued_at is not None:
            return  # deleted (/forget), timed out meanwhile, or sent already
        # Every process sharing the database feeds the broker from it: the job is sent by the one that delivers
        # it (so once, not by each feeder that saw it), and that one follows it from now on.
        if not self.may_deliver(fresh) or not await self._claim(fresh):
            return
        if isinstance(self._deliveries.get(fresh.platform), Shards):
            self._follow(fresh)  # e.g. a dead process's job, its claim stale: this one takes it over
        selfie = await self.storage.selfie(job.id)
        if selfie is None:  # its follower tells the person
            await self._record_failure(fresh, ErrorCode.NOT_FOUND, "The selfie for this job is gone; send it again.")
            return
        try:
            payload = GenerateRequest(
                selfie=b"" if fresh.is_upscale else selfie, style=job.style, prompt=job.prompt,
                mode=Mode(job.mode) if job.mode else None, count=job.picture_count, seed=job.seed,
                job_id=str(job.id), variant=job.variant, family=fresh.family,
                upscale_source=selfie if fresh.is_upscale else None,
            ).to_payload()  # fmt: skip
        except Exception:
            logger.exception("job %s cannot be sent (its row does not make a request); it fails", job.id)
            await self._record_failure(fresh, ErrorCode.INTERNAL, texts.SOMETHING_WENT_WRONG)
            return
        try:
            await self.queue.submit(job.task_id, payload, fresh.queue or self._queue_of(job.style, job.mode))
        except Exception as error:
            raise BrokerRefusal(f"job {job.id}") from error
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
        self.admission.expect(job.id)
        task = asyncio.create_task(self._follow_job(job.id), name=f"follow-job-{job.id}")
        self._followers[job.id] = task

        def followed(_: asyncio.Task[None]) -> None:
            self._followers.pop(job.id, None)
            self.admission.discard(job.id)

        task.add_done_callback(followed)

    async def _follow_job(self, job_id: int) -> None:
        """Follow until delivered, retrying with a growing pause while the platform or broker fails, within bounds.

        Safe to repeat: a delivered job is never delivered again, a picture that has its message is
        never posted again, and Discord's channel sends carry a nonce.  Bounded, because a platform
        that keeps refusing must not be asked forever (Discord bans a bot for a while after about
        10,000 refused requests in 10 minutes): a refusal for good (:class:`DeliveryRefused`) ends
        the job at once; other failures are retried at most ``delivery_attempts`` times and not
        later than ``delivery_retry_seconds`` after the first, and then end it too (:meth:`_give_up`).
        """
        settings = self.settings
        pause = settings.delivery_pause_first_seconds
        failures = 0
        first_failure_at: float | None = None
        while True:
            try:
                await self._follow_until_delivered(job_id)
                return
            except asyncio.CancelledError:
                raise
            except DeliveryRefused as refusal:
                logger.warning("the platform refused job %s for good (%s); not trying again", job_id, refusal)
                await self._give_up(job_id)
                return
            except Exception as error:  # any other failure may pass: retried within the bounds
                failures += 1
                now = self._monotonic()
                first_failure_at = now if first_failure_at is None else first_failure_at
                out_of_time = now + pause - first_failure_at > settings.delivery_retry_seconds
                if failures >= settings.delivery_attempts or out_of_time:
                    what = type(error).__name__
                    logger.warning("following job %s failed %d times (%s); giving up", job_id, failures, what)
                    await self._give_up(job_id)
                    return
                # The traceback once per job; the type alone afterwards (the same failure, again).
                logger.warning(
                    "following job %s failed (%s); trying again in %.1f s", job_id, type(error).__name__, pause,
                    exc_info=failures == 1,
                )  # fmt: skip
            await asyncio.sleep(pause)
            pause = min(pause * 2, settings.delivery_pause_max_seconds)

    async def _give_up(self, job_id: int) -> None:
        """End a job whose outcome cannot be delivered: once, recorded as DELIVERY_FAILED, counted, and told
        to its requester in private where the platform offers that (one attempt, bounded in time).

        ``delivered_at`` is set too: the delivery is over, so a restarted bot does not resume it;
        the row's state and code say how it ended.
        """
        job = await self.storage.job(job_id)
        if job is None or job.delivered_at is not None:
            return
        code, text = ErrorCode.DELIVERY_FAILED, texts.delivery_failed(job.id)
        await self.storage.update_job(
            job.id, state="failed", error_code=code.value, error_message=text,
            finished_at=job.finished_at or timestamp(), delivered_at=timestamp(),
        )  # fmt: skip
        if job.state in {"queued", "running"}:  # the job never finished: nothing will re-roll from its selfie
            await self.storage.release_selfie(job.id, timedelta(0))
        metrics.JOBS_FINISHED.labels("failed", code.value).inc()
        delivery = self._deliveries.get(job.platform)
        if not isinstance(delivery, DirectMessages):
            return
        try:
            await asyncio.wait_for(delivery.post_direct(job, code, text), DIRECT_MESSAGE_TIMEOUT_SECONDS)
        except Exception as error:  # noqa: BLE001 - best effort: the failure is recorded whatever happens here
            logger.warning("telling the requester of job %s in private failed too (%s)", job.id, type(error).__name__)

    async def _follow_until_delivered(self, job_id: int) -> None:
        job = await self.storage.job(job_id)
        if job is None or job.delivered_at is not None or not await self._claim(job):
            return
        if job.state in {"done", "failed"}:
            await self._deliver(job)
            return
        delivery = self._deliveries.get(job.platform)
        pacer = self.status_edits.follow(job, delivery.status_edit_pace) if delivery is not None else None
        try:
            await self._poll_until_delivered(job, delivery, pacer)
        finally:
            if pacer is not None:
                pacer.close()

    async def _poll_until_delivered(self, job: Job, delivery: Delivery | None, pacer: StatusPacer | None) -> None:
        created = datetime.fromisoformat(job.created_at)
        backend_unreachable = False
        while True:
            if job.enqueued_at is None:
                # Waiting in the database for its place in the broker: nothing to ask the result backend yet.
                if job.state in {"done", "failed"}:  # its turn came and its selfie was gone
                    await self._deliver(job)
                    return
                if (self._clock() - created).total_seconds() > self.settings.job_timeout_seconds:
                    await self._finish_failed(job, ErrorCode.TIMEOUT, TOOK_TOO_LONG)
                    return
                await self._show_status(job, delivery, pacer, None)
                wait = max(self.settings.poll_interval_seconds, WAITING_REFRESH_SECONDS)
                sent_here = await self.admission.wait_sent(job.id, wait)
                # Its row is read again only when it changed: sent by this process, or no longer in the shared
                # snapshot's waiting set (sent by another process, failed, deleted by /forget).
                if sent_here or not await self.positions.still_waiting(job):
                    job = await self._reload(job)
                continue
            try:
                status = await self.queue.status(job.task_id)
            except Exception as error:  # noqa: BLE001 - the backend is outside this process: retried until the timeout
                if not backend_unreachable:  # once per outage, not once per poll
                    logger.warning("result backend unreachable for job %s (%s); retrying", job.id, type(error).__name__)
                backend_unreachable, status = True, None
            else:
                backend_unreachable = False
            if status is not None and status.ready:
                await self._complete(job, status.result if status.state == "SUCCESS" else None)
                return
            if (self._clock() - created).total_seconds() > self.settings.job_timeout_seconds:
                await self._finish_failed(job, ErrorCode.TIMEOUT, TOOK_TOO_LONG)
                return
            if status is not None and status.state == "PROGRESS" and job.state != "running":
                await self.storage.update_job(job.id, state="running")
            if status is not None and status.state == "PROGRESS":
                await self.storage.update_job(
                    job.id, progress_done=status.done_steps, progress_total=status.total_steps
                )
            job = await self._reload(job)
            await self._show_status(job, delivery, pacer, status.preview if status is not None else None)
            await asyncio.sleep(self.settings.poll_interval_seconds)

    async def _show_status(
        self, job: Job, delivery: Delivery | None, pacer: StatusPacer | None, preview: bytes | None
    ) -> None:
        """Edit the status message if its text changed or a new preview came, at the platform's pace."""
        if delivery is not None and pacer is not None and job.status_message_id:
            edit = pacer.next_edit(await self._status_text(job), preview)
            if edit is not None:
                pacer.outcome(edit, await self._edit_status(delivery, job, job.status_message_id, edit))

    async def _edit_status(self, delivery: Delivery, job: Job, message_ref: str, edit: StatusEdit) -> bool:
        """One attempt at one edit, bounded in time; whether the platform took it.  Failing changes nothing else."""
        try:
            await asyncio.wait_for(
                delivery.edit_status(job, message_ref, edit.text, edit.preview), STATUS_EDIT_TIMEOUT_SECONDS
            )
        except Exception as error:  # noqa: BLE001 - best effort: any failure means this edit did not happen
            # The type only: exception texts from the HTTP layers can hold a token-bearing URL.
            what = "the status and preview" if edit.preview is not None else "the status"
            logger.warning("editing %s of job %s failed (%s)", what, job.id, type(error).__name__)
            return False
        return True

    async def _status_text(self, job: Job) -> str:
        running = job.state == "running" and job.progress_total
        ahead = 0 if running else await self.positions.ahead(job)
        busy = not running and self.admission.refusal is not None
        return texts.status_line(job, self.styles.get(job.style), ahead, busy)

    async def _complete(self, job: Job, payload: dict[str, Any] | None) -> None:
        if payload is None:
            await self._finish_failed(job, ErrorCode.INTERNAL, texts.SOMETHING_WENT_WRONG)
            return
        result = GenerateResult.from_payload(payload)
        if result.error_code is ErrorCode.WRONG_FAMILY:
            # A deployment error, not the person's: the operator reads the worker's words in the log, the person
            # is told in one line (with the code) that it is on our side.
            logger.error("job %s (family %s, queue %s): %s", job.id, job.family or "-", job.queue, result.error_message)
            await self._finish_failed(job, ErrorCode.WRONG_FAMILY, texts.WRONG_WORKER)
            return
        if not result.ok:
            assert result.error_code is not None
            await self._finish_failed(job, result.error_code, result.error_message)
            return
        await self.storage.store_pictures(job.id, [(picture.seed, picture.png) for picture in result.pictures])
        meta = {
            "mode": result.mode, "steps": result.steps, "guidance": result.guidance, "scales": result.scales,
            "timings": result.timings, "model": result.model, "test_sized_model": result.test_sized_model,
            "variant": result.variant, "family": result.family,
        }  # fmt: skip
        if result.variant and result.variant != job.variant:
            # The worker rendered another variant than the job asked for (a worker of another catalogue):
            # its ratings then belong to what was rendered; say so, the pictures are fine to deliver.
            logger.warning("job %s asked for variant %s, the worker rendered %s", job.id, job.variant, result.variant)
        await self.storage.update_job(
            job.id, state="done", finished_at=timestamp(), result_meta=meta,
            progress_done=job.progress_total, error_code=None, error_message=None,
        )  # fmt: skip
        await self._forget_result(job)
        self.positions.forget()  # the people behind it moved up
        self.admission.wake()  # its place in the broker is free
        # An upscale's input is a copy of its picture, with nothing to re-roll from it: gone at once.
        keep = timedelta(0) if job.is_upscale else timedelta(hours=self.settings.selfie_retention_hours)
        await self.storage.release_selfie(job.id, keep, self._clock())
        await self._deliver(await self._reload(job))

    async def _finish_failed(self, job: Job, code: ErrorCode, message: str) -> None:
        await self._record_failure(job, code, message)
        await self._deliver(await self._reload(job))

    async def _record_failure(self, job: Job, code: ErrorCode, message: str) -> None:
        await self.storage.update_job(
            job.id, state="failed", error_code=code.value, error_message=message, finished_at=timestamp()
        )
        await self.storage.release_selfie(job.id, timedelta(0))
        await self._forget_result(job)
        self.positions.forget()
        self.admission.wake()

    async def _forget_result(self, job: Job) -> None:
        """Delete the job's result (and its progress state) from the result backend, now that the outcome is
        in the database: left there, every result holds its pictures in Redis (about 0.7 MB each as base64)
        until it expires.  Best effort: one that stays expires by itself (``result_expires``)."""
        try:
            await self.queue.forget(job.task_id)
        except Exception as error:  # noqa: BLE001 - the outcome is stored; the leftover expires on its own
            logger.warning(
                "forgetting the result of job %s in the result backend failed (%s); it expires on its own",
                job.id,
                type(error).__name__,
            )

    async def _deliver(self, job: Job) -> None:
        """Hand the outcome to the adapter once; mark it delivered right after."""
        if job.delivered_at is not None:
            return
        delivery = self._deliveries.get(job.platform)
        if delivery is None or not await self._claim(job):  # renewed right before posting: still this process's
            return
        if job.state == "failed":
            code = ErrorCode(job.error_code or ErrorCode.INTERNAL.value)
            await delivery.post_failure(job, code, job.error_message or "")
        else:
            pictures = await self.storage.pictures(job.id)

            async def remember(picture: StoredPicture, ref: str) -> None:
                await self.storage.set_picture_message(picture.id, ref)

            pictures = await self._found_in_doubt(delivery, job, pictures, remember)
            await self.storage.mark_posts_started(job.id)
            await delivery.post_pictures(job, pictures, texts.caption(job, self.styles.get(job.style)), remember)
        await self.storage.update_job(job.id, delivered_at=timestamp())
        metrics.JOBS_FINISHED.labels(job.state, job.error_code or "").inc()
        waited = (self._clock() - datetime.fromisoformat(job.created_at)).total_seconds()
        metrics.DELIVERY_SECONDS.observe(max(0.0, waited))

    async def _found_in_doubt(
        self,
        delivery: Delivery,
        job: Job,
        pictures: list[StoredPicture],
        remember: Callable[[StoredPicture, str], Awaitable[None]],
    ) -> list[StoredPicture]:
        """The pictures, those in doubt that the platform shows as posted recorded as such: a process killed between the
        platform creating a message and :meth:`Storage.set_picture_message` must not make the person get the picture
        twice.  One look per delivery attempt that has pictures in doubt; where the adapter cannot look, they are
        posted again."""
        in_doubt = [picture for picture in pictures if picture.in_doubt]
        if not in_doubt or not isinstance(delivery, FindsPosted):
            return pictures
        found = await delivery.find_posted(job, in_doubt)
        checked = []
        for picture in pictures:
            ref = found.get(picture.id) if picture.in_doubt else None
            if ref is not None:
                logger.info("picture %s of job %s was posted before its message was recorded", picture.id, job.id)
                await remember(picture, ref)
                picture = dataclasses.replace(picture, message_ref=ref)
            checked.append(picture)
        return checked

    # ------------------------------------------------------------------ forgetting

    async def forget(self, person: Person) -> str:
        """Delete the person, their jobs, selfies, pictures and ratings, and their results in the broker."""
        user_id = await self.storage.find_user(person.platform, person.user_id)
        if user_id is None:
            return texts.FORGOT_NOTHING
        for job in await self.storage.recent_jobs(user_id, limit=1_000_000):
            follower = self._followers.get(job.id)
            if follower is not None:
                follower.cancel()
        task_ids = await self.storage.forget_user(user_id)
        self.admission.wake()  # their places in the broker are free
        for task_id in task_ids:
            try:
                await self.queue.forget(task_id)
            except Exception:
                logger.warning("could not remove a result from the result backend", exc_info=True)
        return texts.FORGOT_EVERYTHING
