"""Admission control: the broker holds a bounded number of jobs per queue; the rest wait in SQLite, in order.

Why: every job waiting in Redis holds its selfie there (base64, twice), and compose runs Redis with
``noeviction`` so that it never drops a job: a burst of orders pushed into it at once fills it, and
a full Redis refuses every write, the worker's included, until the whole service stops.  SQLite
already holds every job and its selfie durably, so nothing is gained by handing the broker more
than its workers can start soon.  Each Celery queue gets at most ``MMPP_BROKER_MAX_JOBS`` jobs and
``MMPP_BROKER_MAX_BYTES`` bytes of job messages at once (waiting or running); the feeder here hands
the rest over oldest first as jobs finish (each finished job wakes it, and it looks again every few
seconds for jobs other bot processes finished).  A restarted bot resumes feeding where it stopped:
a job's place is written before its message is sent (``admitted_at``, then ``enqueued_at``), so a job
that had its place but was never sent is sent first.

A broker that refuses a job (full, unreachable) is retried with pauses growing from 0.5 s to 30 s,
the jobs keep their places and their order, and the change is logged once, not once per attempt
(a broker at its limit that takes every other job is summarised at most once a minute);
while it lasts, :attr:`Admission.refusal` says why, for the status lines people see ("busy, your
job is queued"), ``/healthz`` and the metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from bot import metrics
from bot.queue import broker_message_bytes
from bot.settings import BotSettings
from bot.storage import Job, Storage

logger = logging.getLogger(__name__)

#: Pauses between attempts while the broker refuses jobs.
BROKER_RETRY_FIRST_SECONDS = 0.5
BROKER_RETRY_MAX_SECONDS = 30.0
#: How often the feeder looks for places freed by other bot processes sharing the database.
FEED_EVERY_SECONDS = 2.0
#: The pause after the database itself failed a feeding round.
FEED_ERROR_PAUSE_SECONDS = 5.0
#: A broker at its limit takes one job and refuses the next: refusals for the same reason this soon after
#: the last line about them are counted, not logged, and the next line says how many there were.
FLAPPING_QUIET_SECONDS = 60.0


class BrokerRefusal(Exception):  # noqa: N818 - the broker's answer, not an error of ours
    """The broker did not take a job (raised from what the Celery client raised: ``__cause__``)."""


def refusal_of(error: BaseException) -> tuple[str, str]:
    """``(kind, description)`` of a failed send: ``full``, ``unreachable`` or ``refused``, in words for the log.

    Only the exception's type and its first line: no URL with a password reaches the log.
    """
    name = type(error).__name__
    text = str(error).splitlines()[0][:200] if str(error) else ""
    if name == "OutOfMemoryError" or "OOM" in text or "maxmemory" in text:
        return "full", f"is full and refuses writes ({name}: {text})"
    if isinstance(error, OSError | TimeoutError) or name in {"ConnectionError", "TimeoutError", "OperationalError"}:
        return "unreachable", f"is unreachable ({name}: {text})"
    return "refused", f"refused the job ({name}: {text})"


async def _wait(event: asyncio.Event, timeout: float) -> None:
    """Until ``event`` is set or ``timeout`` seconds passed.

    Not ``asyncio.wait_for``: on Python 3.11 it swallows a cancellation that arrives as the event is
    set, and the feeder would then never stop.
    """
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await event.wait()


class Admission:
    """The feeder: hands waiting jobs to the broker within the limits, oldest first, one task per core.

    ``send`` enqueues one job (it raises :class:`BrokerRefusal` when the broker does not take it; anything
    else it raises is a failure of ours, logged, and the round is tried again later); :attr:`sleep` waits the pause
    between attempts while the broker refuses (tests put a recording one there).
    """

    def __init__(
        self,
        storage: Storage,
        settings: BotSettings,
        send: Callable[[Job], Awaitable[None]],
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.storage = storage
        self.settings = settings
        self._send = send
        self.sleep = sleep
        #: The platforms whose jobs this process feeds (the ones it follows); others are another process's.
        self.platforms: set[str] = set()
        #: Why the broker refuses jobs right now (``None``: it takes them).
        self.refusal: str | None = None
        self._refusal_kind = ""
        self._refused_since = 0.0
        self._refused_attempts = 0
        self._last_reason = ""
        self._last_logged_at = float("-inf")
        self._episode_logged = False
        self._brief_refusals = 0
        self._pause = BROKER_RETRY_FIRST_SECONDS
        self._wake = asyncio.Event()
        self._feeding = asyncio.Lock()  # one round at a time: a job is never sent twice
        self._left_waiting: dict[int, asyncio.Event] = {}
        self._task: asyncio.Task[None] | None = None
        metrics.BROKER_ACCEPTING.set(1)

    # ------------------------------------------------------------------ for the job followers

    def expect(self, job_id: int) -> None:
        """A follower starts following ``job_id``: :meth:`wait_sent` returns as soon as it is sent."""
        self._left_waiting.setdefault(job_id, asyncio.Event())

    def discard(self, job_id: int) -> None:
        self._left_waiting.pop(job_id, None)

    async def wait_sent(self, job_id: int, timeout: float) -> bool:
        """Until the job left the database for the broker (or failed there), or ``timeout`` seconds; whether this
        process's feeder saw it leave (another process's feeder may have sent it without this one knowing)."""
        event = self._left_waiting.setdefault(job_id, asyncio.Event())
        await _wait(event, timeout)
        return event.is_set()

    def wake(self) -> None:
        """A job was ordered, or one finished and freed its place: feed now (starting the feeder if need be)."""
        self._wake.set()
        self.start()

    async def feed_now(self) -> None:
        """A job was just ordered: feed at once, so that with room in its queue it is sent before the order
        returns, as it was without admission control.  While the broker refuses, only the feeder's paced
        attempts go to it: a burst of orders must not turn into a burst of attempts."""
        self.start()
        if self.refusal is not None:
            self.wake()
            return
        try:
            await self.feed()
        except Exception:  # the job is written; the feeder's next round sends it
            logger.warning("feeding the broker at order time failed; the feeder tries again", exc_info=True)
            self.wake()

    # ------------------------------------------------------------------ the feeder

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._feed_forever(), name="broker-feeder")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _feed_forever(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self.feed()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("feeding jobs to the broker failed; trying again in %.0f s", FEED_ERROR_PAUSE_SECONDS)
                await asyncio.sleep(FEED_ERROR_PAUSE_SECONDS)
                continue
            if self.refusal is not None:
                await self.sleep(self._pause)
                self._pause = min(self._pause * 2, BROKER_RETRY_MAX_SECONDS)
                continue
            await _wait(self._wake, FEED_EVERY_SECONDS)

    async def feed(self) -> None:
        """One round: give free places to the oldest waiting jobs, then send every job holding one, oldest first.

        While the broker refuses, no new places are handed out; only the oldest job holding one is tried.
        """
        async with self._feeding:
            await self._feed_round()

    async def _feed_round(self) -> None:
        platforms = sorted(self.platforms)
        if self.refusal is None:
            await self.storage.admit_waiting(
                platforms, self.settings.broker_max_jobs, self.settings.broker_max_bytes, broker_message_bytes
            )
        for job in await self.storage.admitted_unsent(platforms):
            try:
                await self._send(job)
            except BrokerRefusal as refusal:  # the job keeps its place and waits for the next try
                self._refused(job, refusal.__cause__ or refusal)
                return
            self._accepted()
            event = self._left_waiting.get(job.id)
            if event is not None:
                event.set()

    def _refused(self, job: Job, error: BaseException) -> None:
        kind, description = refusal_of(error)
        metrics.BROKER_REFUSALS.labels(kind).inc()
        metrics.BROKER_ACCEPTING.set(0)
        self._refused_attempts += 1
        self.wake()  # the feeder's next attempt waits the pause, whoever tried this one
        if description == self.refusal:
            return
        now = time.monotonic()
        flapping = self.refusal is None and description == self._last_reason
        if self.refusal is None:
            self._refused_since = now
        self.refusal, self._refusal_kind, self._pause = description, kind, BROKER_RETRY_FIRST_SECONDS
        self._last_reason = description
        if flapping and now - self._last_logged_at < FLAPPING_QUIET_SECONDS:
            self._brief_refusals += 1
            self._episode_logged = False
            return
        brief = f" ({self._brief_refusals} brief refusals before this one since the last report)" if flapping else ""
        logger.warning(
            "enqueueing job %s failed: the broker %s; the jobs wait in the database with their places and are "
            "sent, oldest first, once it takes them (retrying with pauses growing to %.0f s)%s",
            job.id,
            description,
            BROKER_RETRY_MAX_SECONDS,
            brief,
        )
        self._last_logged_at, self._episode_logged, self._brief_refusals = now, True, 0

    def _accepted(self) -> None:
        if self.refusal is None:
            return
        if self._episode_logged:
            logger.warning(
                "the broker takes jobs again, after %.0f s and %d refused attempts",
                time.monotonic() - self._refused_since,
                self._refused_attempts,
            )
            self._last_logged_at = time.monotonic()
        self.refusal, self._refusal_kind, self._refused_attempts = None, "", 0
        self._pause = BROKER_RETRY_FIRST_SECONDS
        metrics.BROKER_ACCEPTING.set(1)
