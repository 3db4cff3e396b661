"""Shared fixtures: the tiny engines are built once per test session.

The tiny model cache goes to ``MMPP_CACHE_DIR`` when set (``make test`` sets
it to ``var/cache`` so reruns skip the build) or to a session temp folder.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLE_SELFIE = REPO / "engine" / "assets" / "sample_selfie.jpg"
REDIS_URL = os.environ.get("MMPP_TEST_REDIS_URL", "redis://127.0.0.1:6379/9")
#: The PostgreSQL the storage tests run on (`make test` starts a private one when none answers); each test gets
#: its own fresh schema of this database, dropped after it.
POSTGRES_URL = os.environ.get("MMPP_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
# Tests never download: without this every Hub lookup retries for ~25 s before failing.
os.environ["HF_HUB_OFFLINE"] = "1"


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    configured = os.environ.get("MMPP_CACHE_DIR")
    path = Path(configured) if configured else tmp_path_factory.mktemp("mmpp-cache")
    os.environ["MMPP_CACHE_DIR"] = str(path)
    return path


@pytest.fixture(scope="session")
def selfie_bytes() -> bytes:
    return SAMPLE_SELFIE.read_bytes()


def redis_available() -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(REDIS_URL, socket_timeout=1).ping())
    except redis.RedisError:
        return False


async def postgres_error() -> str | None:
    """Why the test PostgreSQL does not answer, or ``None`` when it does."""
    import asyncpg

    try:
        connection = await asyncpg.connect(POSTGRES_URL, timeout=5)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
        return f"{type(error).__name__}: {error}"
    await connection.close()
    return None


@pytest.fixture
async def postgres_url() -> AsyncIterator[str]:
    """A fresh, empty schema of the test PostgreSQL, as the URL a bot would be given (``search_path`` names
    the schema, so every table the bot makes lands in it); dropped with all it holds after the test.
    No PostgreSQL is a failure, not a skip: the storage tests must run on both engines."""
    import asyncpg

    problem = await postgres_error()
    if problem is not None:
        pytest.fail(
            f"PostgreSQL is not reachable at {POSTGRES_URL} ({problem}); `make test` starts one (Makefile target "
            "postgres), or set MMPP_TEST_POSTGRES_URL"
        )
    schema = f"mmpp_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(POSTGRES_URL)
    try:
        await admin.execute(f"CREATE SCHEMA {schema}")
        separator = "&" if "?" in POSTGRES_URL else "?"
        yield f"{POSTGRES_URL}{separator}search_path={schema}"
    finally:
        await admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await admin.close()


def start_worker(queue: str, cache_dir: Path, **env: str) -> subprocess.Popen[bytes]:
    """A real Celery worker process (prefork, one child) on the test Redis, tiny weights."""
    environment = {
        **os.environ,
        "REDIS_URL": REDIS_URL,
        "MMPP_QUEUE": queue,
        "MMPP_WEIGHTS": "tiny",
        "MMPP_CACHE_DIR": str(cache_dir),
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
        **env,
    }
    command = [sys.executable, "-m", "mmpp.cli", "worker", "--pool", "prefork", "--concurrency", "1"]
    return subprocess.Popen(command, env=environment, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_worker(worker: subprocess.Popen[bytes]) -> None:
    worker.terminate()
    try:
        worker.wait(timeout=30)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait()


@pytest.fixture(scope="session")
def redis_worker(cache_dir: Path) -> Iterator[str]:
    """One tiny-profile worker for the whole session; yields its queue name."""
    if not redis_available():
        pytest.fail(f"Redis is not reachable at {REDIS_URL}; `make test` starts one (Makefile target redis)")
    from engine.models import build_tiny_weights
    from mmpp.catalogue import load_catalogue

    build_tiny_weights(cache_dir / "tiny", "sd15", load_catalogue().names)  # built once, before the worker races
    queue = f"mmpp-test-{uuid.uuid4().hex[:8]}"
    # Live previews as often as the engine makes them (every 2 steps): a tiny job takes seconds, and the
    # chat tests must see previews while it paints.
    worker = start_worker(queue, cache_dir, MMPP_PREVIEW_MIN_SECONDS="0")
    yield queue
    alive = worker.poll() is None
    stop_worker(worker)
    assert alive, "the worker died during the tests"


@pytest.fixture(scope="session")
def klein_worker(cache_dir: Path) -> Iterator[str]:
    """One worker serving the tiny FLUX.2 [klein] (``MMPP_WEIGHTS=tiny-klein``, the one setting an operator
    changes) for every platform's klein tests; yields its queue name.

    Session-scoped, not per module: the worker's own klein tests and the console, Discord and Telegram klein tests live
    beside their neighbours, and starting a worker (loading the klein pipeline) is the expensive part of each of them.
    """
    if not redis_available():
        pytest.fail(f"Redis is not reachable at {REDIS_URL}; `make test` starts one (Makefile target redis)")
    from engine.models import build_tiny_klein_weights
    from mmpp.catalogue import load_catalogue

    build_tiny_klein_weights(cache_dir / "tiny", load_catalogue().names)  # built once, before the worker loads it
    queue = f"mmpp-klein-{uuid.uuid4().hex[:8]}"
    worker = start_worker(queue, cache_dir, MMPP_WEIGHTS="tiny-klein")
    yield queue
    alive = worker.poll() is None
    stop_worker(worker)
    assert alive, "the klein worker died during the tests"


@pytest.fixture
def restored_logging() -> Iterator[None]:
    """The root logger's handlers and level, httpx's level and warnings capture as they were: the logging
    set-up under test (configure_logging, set_up_logging) replaces them for the whole process."""
    root, httpx = logging.getLogger(), logging.getLogger("httpx")
    handlers, level, httpx_level = list(root.handlers), root.level, httpx.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
        if handler not in handlers:
            handler.close()
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    httpx.setLevel(httpx_level)
    logging.captureWarnings(False)
