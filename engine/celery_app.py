"""Celery configuration shared by the worker and (by name only) the bot.

Broker choice: ``REDIS_URL`` when set; otherwise an embedded broker on SQLite
through kombu's SQLAlchemy transport, so ``make run`` needs no server.  The
embedded broker polls (about one second per round trip) and suits a single
machine only; anything shared uses Redis.
"""

from __future__ import annotations

import logging
import time

from celery import Celery
from celery.worker import state as worker_state
from celery.worker.consumer import Consumer

from engine.settings import EngineSettings
from mmpp.contract import CELERY_WIRE_SETTINGS, GENERATE_TASK_NAME, broker_urls

logger = logging.getLogger(__name__)

#: Pauses of the worker's consumer between attempts to (re)connect while the broker refuses it.
BROKER_RETRY_FIRST_SECONDS = 1.0
BROKER_RETRY_MAX_SECONDS = 30.0
#: A failure this long after the previous one starts a new outage: the pause starts small again.
BROKER_OUTAGE_GAP_SECONDS = 120.0


class PatientConsumer(Consumer):
    """Celery's consumer, waiting with growing pauses while the broker refuses it, and saying so once.

    With ``broker_channel_error_retry`` a Redis that refuses writes (``OOM command not allowed``
    under ``noeviction``) no longer stops the worker, but Celery reconnects at once, about five
    times a second, with an ERROR line (and a traceback for "frequent restarts") each time.  Here
    each attempt waits 1, 2, 4 … up to 30 s; a warning is logged when the reason changes, and the
    pause starts small again after a quiet spell.  The wait watches for a shutdown request, so
    stopping the worker is never held up by it.
    """

    _pause = 0.0
    _last_failure: float | None = None
    _last_reason = ""

    def on_connection_error_before_connected(self, exc: BaseException) -> None:
        self._wait_before_retry(exc)

    def on_connection_error_after_connected(self, exc: BaseException) -> None:
        super().on_connection_error_after_connected(exc)
        self._wait_before_retry(exc)

    def _wait_before_retry(self, exc: BaseException) -> None:
        now = time.monotonic()
        quiet = self._last_failure is None or now - self._last_failure > BROKER_OUTAGE_GAP_SECONDS
        self._pause = BROKER_RETRY_FIRST_SECONDS if quiet else min(self._pause * 2, BROKER_RETRY_MAX_SECONDS)
        reason = f"{type(exc).__name__}: {exc}"
        if quiet or reason != self._last_reason:
            logger.warning(
                "the broker refuses the worker (%s); retrying with pauses growing to %.0f s",
                reason[:300],
                BROKER_RETRY_MAX_SECONDS,
            )
        self._last_reason = reason
        deadline = now + self._pause
        while time.monotonic() < deadline and worker_state.should_stop is None:
            if worker_state.should_terminate is not None:
                break
            time.sleep(0.2)
        self._last_failure = time.monotonic()


def make_celery(settings: EngineSettings | None = None) -> Celery:
    """A Celery app with the delivery guarantees a GPU job queue needs.

    Late acknowledgement plus reject-on-worker-lost means a worker killed
    mid-job gives the job back to the broker instead of losing it; prefetch 1
    stops one worker from hoarding jobs that another idle GPU could run.  The
    time limits must nest inside the broker's visibility timeout, or Redis
    would hand a still-running job to a second worker.
    """
    settings = settings or EngineSettings()
    if not settings.task_soft_time_limit < settings.task_hard_time_limit < settings.broker_visibility_timeout:
        raise ValueError(
            "MMPP_TASK_SOFT_TIME_LIMIT < MMPP_TASK_HARD_TIME_LIMIT < MMPP_BROKER_VISIBILITY_TIMEOUT must hold "
            f"(got {settings.task_soft_time_limit}, {settings.task_hard_time_limit}, "
            f"{settings.broker_visibility_timeout})"
        )
    broker, backend = broker_urls(settings.redis_url, settings.state_dir)
    app = Celery("mmpp", broker=broker, backend=backend, include=["engine.tasks"])
    transport_options: dict[str, object] = {}
    if settings.redis_url:
        # Look for jobs of dead workers every 10 s rather than kombu's default 100 s sweep.
        transport_options = {
            "visibility_timeout": settings.broker_visibility_timeout,
            "unacked_restore_interval": 10,
            "unacked_restore_throttle": 1,
        }
    app.conf.update(CELERY_WIRE_SETTINGS)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_soft_time_limit=settings.task_soft_time_limit,
        task_time_limit=settings.task_hard_time_limit,
        task_track_started=True,
        task_default_queue=settings.queue,
        task_routes={GENERATE_TASK_NAME: {"queue": settings.queue}},
        broker_transport_options=transport_options,
        result_backend_transport_options={"visibility_timeout": settings.broker_visibility_timeout}
        if settings.redis_url
        else {},
        # A Redis restart mid-job must not turn finished pictures into an error:
        # retry every result-backend operation, not only the final SET.
        result_backend_always_retry=True,
        result_backend_max_retries=20,
        # A full (noeviction) or unreachable Redis must not stop the worker, at start or later: a refused
        # write (OOM) is a channel error, which Celery otherwise treats as unrecoverable, and by default
        # it gives up reconnecting after 100 attempts.  PatientConsumer paces the attempts.
        broker_channel_error_retry=True,
        broker_connection_max_retries=None,
        worker_consumer=f"{__name__}:PatientConsumer",
        # A replacement pool process loads the model before it reports ready;
        # Celery's 4 s default would kill every replacement in turn.
        worker_proc_alive_timeout=settings.worker_proc_alive_timeout,
        # The bot forgets each result once it has stored the pictures; one nobody collects (the bot
        # was down, or had given up on the job) is gone by the time the bot's patience has run out.
        result_expires=settings.job_timeout_seconds,
        worker_hijack_root_logger=False,
        worker_send_task_events=True,
        task_send_sent_event=True,
    )
    return app


app = make_celery()
