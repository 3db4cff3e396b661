"""Console adapter tests; :func:`chat_environment` is how they point ``mmpp chat`` at a test's world."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import REDIS_URL


def chat_environment(tmp_path: Path, queue: str) -> dict[str, str]:
    """What ``mmpp chat`` needs to serve one test: the session's worker queue on the test Redis, the test's own
    database and output folder, a quick poll, and a person name for the console user."""
    return {
        "REDIS_URL": REDIS_URL,
        "MMPP_QUEUE": queue,
        "MMPP_DATABASE": str(tmp_path / "mmpp.sqlite3"),
        "MMPP_OUT": str(tmp_path / "out"),
        "MMPP_POLL_INTERVAL_SECONDS": "0.1",
        "USER": "tester",
    }
