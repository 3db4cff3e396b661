"""The Celery task: parse the payload, call the engine, serialise the result.

All logic lives in :class:`engine.pipeline.Engine`; this module only turns
every outcome into a JSON result with a stable error code, so the worker
survives anything a job can throw at it and the bot always gets an answer.
"""

from __future__ import annotations

import base64
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import worker_process_init

from engine import worker_metrics
from engine.celery_app import app
from mmpp.contract import GENERATE_TASK_NAME, GenerateRequest, GenerateResult
from mmpp.errors import ErrorCode, MmppError

logger = logging.getLogger(__name__)

#: Progress updates are writes to the result backend; a few per second is
#: plenty for a status message the bot may edit once a second at most.
PROGRESS_INTERVAL_SECONDS = 0.5

_engine: Any = None
_engine_lock = threading.Lock()


def get_engine() -> Any:
    """The process's engine, built on first use and kept warm.

    Built lazily (and at worker-process start, see below) rather than at
    import, so that a prefork parent never initialises CUDA before forking.
    A failed build is retried by the next job instead of killing the worker.
    """
    global _engine
    with _engine_lock:
        if _engine is None:
            from engine.hub import prefer_offline_when_unreachable

            prefer_offline_when_unreachable()
            from engine.pipeline import Engine

            try:
                _engine = Engine.from_settings()
            except MmppError as error:
                worker_metrics.health.update(engine="failed", last_error=error.code.value)
                raise
            worker_metrics.health.update(engine="ready", last_error=None)
        return _engine


@worker_process_init.connect
def _warm_up(**_: Any) -> None:
    from engine.settings import EngineSettings

    port = EngineSettings().metrics_port
    if port:
        try:
            worker_metrics.serve_metrics(port)
        except OSError as error:
            logger.error("metrics port %d unavailable: %s", port, error.strerror)
    if os.environ.get("MMPP_LAZY_ENGINE") == "1":
        return
    try:
        get_engine()
    except MmppError as error:
        logger.error("engine not ready yet: %s", error.as_line())


class ProgressReporter:
    """Turns the engine's progress and previews into PROGRESS states in the result backend.

    Every state is a write to the backend, so one is written only when
    something changed, and progress alone at most every
    :data:`PROGRESS_INTERVAL_SECONDS` (the last step always).  A preview is
    written with the progress it belongs to; it lives in the PROGRESS state
    only, which the final result replaces, so nothing of it outlives the job.
    """

    def __init__(self, write: Callable[[dict[str, Any]], None], clock: Callable[[], float] = time.monotonic) -> None:
        self._write = write
        self._clock = clock
        self._last_written = float("-inf")
        self._last_meta: dict[str, Any] = {}
        self._preview = ""
        self._failing = False

    def progress(self, done: int, total: int) -> None:
        if done < total and self._clock() - self._last_written < PROGRESS_INTERVAL_SECONDS:
            return
        self._send({"done": done, "total": total})

    def preview(self, done: int, total: int, jpeg: bytes) -> None:
        self._preview = base64.b64encode(jpeg).decode("ascii")
        self._send({"done": done, "total": total})

    def _send(self, meta: dict[str, Any]) -> None:
        if self._preview:
            meta["preview_jpeg_b64"] = self._preview
        if meta == self._last_meta:
            return
        self._last_written = self._clock()
        self._last_meta = meta
        try:
            self._write(meta)
        except Exception as error:  # noqa: BLE001 - best effort: a broker hiccup must not fail the pictures
            # Once per run of failures, without a traceback: a full or unreachable Redis refuses every
            # write, and a line per step would bury the one that says why.
            if not self._failing:
                logger.warning(
                    "progress report failed (%s: %s); the job goes on, and its progress is not reported "
                    "until the result backend takes writes again",
                    type(error).__name__,
                    str(error)[:200],
                )
            self._failing = True
        else:
            self._failing = False


def run_job(
    payload: Any,
    job_id: str,
    report_progress: Any = None,
    report_preview: Any = None,
) -> dict[str, Any]:
    """The task's body as a plain function, so tests can call it directly."""
    try:
        request = GenerateRequest.from_payload(payload)
        request.validate()
        engine = get_engine()
        result = engine.generate(request, report_progress, on_preview=report_preview)
        logger.info(
            "job %s done: style=%s mode=%s pictures=%d total=%.2fs",
            job_id,
            result.style,
            result.mode,
            len(result.pictures),
            result.timings.get("total", 0.0),
        )
        result.job_id = job_id
        return result.to_payload()
    except MmppError as error:
        logger.info("job %s refused: %s", job_id, error.code.value)
        return GenerateResult.failure(error, job_id).to_payload()
    except SoftTimeLimitExceeded:
        logger.warning("job %s hit the soft time limit", job_id)
        error = MmppError(ErrorCode.TIMEOUT, "The job took too long and was stopped; try fast mode or fewer pictures.")
        return GenerateResult.failure(error, job_id).to_payload()
    except Exception:
        logger.exception("job %s failed unexpectedly", job_id)
        error = MmppError(ErrorCode.INTERNAL, "Something went wrong on our side; please try again.")
        return GenerateResult.failure(error, job_id).to_payload()


@app.task(name=GENERATE_TASK_NAME, bind=True)
def generate(self: Any, payload: Any) -> dict[str, Any]:
    result = _generate(self, payload)
    worker_metrics.record_result(result)
    return result


def _generate(self: Any, payload: Any) -> dict[str, Any]:
    reporter = ProgressReporter(lambda meta: self.update_state(state="PROGRESS", meta=meta))
    return run_job(payload, self.request.id or "", reporter.progress, reporter.preview)
