"""The Celery task, in-process and through a real worker on the real Redis."""

from __future__ import annotations

import base64
import io
import logging
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from celery.result import AsyncResult
from celery.states import READY_STATES
from PIL import Image

from engine import tasks
from mmpp.contract import CONTRACT_VERSION, GENERATE_TASK_NAME, GenerateRequest, GenerateResult, Mode
from mmpp.errors import ErrorCode
from tests.conftest import REDIS_URL, redis_available, start_worker, stop_worker
from tests.images import decompression_bomb, encoded, two_faces

REPO = Path(__file__).resolve().parents[2]


png_bytes = encoded


def payload(selfie: bytes, **fields: object) -> dict[str, object]:
    defaults: dict[str, object] = {"style": "anime", "mode": Mode.FAST, "steps": 4, "seed": 3}
    defaults.update(fields)
    return GenerateRequest(selfie=selfie, **defaults).to_payload()  # type: ignore[arg-type]


# ---------------------------------------------------------------- in-process


def test_run_job_turns_an_unexpected_exception_into_internal(monkeypatch: pytest.MonkeyPatch, selfie_bytes) -> None:
    class Exploding:
        def generate(self, *args: object, **kwargs: object) -> None:
            raise RuntimeError("secret internals /home/user/token=abc")

    monkeypatch.setattr(tasks, "get_engine", lambda: Exploding())
    result = GenerateResult.from_payload(tasks.run_job(payload(selfie_bytes), "job-1"))
    assert result.error_code is ErrorCode.INTERNAL
    assert "secret" not in result.error_message and "token" not in result.error_message
    assert result.job_id == "job-1"


@pytest.mark.parametrize(
    ("bad_payload", "code"),
    [
        ("not a dict", ErrorCode.INVALID_REQUEST),
        ({"version": 99}, ErrorCode.INVALID_REQUEST),
        # A bot from before variants (version 1): refused, not rendered as the base style by mistake.
        ({"version": 1, "selfie_b64": "aGVsbG8=", "style": "anime"}, ErrorCode.INVALID_REQUEST),
        ({"version": CONTRACT_VERSION, "selfie_b64": "%%%", "style": "anime"}, ErrorCode.NOT_AN_IMAGE),
        (
            {"version": CONTRACT_VERSION, "selfie_b64": "aGVsbG8=", "style": "anime", "mode": "turbo"},
            ErrorCode.INVALID_REQUEST,
        ),
        (
            {"version": CONTRACT_VERSION, "selfie_b64": "aGVsbG8=", "style": "anime", "count": "many"},
            ErrorCode.INVALID_REQUEST,
        ),
    ],
)
def test_run_job_refuses_malformed_payloads_without_loading_a_model(
    monkeypatch: pytest.MonkeyPatch, bad_payload: object, code: ErrorCode
) -> None:
    monkeypatch.setattr(tasks, "get_engine", lambda: pytest.fail("no model should be needed"))
    result = GenerateResult.from_payload(tasks.run_job(bad_payload, "job-2"))
    assert result.error_code is code


def test_run_job_reports_model_unavailable_and_retries_the_load_next_time(
    monkeypatch: pytest.MonkeyPatch, selfie_bytes, tmp_path: Path
) -> None:
    monkeypatch.setenv("MMPP_WEIGHTS", "default")
    monkeypatch.setenv("MMPP_BASE_MODEL", str(tmp_path / "no-such-model"))
    monkeypatch.setattr(tasks, "_engine", None)
    for _ in range(2):
        result = GenerateResult.from_payload(tasks.run_job(payload(selfie_bytes), "job-3"))
        assert result.error_code is ErrorCode.MODEL_UNAVAILABLE
        assert "no-such-model" in result.error_message
    assert tasks._engine is None


# ---------------------------------------------------------------- a real worker on Redis


@pytest.fixture
def worker_queue(redis_worker: str) -> str:
    return redis_worker


def client(queue: str):
    from engine.celery_app import make_celery
    from engine.settings import EngineSettings

    return make_celery(EngineSettings(_env_file=None, redis_url=REDIS_URL, queue=queue))


def send(queue: str, job: object, **options: object) -> GenerateResult:
    async_result = client(queue).send_task(GENERATE_TASK_NAME, args=[job], queue=queue, **options)
    return GenerateResult.from_payload(async_result.get(timeout=180))


def watch_progress(async_result: AsyncResult, timeout: float = 180) -> tuple[set[str], list[dict[str, Any]]]:
    """Every state the task passed through and every PROGRESS meta seen, until it is ready.

    State and meta are read in one backend read: asking ``.state`` and then ``.info`` reads twice, and a job
    that finishes in between hands its final result over as if it were progress.
    """
    states: set[str] = set()
    progress: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        meta = async_result.backend.get_task_meta(async_result.id)
        states.add(meta["status"])
        if meta["status"] == "PROGRESS":
            progress.append(meta["result"])
        elif meta["status"] in READY_STATES:
            break
        time.sleep(0.05)
    return states, progress


def test_worker_completes_a_job_and_reports_progress(worker_queue: str, selfie_bytes: bytes) -> None:
    app = client(worker_queue)
    async_result = app.send_task(
        GENERATE_TASK_NAME,
        args=[payload(selfie_bytes, mode=Mode.QUALITY, steps=15, guidance=5.0, count=2)],
        queue=worker_queue,
    )
    states, progress = watch_progress(async_result)
    result = GenerateResult.from_payload(async_result.get(timeout=5))
    assert result.ok, result.error_message
    assert [picture.seed for picture in result.pictures] == [3, 4]
    assert all(Image.open(io.BytesIO(picture.png)).format == "PNG" for picture in result.pictures)
    assert result.test_sized_model
    assert "PROGRESS" in states
    # Both pictures in one batched call: the job's progress is its 15 steps.
    assert all(0 < item["done"] <= item["total"] == 15 for item in progress)
    for item in progress:
        if "preview_jpeg_b64" in item:
            assert Image.open(io.BytesIO(base64.b64decode(item["preview_jpeg_b64"]))).format == "JPEG"
    # The final result replaced the progress state: nothing of a preview outlives the job.
    import redis

    stored = redis.Redis.from_url(REDIS_URL).get(f"celery-task-meta-{async_result.id}")
    assert stored is not None and b"preview_jpeg" not in stored


def test_progress_reporter_writes_only_changes_and_keeps_the_latest_preview() -> None:
    written: list[dict[str, object]] = []
    now = [0.0]
    reporter = tasks.ProgressReporter(written.append, clock=lambda: now[0])
    reporter.progress(1, 4)
    reporter.progress(2, 4)  # too soon after the first: skipped
    now[0] += tasks.PROGRESS_INTERVAL_SECONDS
    reporter.progress(2, 4)
    reporter.progress(2, 4)  # unchanged: skipped whatever the time
    reporter.preview(2, 4, b"jpeg-bytes")
    reporter.progress(4, 4)  # the last step is always written
    assert written == [
        {"done": 1, "total": 4},
        {"done": 2, "total": 4},
        {"done": 2, "total": 4, "preview_jpeg_b64": base64.b64encode(b"jpeg-bytes").decode()},
        {"done": 4, "total": 4, "preview_jpeg_b64": base64.b64encode(b"jpeg-bytes").decode()},
    ]

    def broken(meta: dict[str, object]) -> None:
        raise ConnectionError("backend down")

    tasks.ProgressReporter(broken).progress(4, 4)  # a failed write is logged, never raised


def test_a_refused_progress_write_is_logged_once_per_run_of_failures(caplog: pytest.LogCaptureFixture) -> None:
    """A full Redis refuses every write: one warning says so, not one traceback per step."""
    refusing = [True]
    written: list[dict[str, object]] = []

    def write(meta: dict[str, object]) -> None:
        if refusing[0]:
            raise RuntimeError("OOM command not allowed when used memory > 'maxmemory'.")
        written.append(meta)

    reporter = tasks.ProgressReporter(write, clock=lambda: 0.0)
    with caplog.at_level(logging.WARNING, logger="engine.tasks"):
        for step in range(1, 5):
            reporter.progress(step, 10) if step == 1 else reporter.preview(step, 10, bytes([step]))
        refusing[0] = False
        reporter.preview(5, 10, b"five")
        refusing[0] = True
        reporter.preview(6, 10, b"six")
    warnings = [record for record in caplog.records if "progress report failed" in record.getMessage()]
    assert len(warnings) == 2 and all(record.exc_info is None for record in warnings)
    assert "maxmemory" in warnings[0].getMessage()
    assert [meta["done"] for meta in written] == [5]


def test_worker_returns_every_error_code_and_keeps_serving(worker_queue: str, selfie_bytes: bytes) -> None:
    cases = {
        ErrorCode.NOT_AN_IMAGE: payload(b"this is a text file, not a photo"),
        ErrorCode.IMAGE_TOO_SMALL: payload(png_bytes(Image.new("RGB", (16, 16)))),
        ErrorCode.IMAGE_TOO_LARGE: payload(decompression_bomb()),
        ErrorCode.NO_FACE: payload(png_bytes(Image.new("RGB", (256, 256), (40, 90, 160)))),
        ErrorCode.MULTIPLE_FACES: payload(two_faces(selfie_bytes)),
        ErrorCode.UNKNOWN_STYLE: payload(selfie_bytes, style="building"),
        ErrorCode.PROMPT_TOO_LONG: payload(selfie_bytes, prompt="a" * 10_000),
        ErrorCode.INVALID_REQUEST: {**payload(selfie_bytes), "count": 9},
    }
    app = client(worker_queue)
    pending = {code: app.send_task(GENERATE_TASK_NAME, args=[job], queue=worker_queue) for code, job in cases.items()}
    for code, async_result in pending.items():
        result = GenerateResult.from_payload(async_result.get(timeout=180))
        assert result.error_code is code, (code, result.error_message)
        assert result.error_message and "\n" not in result.error_message and "Traceback" not in result.error_message
    assert send(worker_queue, payload(selfie_bytes)).ok


def test_worker_soft_time_limit_becomes_timeout(worker_queue: str, selfie_bytes: bytes) -> None:
    slow = payload(selfie_bytes, mode=Mode.QUALITY, steps=50, guidance=5.0, count=4)
    result = send(worker_queue, slow, soft_time_limit=1, time_limit=60)
    assert result.error_code is ErrorCode.TIMEOUT
    assert send(worker_queue, payload(selfie_bytes)).ok


def test_worker_without_weights_answers_model_unavailable_and_survives(
    cache_dir: Path, selfie_bytes: bytes, tmp_path: Path
) -> None:
    if not redis_available():
        pytest.fail(f"Redis is not reachable at {REDIS_URL}")
    queue = f"mmpp-test-noweights-{uuid.uuid4().hex[:8]}"
    worker = start_worker(queue, cache_dir, MMPP_WEIGHTS="default", MMPP_BASE_MODEL=str(tmp_path / "missing-model"))
    try:
        for _ in range(2):
            result = send(queue, payload(selfie_bytes))
            assert result.error_code is ErrorCode.MODEL_UNAVAILABLE
            assert "missing-model" in result.error_message
        assert worker.poll() is None
    finally:
        stop_worker(worker)


# ---------------------------------------------------------------- a FLUX.2 [klein] worker on Redis


def test_a_klein_worker_completes_jobs_and_answers_bad_ones_with_their_codes(
    klein_worker: str, selfie_bytes: bytes
) -> None:
    klein_worker_queue = klein_worker
    app = client(klein_worker_queue)
    async_result = app.send_task(GENERATE_TASK_NAME, args=[payload(selfie_bytes, count=2)], queue=klein_worker_queue)
    _, progress = watch_progress(async_result)
    result = GenerateResult.from_payload(async_result.get(timeout=5))
    assert result.ok, result.error_message
    assert result.model.startswith("tiny-flux2-klein") and result.test_sized_model
    assert [picture.seed for picture in result.pictures] == [3, 4] and result.steps == 4 and result.guidance == 1.0
    assert all(Image.open(io.BytesIO(picture.png)).size == (64, 64) for picture in result.pictures)
    assert all(0 < item["done"] <= item["total"] == 4 for item in progress)
    cases = {
        "no face": (payload(png_bytes(Image.new("RGB", (256, 256), (40, 90, 160)))), ErrorCode.NO_FACE),
        "weights": (payload(selfie_bytes, prompt="a person++"), ErrorCode.INVALID_REQUEST),
        "guidance": (payload(selfie_bytes, guidance=2.0), ErrorCode.INVALID_REQUEST),
        "upscale": (
            payload(selfie_bytes, mode=Mode.QUALITY, steps=None, upscale_source=png_bytes(Image.new("RGB", (64, 64)))),
            ErrorCode.MODEL_UNAVAILABLE,
        ),
        "style": (payload(selfie_bytes, style="building"), ErrorCode.UNKNOWN_STYLE),
    }
    pending = {
        name: (app.send_task(GENERATE_TASK_NAME, args=[job], queue=klein_worker_queue), code)
        for name, (job, code) in cases.items()
    }
    for name, (answer, code) in pending.items():
        failed = GenerateResult.from_payload(answer.get(timeout=180))
        assert failed.error_code is code, (name, failed.error_message)
        assert failed.error_message and "\n" not in failed.error_message
    assert send(klein_worker_queue, payload(selfie_bytes)).ok
