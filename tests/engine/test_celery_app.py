"""The worker's Celery app (engine/celery_app.py): what it leaves in the result backend, and for how long."""

from __future__ import annotations

import uuid

import pytest
import redis

from engine.celery_app import make_celery
from engine.settings import EngineSettings
from tests.conftest import REDIS_URL, redis_available


def test_a_result_nobody_collects_expires_within_the_bots_job_timeout() -> None:
    """The worker writes each result with a lifetime of the bot's job timeout (MMPP_JOB_TIMEOUT_SECONDS), not
    Celery's day: by then the bot has either stored the pictures (and forgotten the result) or given up."""
    if not redis_available():
        pytest.fail(f"Redis is not reachable at {REDIS_URL}")
    app = make_celery(EngineSettings(_env_file=None, redis_url=REDIS_URL, job_timeout_seconds=120))
    task_id = f"expiry-test-{uuid.uuid4()}"
    try:
        app.backend.store_result(task_id, {"pictures": []}, "SUCCESS")
        lifetime = redis.Redis.from_url(REDIS_URL).ttl(f"celery-task-meta-{task_id}")
        assert 0 < lifetime <= 120
        app.backend.store_result(task_id, {"done": 1, "total": 4}, "PROGRESS")  # progress too
        assert 0 < redis.Redis.from_url(REDIS_URL).ttl(f"celery-task-meta-{task_id}") <= 120
    finally:
        app.backend.forget(task_id)
        app.close()


def test_the_default_lifetime_is_the_bots_default_job_timeout() -> None:
    from bot.settings import BotSettings

    conf = make_celery(EngineSettings(_env_file=None)).conf
    assert conf.result_expires == BotSettings(_env_file=None).job_timeout_seconds
    # A full or unreachable broker never stops the worker: refused writes are retried, forever.
    assert conf.broker_channel_error_retry is True and conf.broker_connection_max_retries is None
