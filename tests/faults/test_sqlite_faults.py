"""One SQLite file under load and under SIGKILL: every rating stored, never 'database is locked', never corrupt."""

from __future__ import annotations

import asyncio
import logging
import random
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from bot.storage import Storage
from tests.bot.conftest import ScriptedQueue, tiny_png
from tests.conftest import REPO, SAMPLE_SELFIE
from tests.fakes.telegram_api import FakeTelegram, FakeUser
from tests.faults.conftest import ALICE, BOT_USERNAME, replies_in, telegram_bot, wait_until

RATERS = 200
#: Telegram reactions and the scores the core gives them.
REACTIONS = [("👍", 4), ("🔥", 5), ("🤔", 3), ("👎", 2), ("💩", 1)]


class SqliteWriter:
    """``tests/faults/sqlite_writer.py`` as a separate process, writing ratings through two connections."""

    def __init__(self, database: Path, picture_id: int, platform: str, prefix: str, folder: Path) -> None:
        self.prefix = prefix
        self.output = folder / f"{prefix}.out"
        self.errors = folder / f"{prefix}.err"
        command = [sys.executable, "-m", "tests.faults.sqlite_writer", str(database), str(picture_id), platform, prefix]
        with self.output.open("wb") as out, self.errors.open("wb") as err:
            self.process = subprocess.Popen(command, cwd=REPO, stdout=out, stderr=err)

    def committed(self) -> dict[str, int]:
        """Ratings each connection reported as committed (the last ``a N`` / ``b N`` line)."""
        counts = {"a": 0, "b": 0}
        for line in self.output.read_text().splitlines():
            name, _, number = line.partition(" ")
            if name in counts and number.isdigit():
                counts[name] = int(number)
        return counts

    def error_text(self) -> str:
        return self.errors.read_text(errors="replace")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)


async def make_picture(storage: Storage, platform: str = "telegram") -> int:
    owner = await storage.ensure_user(platform, "owner")
    job, _ = await storage.create_job(
        task_id="task-1", user_id=owner, platform=platform, event_key="event-1", chat_id="1", style="anime",
        prompt="", mode="fast", picture_count=1, seed=1, selfie=SAMPLE_SELFIE.read_bytes(), reply_context={},
    )  # fmt: skip
    (picture,) = await storage.store_pictures(job.id, [(1, tiny_png((200, 0, 0)))])
    return picture.id


async def check_database(database: Path) -> Storage:
    """The file opens through the normal path (migrations included) and SQLite finds nothing wrong."""
    storage = await Storage.open(database)
    assert await storage.integrity_check() == "ok"
    problems = await storage._db.fetch_all("PRAGMA foreign_key_check")
    assert not list(problems), f"dangling references: {list(map(tuple, problems))}"
    return storage


async def test_200_concurrent_reactions_through_the_chat_path_are_all_stored(
    fake_telegram: FakeTelegram, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """200 people react to one picture at once; python-telegram-bot handles the updates concurrently while
    another process writes to the same file through two connections of its own: every rating is stored."""
    caplog.set_level(logging.WARNING)
    fake = fake_telegram
    group = fake.group(bot_is_admin=True)
    async with telegram_bot(fake, tmp_path, job_queue=ScriptedQueue()) as bot:
        await fake.send_photo(group, ALICE, SAMPLE_SELFIE.read_bytes(), caption=f"/profile@{BOT_USERNAME} anime")
        await wait_until(lambda: replies_in(fake, group.id), 30, "the picture")
        await bot.core.wait_idle(timeout=10)
        message_id = fake.calls("sendPhoto")[0].result["message_id"]
        (picture,) = await bot.storage.pictures(1)

        in_flight, peak = 0, 0
        rate_message = bot.core.rate_message

        async def counting_rate_message(*args: Any, **kwargs: Any) -> bool:
            nonlocal in_flight, peak
            in_flight += 1
            peak = max(peak, in_flight)
            try:
                return await rate_message(*args, **kwargs)
            finally:
                in_flight -= 1

        bot.core.rate_message = counting_rate_message  # type: ignore[method-assign]

        other = await make_picture(bot.storage, platform="discord")
        writer = SqliteWriter(bot.settings.database, other, "discord", "other-process", tmp_path)
        try:
            await wait_until(lambda: sum(writer.committed().values()) >= 10, 30, f"the writer\n{writer.error_text()}")
            raters = [FakeUser(50_000 + index, f"Rater {index}") for index in range(RATERS)]
            await asyncio.gather(*(
                fake.react(group, message_id, rater, new=[REACTIONS[index % len(REACTIONS)][0]])
                for index, rater in enumerate(raters)
            ))  # fmt: skip

            def stored() -> Any:
                return bot.storage.count("ratings", "picture_id = ?", (picture.id,))

            async def all_stored() -> bool:
                return await stored() == RATERS

            await wait_until(all_stored, 60, f"{RATERS} ratings")
            assert writer.process.poll() is None, f"the other process died:\n{writer.error_text()}"
        finally:
            writer.kill()

        for index, rater in enumerate(raters):
            rater_id = await bot.storage.find_user("telegram", str(rater.id))
            assert rater_id is not None
            assert await bot.storage.rating(picture.id, rater_id) == REACTIONS[index % len(REACTIONS)][1]
        assert peak >= 10, f"the reactions were handled one at a time (peak {peak})"
        assert sum(writer.committed().values()) > 10
        assert await bot.storage.integrity_check() == "ok"

    messages = [record.getMessage() for record in caplog.records]
    assert not [text for text in messages if "locked" in text or "handler failed" in text], messages
    assert "locked" not in writer.error_text()


async def test_a_process_killed_while_writing_leaves_a_database_that_opens_clean(tmp_path: Path) -> None:
    """SIGKILL a process in the middle of writing ratings through two connections, three times over: each time
    the file opens through Storage.open, integrity_check says ok, and every reported commit is there."""
    database = tmp_path / "mmpp.sqlite3"
    storage = await Storage.open(database)
    picture_id = await make_picture(storage)
    await storage.close()
    rng = random.Random(4)
    expected = Counter[str]()
    for round_number in range(3):
        writer = SqliteWriter(database, picture_id, "telegram", f"round{round_number}", tmp_path)
        try:
            goal = rng.randint(40, 120)
            await wait_until(
                lambda w=writer, g=goal: sum(w.committed().values()) >= g, 60, f"the writer\n{writer.error_text()}"
            )
            await asyncio.sleep(rng.random() * 0.05)
            assert writer.process.poll() is None, f"the writer died by itself:\n{writer.error_text()}"
        finally:
            writer.kill()
        assert "locked" not in writer.error_text()
        assert Path(f"{database}-wal").exists(), "expected the kill to leave a write-ahead log behind"

        storage = await check_database(database)
        try:
            committed = writer.committed()
            for name, reported in committed.items():
                like = (f"round{round_number}-{name}-%",)
                ratings = await storage.count(
                    "ratings", "rater_id IN (SELECT id FROM users WHERE platform_user_id LIKE ?)", like
                )
                users = await storage.count("users", "platform_user_id LIKE ?", like)
                # The last commit may land just before the kill and before its line was printed.
                assert reported <= ratings <= reported + 1, (name, reported, ratings)
                assert ratings <= users <= ratings + 1, (name, ratings, users)
                expected[name] += ratings
            assert await storage.count("ratings") == sum(expected.values())
        finally:
            await storage.close()
