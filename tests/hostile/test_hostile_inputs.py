"""Hostile input through the real worker and the real Telegram path.

Each input gets its one-line error (or is handled correctly) within a bounded
time, the worker's memory stays bounded, and both keep serving afterwards.
"""

from __future__ import annotations

import io
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest
from PIL import Image

from mmpp.contract import GENERATE_TASK_NAME, MAX_UPLOAD_BYTES, GenerateRequest, GenerateResult, Mode
from mmpp.errors import ErrorCode, MmppError
from tests.conftest import REDIS_URL, SAMPLE_SELFIE, redis_available, start_worker, stop_worker
from tests.images import decompression_bomb, encoded, two_faces

SECONDS_PER_INPUT = 90
WORKER_MEMORY_LIMIT_BYTES = 3 * 2**30


def selfie() -> Image.Image:
    return Image.open(SAMPLE_SELFIE).convert("RGB")


def rotated_with_exif() -> bytes:
    """The selfie stored sideways with EXIF orientation 6: viewers (and we) must turn it upright."""
    sideways = selfie().transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    return encoded(sideways, "JPEG", exif=exif.tobytes())


def sixteen_bit() -> bytes:
    grey = np.asarray(selfie().convert("L"), dtype=np.uint16) * 257
    return encoded(Image.fromarray(grey), "PNG")  # uint16 → mode I;16


def animated_gif() -> bytes:
    frames = [selfie().convert("P"), selfie().transpose(Image.Transpose.FLIP_LEFT_RIGHT).convert("P")]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buffer.getvalue()


JPEG = SAMPLE_SELFIE.read_bytes()
CASES: dict[str, tuple[bytes, dict[str, object], ErrorCode | None]] = {
    "truncated jpeg": (JPEG[: len(JPEG) // 2], {}, ErrorCode.NOT_AN_IMAGE),
    "corrupt png": (encoded(selfie(), "PNG")[:200] + b"\x00garbage" * 50, {}, ErrorCode.NOT_AN_IMAGE),
    "text named .jpg": (b"Dear diary, today I sent a text file as a photo.", {}, ErrorCode.NOT_AN_IMAGE),
    "decompression bomb": (decompression_bomb(), {}, ErrorCode.IMAGE_TOO_LARGE),
    "animated gif": (animated_gif(), {}, ErrorCode.NOT_AN_IMAGE),
    "16x16": (encoded(Image.new("RGB", (16, 16), "white"), "PNG"), {}, ErrorCode.IMAGE_TOO_SMALL),
    "cmyk jpeg": (encoded(selfie().convert("CMYK"), "JPEG"), {}, None),
    "16-bit png": (sixteen_bit(), {}, None),
    "exif rotated": (rotated_with_exif(), {}, None),
    "several faces": (two_faces(SAMPLE_SELFIE.read_bytes()), {}, ErrorCode.MULTIPLE_FACES),
    "control characters": (JPEG, {"prompt": "a pirate\x00\x07\x1b[31m with a hat\r\n"}, None),
    "10 000 characters": (JPEG, {"prompt": "x" * 10_000}, ErrorCode.PROMPT_TOO_LONG),
    "unknown style": (JPEG, {"style": "building"}, ErrorCode.UNKNOWN_STYLE),
    "other scripts": (JPEG, {"prompt": "пират в шляпе 海賊 قبعة"}, None),
}


@pytest.fixture(scope="module")
def hostile_worker(cache_dir: Path) -> Iterator[tuple[str, psutil.Process]]:
    if not redis_available():
        pytest.fail(f"Redis is not reachable at {REDIS_URL}")
    queue = f"mmpp-hostile-{uuid.uuid4().hex[:8]}"
    worker = start_worker(queue, cache_dir)
    yield queue, psutil.Process(worker.pid)
    alive = worker.poll() is None
    stop_worker(worker)
    assert alive, "the worker died on hostile input"


def worker_memory(process: psutil.Process) -> int:
    return sum(child.memory_info().rss for child in [process, *process.children(recursive=True)])


def test_each_hostile_input_is_answered_in_bounded_time_and_memory(hostile_worker: tuple[str, psutil.Process]) -> None:
    from engine.celery_app import make_celery
    from engine.settings import EngineSettings

    queue, process = hostile_worker
    app = make_celery(EngineSettings(_env_file=None, redis_url=REDIS_URL, queue=queue))
    outcomes = {}
    for name, (photo, fields, expected) in CASES.items():
        request = {"style": "anime", "mode": Mode.FAST, "steps": 4, "seed": 1, **fields}
        payload = GenerateRequest(selfie=photo, **request).to_payload()  # type: ignore[arg-type]
        started = time.monotonic()
        result = GenerateResult.from_payload(
            app.send_task(GENERATE_TASK_NAME, args=[payload], queue=queue).get(timeout=SECONDS_PER_INPUT)
        )
        elapsed = time.monotonic() - started
        outcomes[name] = result.error_code
        assert elapsed < SECONDS_PER_INPUT, name
        if expected is None:
            assert result.ok, (name, result.error_code, result.error_message)
        else:
            assert result.error_code is expected, (name, result.error_code, result.error_message)
            assert "\n" not in result.error_message and len(result.error_message) < 300
        assert worker_memory(process) < WORKER_MEMORY_LIMIT_BYTES, name
    payload = GenerateRequest(selfie=JPEG, style="anime", mode=Mode.FAST, steps=4).to_payload()
    assert GenerateResult.from_payload(
        app.send_task(GENERATE_TASK_NAME, args=[payload], queue=queue).get(timeout=90)
    ).ok


def test_a_50_mb_upload_is_refused_before_it_is_sent() -> None:
    huge = b"\xff\xd8" + bytes(50 * 2**20)
    with pytest.raises(MmppError) as raised:
        GenerateRequest(selfie=huge, style="anime").validate()
    assert raised.value.code is ErrorCode.IMAGE_TOO_LARGE and len(huge) > MAX_UPLOAD_BYTES
