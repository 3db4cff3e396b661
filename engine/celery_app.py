"""Celery configuration shared by the worker and (by name only) the bot.

Broker choice: ``REDIS_URL`` when set; otherwise an embedded broker on SQLite
through kombu's SQLAlchemy transport, so ``make run`` needs no server.  The
embedded broker polls (about one second per round trip) and suits a single
machine only; anything shared uses Redis.
"""

from __future__ import annotations

from celery import Celery

from engine.settings import EngineSettings
from mmpp.contract import CELERY_WIRE_SETTINGS, GENERATE_TASK_NAME, broker_urls


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
        # A replacement pool process loads the model before it reports ready;
        # Celery's 4 s default would kill every replacement in turn.
        worker_proc_alive_timeout=settings.worker_proc_alive_timeout,
        result_expires=24 * 3600,
        worker_hijack_root_logger=False,
        worker_send_task_events=True,
        task_send_sent_event=True,
    )
    return app


app = make_celery()
