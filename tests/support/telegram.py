"""Bot settings for the real Telegram adapter against the loopback fake (``tests/fakes/telegram_api.py``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bot.settings import BotSettings
from tests.fakes.telegram_api import FakeTelegram


def telegram_settings(
    fake: FakeTelegram, tmp_path: Path, *, redis_url: str, queue: str, **overrides: Any
) -> BotSettings:
    """The fake's addresses, a database and state folder of the test's own under ``tmp_path``, quick polling;
    ``overrides`` replace any of them.  ``.env`` is not read."""
    values: dict[str, Any] = {
        "redis_url": redis_url,
        "queue": queue,
        "database": tmp_path / "mmpp.sqlite3",
        "state_dir": tmp_path / "state",
        "telegram_base_url": fake.base_url,
        "telegram_base_file_url": fake.base_file_url,
        "poll_interval_seconds": 0.1,
    }
    values.update(overrides)
    return BotSettings(_env_file=None, **values)
