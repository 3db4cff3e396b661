"""Two bot processes on one PostgreSQL database, as two machines would run them: real ``mmpp run`` processes
(Discord, one shard each of two) against the loopback Discord fake in this process, one tiny worker.

What must hold: a process SIGKILLed while posting a job's pictures leaves no picture posted twice and none
missing (its restart finishes the job: the pictures already posted have their messages recorded, the claim
is its shard's); 200 people rating at once through both processes leave every rating stored once.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from bot.storage import Storage
from tests.bot.discord_app.test_discord import picture_messages, selfie_attachment
from tests.conftest import REDIS_URL, REPO
from tests.fakes.discord_api import FakeDiscord, FakeUser
from tests.faults.conftest import wait_until

PICTURE_NAME = re.compile(r"^mmpp-(\d+)-(\d+)\.png$")
#: Discord's number reactions and the scores the core gives them.
NUMBER_REACTIONS = {"1️⃣": 1, "2️⃣": 2, "3️⃣": 3, "4️⃣": 4, "5️⃣": 5}


class BotProcess:
    """``mmpp run --no-worker`` for Discord shard ``shard`` of two, on ``database_url``; a test may SIGKILL it."""

    def __init__(self, fake: FakeDiscord, shard: int, database_url: str, queue: str, folder: Path) -> None:
        self.shard = shard
        self.folder = folder
        self.log = folder / f"shard-{shard}.log"
        self.environment = {
            **{name: value for name, value in os.environ.items() if not name.startswith("MMPP_")},
            "DISCORD_TOKEN": fake.token,
            "MMPP_DISCORD_API_BASE": fake.api_base,
            "MMPP_DISCORD_GATEWAY_URL": fake.gateway_url,
            "MMPP_DISCORD_SHARD_COUNT": "2",
            "MMPP_DISCORD_SHARD_IDS": str(shard),
            "MMPP_DISCORD_GUILD_READY_TIMEOUT": "0.05",
            "MMPP_DATABASE_URL": database_url,
            "MMPP_STATE_DIR": str(folder / f"state-{shard}"),
            "MMPP_POLL_INTERVAL_SECONDS": "0.1",
            "MMPP_QUEUE": queue,
            "REDIS_URL": REDIS_URL,
            "PYTHONUNBUFFERED": "1",
        }
        self.environment.pop("TELEGRAM_TOKEN", None)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as output:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "mmpp.cli", "run", "--no-worker", "-v"], cwd=REPO, env=self.environment,
                stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
            )  # fmt: skip

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: no goodbye to Discord, the broker or the database."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def connections(self) -> int:
        """How many times a process of this shard has connected its gateway session (its log says so)."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return text.count(f"Shard ID {self.shard} has connected to Gateway")

    def log_tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else "(no log)"
        return f"--- shard {self.shard}\n" + "\n".join(text.splitlines()[-lines:])


@pytest.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord(auto_patch=False) as server:
        yield server


@pytest.fixture
def processes() -> Iterator[list[BotProcess]]:
    started: list[BotProcess] = []
    yield started
    for process in started:
        process.stop()


async def start_both(
    fake: FakeDiscord, database_url: str, queue: str, folder: Path, processes: list[BotProcess]
) -> list[BotProcess]:
    """Both processes, each once its shard's session is open and its commands are answered."""
    pair = [BotProcess(fake, shard, database_url, queue, folder) for shard in (0, 1)]
    processes.extend(pair)
    for process in pair:
        process.start()
    for process in pair:
        await connected(fake, process)
    return pair


async def connected(fake: FakeDiscord, process: BotProcess, starts_before: int = 0) -> None:
    """Until this start of ``process`` has its shard's session open (discord.py logs it) and its core resumed."""

    def ready() -> bool:
        if not process.alive():
            raise AssertionError(f"the bot process exited\n{process.log_tail()}")
        return process.connections() > starts_before

    await wait_until(ready, 90, f"shard {process.shard} to connect")
    await asyncio.sleep(0.5)  # the core resumes its jobs right after the adapter connects


def pictures_posted(fake: FakeDiscord) -> Counter[tuple[int, int]]:
    """(job, position) of every picture message on the fake: each must be there once."""
    posted = Counter[tuple[int, int]]()
    for message in picture_messages(fake):
        for attachment in message["attachments"]:
            match = PICTURE_NAME.match(attachment["filename"])
            if match:
                posted[(int(match.group(1)), int(match.group(2)))] += 1
    return posted


async def test_a_process_killed_while_posting_pictures_leaves_each_picture_posted_once(
    fake: FakeDiscord, postgres_url: str, redis_worker: str, tmp_path: Path, processes: list[BotProcess]
) -> None:
    """Bob's job (shard 1) is SIGKILLed between its first and its second picture (Discord held the second one
    back with a 30 s rate limit); Alice's (shard 0) is delivered meanwhile by the other process.  The restarted
    shard-1 process takes its job up again and posts only the picture still missing."""
    _, alice_channel = fake.add_guild(shard=(0, 2))
    _, bob_channel = fake.add_guild(shard=(1, 2))
    alice, bob = fake.default_user, fake.add_user("bob")
    first, second = await start_both(fake, postgres_url, redis_worker, tmp_path, processes)
    storage = await Storage.open(postgres_url)
    try:
        # Bob orders first, so his job is job 1: Discord holds back its second picture's upload.
        held = fake.fail_next(
            "POST", r"^/webhooks/", status=429, retry_after=30.0,
            where=lambda request: any(file.filename == "mmpp-1-2.png" for file in request.files),
        )  # fmt: skip
        bob_asked = await fake.send_slash_command(
            "profile", {"style": "anime", "count": 2}, user=bob, attachments=selfie_attachment(), channel_id=bob_channel
        )
        await wait_until(lambda: storage.count("jobs"), 30, f"Bob's job\n{second.log_tail()}")
        alice_asked = await fake.send_slash_command(
            "profile", {"style": "anime", "count": 2}, user=alice, attachments=selfie_attachment(),
            channel_id=alice_channel,
        )  # fmt: skip
        await wait_until(lambda: held.hits, 120, f"Bob's second picture\n{second.log_tail()}")
        second.kill()
        assert pictures_posted(fake)[(1, 1)] == 1 and pictures_posted(fake)[(1, 2)] == 0

        await wait_until(lambda: pictures_posted(fake)[(2, 2)], 120, f"Alice's pictures\n{first.log_tail()}")
        starts = second.connections()
        second.start()
        await connected(fake, second, starts_before=starts)

        async def bob_delivered() -> bool:
            job = await storage.job(1)
            return job is not None and job.delivered_at is not None

        await wait_until(bob_delivered, 60, "Bob's job to be delivered")
        await asyncio.sleep(1.0)  # room for a duplicate to show up
        assert pictures_posted(fake) == Counter({(1, 1): 1, (1, 2): 1, (2, 1): 1, (2, 2): 1})
        by_channel = Counter(int(message["channel_id"]) for message in picture_messages(fake))
        assert by_channel == Counter({bob_channel: 2, alice_channel: 2})
        for asked in (bob_asked, alice_asked):  # each acknowledged once
            assert [callback.type for callback in asked.callbacks] == [5]
        assert await storage.count("jobs", "delivered_at IS NOT NULL AND state = 'done'") == 2
        assert await storage.delivery_claimant(1) == "discord shards 1 of 2"
        assert await storage.delivery_claimant(2) == "discord shards 0 of 2"
        assert first.alive(), first.log_tail()
        assert "resuming job 1" in second.log.read_text(errors="replace")
    finally:
        await storage.close()


async def test_200_raters_across_two_processes_are_neither_lost_nor_doubled(
    fake: FakeDiscord, postgres_url: str, redis_worker: str, tmp_path: Path, processes: list[BotProcess]
) -> None:
    """One picture in each process's server; 200 people react to both at once (their user rows written by both
    processes at the same moment), then 50 of them change their minds on both: 400 ratings, each the last
    score its rater gave."""
    _, first_channel = fake.add_guild(shard=(0, 2))
    _, second_channel = fake.add_guild(shard=(1, 2))
    await start_both(fake, postgres_url, redis_worker, tmp_path, processes)
    for channel in (first_channel, second_channel):
        await fake.send_slash_command(
            "profile", {"style": "anime", "count": 1}, attachments=selfie_attachment(), channel_id=channel
        )
    await wait_until(lambda: len(picture_messages(fake)) == 2, 120, "the two pictures")
    messages = [int(message["id"]) for message in picture_messages(fake)]
    storage = await Storage.open(postgres_url)
    try:
        raters = [FakeUser(70_000 + index, f"rater{index}") for index in range(200)]
        emoji = list(NUMBER_REACTIONS)

        await asyncio.gather(*(
            fake.add_reaction(message, emoji[index % 5], rater)
            for index, rater in enumerate(raters) for message in messages
        ))  # fmt: skip
        await wait_until(lambda: _ratings_are(storage, 400), 60, "400 ratings")
        changing = raters[:50]
        await asyncio.gather(*(
            _change_mind(fake, message, rater, emoji[index % 5], emoji[(index + 2) % 5])
            for index, rater in enumerate(changing) for message in messages
        ))  # fmt: skip

        last = {
            str(rater.id): NUMBER_REACTIONS[emoji[(index + 2) % 5] if index < 50 else emoji[index % 5]]
            for index, rater in enumerate(raters)
        }

        async def scores() -> Counter[tuple[str, int]]:
            rows = await storage._db.fetch_all(
                "SELECT users.platform_user_id, ratings.score FROM ratings JOIN users ON users.id = ratings.rater_id"
            )
            return Counter((str(row[0]), int(row[1])) for row in rows)

        wanted = Counter({(rater, score): 2 for rater, score in last.items()})

        async def all_changed() -> bool:
            return await scores() == wanted

        await wait_until(all_changed, 60, "the changed minds")
        await asyncio.sleep(1.0)  # room for a duplicate or a late withdrawal to show up
        assert await scores() == wanted
        assert await storage.count("ratings") == 400
        assert await storage.count("users", "platform_user_id LIKE '7%'") == 200
        assert all(process.alive() for process in processes)
    finally:
        await storage.close()


async def _ratings_are(storage: Storage, wanted: int) -> bool:
    return await storage.count("ratings") == wanted


async def _change_mind(fake: FakeDiscord, message: int, rater: FakeUser, old: str, new: str) -> None:
    await fake.remove_reaction(message, old, rater)
    await fake.add_reaction(message, new, rater)
