"""Discord sharding end to end: the real discord.py ``AutoShardedClient`` against the fake gateway's shards, the
real core and one SQLite database shared by two bot "processes" (two adapters and cores in this test process,
each with its own shard range, as two ``mmpp run`` would be), and a real worker on Redis where a job is painted.

What must hold: each process connects only its shards; each person's /profile is answered and delivered once,
by the process whose shard their server is on; a process starting (or restarting) follows only the jobs it may
deliver, and of two that may, only the one holding the job's claim delivers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest

import bot.discord_app as discord_app
from bot.core import ChatCore
from bot.queue import CeleryJobQueue, JobQueue, QueueStatus, make_client
from bot.settings import BotSettings, parse_shard_count, parse_shard_ids
from bot.storage import Job, Storage, utc_now
from mmpp.commandline import run_reporting_errors
from mmpp.errors import ErrorCode, MmppError
from tests.bot.conftest import ScriptedQueue
from tests.bot.discord_app.test_discord import picture_messages, selfie_attachment
from tests.conftest import REDIS_URL
from tests.fakes.discord_api import FakeDiscord

T = TypeVar("T")


@pytest.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord(auto_patch=False) as server:
        yield server


class BotProcess:
    """One bot process's parts: its settings, core, adapter and its own connection to the shared database,
    with what its adapter was asked to deliver (job ids), to say which process answered whom."""

    def __init__(self, name: str, storage: Storage, core: ChatCore, adapter: discord_app.DiscordAdapter) -> None:
        self.name = name
        self.storage = storage
        self.core = core
        self.adapter = adapter
        self.delivered: list[int] = []
        self.ordered: list[str] = []
        delivery = adapter.delivery
        post_pictures, post_failure = delivery.post_pictures, delivery.post_failure
        order_profile = core.order_profile

        async def pictures(job: Job, *arguments: Any) -> None:
            self.delivered.append(job.id)
            await post_pictures(job, *arguments)

        async def failure(job: Job, *arguments: Any) -> None:
            self.delivered.append(job.id)
            await post_failure(job, *arguments)

        async def order(order: Any) -> Any:
            self.ordered.append(order.requester.user_id)
            return await order_profile(order)

        delivery.post_pictures = pictures  # type: ignore[method-assign]
        delivery.post_failure = failure  # type: ignore[method-assign]
        core.order_profile = order  # type: ignore[method-assign]

    async def stop(self) -> None:
        await self.core.stop()
        await self.adapter.close()
        await self.storage.close()


async def start_process(
    name: str, fake: FakeDiscord, tmp_path: Path, queue: str, job_queue: JobQueue | None = None,
    clock: Callable[[], datetime] = utc_now, **overrides: object,
) -> BotProcess:  # fmt: skip
    """What ``mmpp run`` does for Discord (bot.app.serve): the adapter connects, then the core resumes."""
    values: dict[str, object] = {
        "redis_url": REDIS_URL, "queue": queue, "database": tmp_path / "mmpp.sqlite3",
        "state_dir": tmp_path / "state", "discord_api_base": fake.api_base, "discord_gateway_url": fake.gateway_url,
        "discord_guild_ready_timeout": 0.05, "poll_interval_seconds": 0.1,
    }  # fmt: skip
    values.update(overrides)
    settings = BotSettings(_env_file=None, **values)  # type: ignore[arg-type]
    storage = await Storage.open(settings.database)
    queue_client = job_queue or CeleryJobQueue(make_client(settings.redis_url, settings.state_dir))
    core = ChatCore(storage, queue_client, settings, clock=clock)
    adapter = discord_app.DiscordAdapter(core, settings, fake.token)
    process = BotProcess(name, storage, core, adapter)
    await asyncio.wait_for(adapter.open(), 60)
    await core.start()
    return process


def half(shard_id: int) -> dict[str, object]:
    """The settings of a process holding one of two shards."""
    return {"discord_shard_count": "2", "discord_shard_ids": str(shard_id)}


async def eventually(
    read: Callable[[], Awaitable[T]], wanted: int, measure: Callable[[T], int] = int, timeout: float = 10.0
) -> T:  # type: ignore[assignment]
    """What ``read`` answers once ``measure`` of it is ``wanted`` (or at the timeout, for the assert to show)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await read()
        if measure(value) == wanted or asyncio.get_running_loop().time() > deadline:  # type: ignore[arg-type]
            return value
        await asyncio.sleep(0.05)


class HeldQueue(ScriptedQueue):
    """The scripted worker, holding every job in PROGRESS until the test lets it finish."""

    def __init__(self) -> None:
        super().__init__()
        self.released = asyncio.Event()

    async def status(self, task_id: str) -> QueueStatus:
        if not self.released.is_set():
            return QueueStatus("PROGRESS", 1, 3) if task_id in self.submitted else QueueStatus("PENDING")
        return await super().status(task_id)


# --------------------------------------------------------------------------- settings


def test_the_shard_settings_are_read_as_discord_takes_them() -> None:
    assert parse_shard_count("") is None and parse_shard_count(" 4 ") == 4
    assert parse_shard_ids("", 4) is None and parse_shard_ids("", None) is None
    assert parse_shard_ids("0-3", 4) == [0, 1, 2, 3]
    assert parse_shard_ids("4,5,6,7", 8) == [4, 5, 6, 7]
    assert parse_shard_ids("6, 0-1", 8) == [0, 1, 6]


@pytest.mark.parametrize(
    ("count", "ids", "words"),
    [
        ("0", "", "MMPP_DISCORD_SHARD_COUNT must be a whole number of 1 or more"),
        ("two", "", "MMPP_DISCORD_SHARD_COUNT must be a whole number"),
        ("-1", "", "MMPP_DISCORD_SHARD_COUNT must be a whole number"),
        ("", "0-3", "MMPP_DISCORD_SHARD_IDS needs MMPP_DISCORD_SHARD_COUNT"),
        ("4", "4", "shard 4 is not below MMPP_DISCORD_SHARD_COUNT (4); ids run from 0 to 3"),
        ("4", "2-5", "shard 5 is not below"),
        ("4", "3-1", "the range 3-1 runs backwards"),
        ("4", "0-2,2", "names a shard twice"),
        ("4", "a", "'a' is not a shard id or a range like 0-3"),
        ("4", "1,,2", "'' is not a shard id"),
        ("4", "-1", "is not a shard id"),
    ],
)
def test_a_bad_shard_setting_stops_the_adapter_with_one_line(
    count: str, ids: str, words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = BotSettings(_env_file=None, discord_shard_count=count, discord_shard_ids=ids)

    def build() -> int:
        discord_app.MmppClient(None, settings)  # type: ignore[arg-type]
        return 0

    with pytest.raises(MmppError) as refused:
        build()
    assert refused.value.code is ErrorCode.INVALID_REQUEST and words in refused.value.message
    # What `mmpp run` prints: the one line, no traceback.
    assert run_reporting_errors(build, logging.getLogger("test")) != 0
    printed = capsys.readouterr().err
    assert printed.count("\n") == 1 and printed.startswith("error[INVALID_REQUEST]: ") and words in printed


def test_the_shard_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MMPP_DISCORD_SHARD_COUNT", "8")
    monkeypatch.setenv("MMPP_DISCORD_SHARD_IDS", "4-7")
    assert BotSettings(_env_file=None).discord_shards() == (8, [4, 5, 6, 7])


# --------------------------------------------------------------------------- connecting


async def test_without_settings_the_adapter_runs_the_shards_the_gateway_recommends(
    fake: FakeDiscord, tmp_path: Path
) -> None:
    fake.recommended_shards = 2
    process = await start_process("only", fake, tmp_path, "unused", ScriptedQueue())
    try:
        assert any(request.path.endswith("/gateway/bot") for request in fake.requests)
        assert fake.session_shards() == [(0, 2), (1, 2)]
        assert process.adapter.client.shard_count == 2 and process.adapter.delivery.owns_shard(1)
        assert process.adapter.delivery.claimant == "discord all shards"  # the same when the count changes
    finally:
        await process.stop()


async def test_with_settings_the_adapter_connects_only_its_shards(fake: FakeDiscord, tmp_path: Path) -> None:
    fake.recommended_shards = 1  # not asked: the count is set
    on_2, _ = fake.add_guild(shard=(2, 4))
    on_0, _ = fake.add_guild(shard=(0, 4))
    process = await start_process(
        "two-of-four", fake, tmp_path, "unused", ScriptedQueue(), discord_shard_count="4", discord_shard_ids="2-3"
    )
    try:
        assert fake.session_shards() == [(2, 4), (3, 4)]
        guilds = {guild.id for guild in process.adapter.client.guilds}
        assert on_2 in guilds and on_0 not in guilds
        assert not process.adapter.delivery.owns_shard(0) and process.adapter.delivery.owns_shard(3)
    finally:
        await process.stop()


# --------------------------------------------------------------------------- two processes


async def test_two_processes_answer_each_persons_profile_once_by_the_owner_of_its_shard(
    fake: FakeDiscord, tmp_path: Path, redis_worker: str
) -> None:
    """One database, one worker, two shard ranges: Alice's server is on shard 0, Bob's on shard 1."""
    _, alice_channel = fake.add_guild(shard=(0, 2))
    _, bob_channel = fake.add_guild(shard=(1, 2))
    alice, bob = fake.default_user, fake.add_user("bob")
    first = await start_process("first", fake, tmp_path, redis_worker, **half(0))
    second = await start_process("second", fake, tmp_path, redis_worker, **half(1))
    try:
        asked = [
            await fake.send_slash_command(
                "profile", {"style": "anime", "count": 1}, user=person, attachments=selfie_attachment(),
                channel_id=channel,
            )
            for person, channel in ((alice, alice_channel), (bob, bob_channel))
        ]  # fmt: skip
        await fake.wait_until(lambda: len(picture_messages(fake)) == 2 or None, timeout=180)
        await first.core.wait_idle(timeout=30)
        await second.core.wait_idle(timeout=30)
        for interaction in asked:  # each acknowledged once (a second would have been refused with 40060)
            assert [callback.type for callback in interaction.callbacks] == [5]
        jobs = {job.reply_context["user_id"]: job for job in await first.storage.undelivered_jobs(["discord"])}
        assert jobs == {}  # all delivered
        alice_job = (await first.storage.recent_jobs(await first.storage.find_user("discord", str(alice.id)) or 0))[0]
        bob_job = (await first.storage.recent_jobs(await first.storage.find_user("discord", str(bob.id)) or 0))[0]
        assert (first.ordered, second.ordered) == ([str(alice.id)], [str(bob.id)])
        assert (first.delivered, second.delivered) == ([alice_job.id], [bob_job.id])
        assert await first.storage.delivery_claimant(alice_job.id) == "discord shards 0 of 2"
        assert await first.storage.delivery_claimant(bob_job.id) == "discord shards 1 of 2"
        by_channel = sorted(int(message["channel_id"]) for message in picture_messages(fake))
        assert by_channel == sorted([alice_channel, bob_channel])  # one picture each, in their own server
        # Ratings by reaction reach the process of the picture's shard, once each.
        for message in picture_messages(fake):
            rater = alice if int(message["channel_id"]) == alice_channel else bob
            assert await fake.add_reaction(int(message["id"]), "4️⃣", rater)
        assert await eventually(lambda: first.storage.count("ratings"), 2) == 2
    finally:
        await second.stop()
        await first.stop()


async def test_of_two_processes_that_may_deliver_a_job_only_the_claim_holder_does(
    fake: FakeDiscord, tmp_path: Path
) -> None:
    """Past the interaction's token the pictures go to the channel, which any process may post to; a process
    starting then follows the job too, but the first process holds its claim, so only it posts."""
    queue = HeldQueue()
    _, channel = fake.add_guild(shard=(0, 2))
    first = await start_process("first", fake, tmp_path, "held", queue, **half(0))
    second: BotProcess | None = None
    try:
        await fake.send_slash_command("profile", {"style": "anime", "count": 1}, attachments=selfie_attachment(),
                                      channel_id=channel)  # fmt: skip
        jobs = await eventually(lambda: first.storage.undelivered_jobs(["discord"]), 1, len)
        job = jobs[0]
        expired = {**job.reply_context, "token_expires_at": 0}
        await first.storage.update_job(job.id, reply_context=expired)
        second = await start_process("second", fake, tmp_path, "held", queue, **half(1))
        assert second.core.jobs.may_deliver(await second.storage.job(job.id))  # type: ignore[arg-type]
        queue.released.set()
        await fake.wait_until(lambda: len(picture_messages(fake)) == 1 or None, timeout=30)
        await first.core.wait_idle(timeout=30)
        await second.core.wait_idle(timeout=30)
        assert (first.delivered, second.delivered) == ([job.id], [])
        assert len(picture_messages(fake)) == 1
    finally:
        if second is not None:
            await second.stop()
        await first.stop()


class SubmitsOf:
    """One process's view of the shared scripted queue: records what this process sent, and can refuse its
    first few sends (a broker this process cannot reach for a moment)."""

    def __init__(self, queue: HeldQueue, refuse_first: int = 0) -> None:
        self.queue = queue
        self.refuse = refuse_first
        self.sent: list[str] = []

    async def submit(self, task_id: str, payload: dict[str, Any], queue: str) -> None:
        if self.refuse:
            self.refuse -= 1
            raise ConnectionError("broker unreachable from here")
        self.sent.append(task_id)
        await self.queue.submit(task_id, payload, queue)

    async def status(self, task_id: str) -> QueueStatus:
        return await self.queue.status(task_id)

    async def forget(self, task_id: str) -> None:
        await self.queue.forget(task_id)


async def test_a_job_is_sent_to_the_broker_by_the_process_that_delivers_it(fake: FakeDiscord, tmp_path: Path) -> None:
    """Every process feeds the broker from the shared database; a job waiting for its place there (here: its
    own process could not reach the broker for a few seconds) is sent by its owner, not by another feeder."""
    queue = HeldQueue()
    _, channel = fake.add_guild(shard=(0, 2))
    owner_queue, other_queue = SubmitsOf(queue, refuse_first=3), SubmitsOf(queue)
    first = await start_process("first", fake, tmp_path, "held", owner_queue, **half(0))  # type: ignore[arg-type]
    second: BotProcess | None = None
    try:
        await fake.send_slash_command("profile", {"style": "anime", "count": 1}, attachments=selfie_attachment(),
                                      channel_id=channel)  # fmt: skip
        job = (await eventually(lambda: first.storage.undelivered_jobs(["discord"]), 1, len))[0]
        second = await start_process("second", fake, tmp_path, "held", other_queue, **half(1))  # type: ignore[arg-type]
        await second.core.jobs.admission.feed()  # the other process's feeder sees the job holding its place
        sent = await eventually(
            lambda: first.storage.job(job.id), 1, lambda fresh: int(bool(fresh and fresh.enqueued_at))
        )
        assert sent is not None and sent.enqueued_at is not None
        assert (owner_queue.sent, other_queue.sent) == ([job.task_id], [])
        queue.released.set()
        await first.core.wait_idle(timeout=30)
        assert (first.delivered, second.delivered) == ([job.id], [])
    finally:
        if second is not None:
            await second.stop()
        await first.stop()


async def test_a_restarted_process_resumes_only_the_jobs_of_its_shards(fake: FakeDiscord, tmp_path: Path) -> None:
    """Both processes go down with a job each; one comes back so much later that every claim is stale (its
    holder would have timed out long ago): it resumes its own shard's job, and leaves the other shard's alone,
    whose reply still belongs to that shard's process (the interaction token lives)."""
    queue = HeldQueue()
    _, first_channel = fake.add_guild(shard=(0, 2))
    _, second_channel = fake.add_guild(shard=(1, 2))
    bob = fake.add_user("bob")
    first = await start_process("first", fake, tmp_path, "held", queue, **half(0))
    second = await start_process("second", fake, tmp_path, "held", queue, **half(1))
    try:
        for person, channel in ((fake.default_user, first_channel), (bob, second_channel)):
            await fake.send_slash_command("profile", {"style": "anime", "count": 1}, user=person,
                                          attachments=selfie_attachment(), channel_id=channel)  # fmt: skip
        await eventually(lambda: first.storage.undelivered_jobs(["discord"]), 2, len)
    finally:
        await second.stop()
        await first.stop()
    jobs = {job.chat_id: job for job in await undelivered_in(tmp_path)}
    assert len(jobs) == 2
    later = utc_now() + timedelta(days=2)
    restarted = await start_process("first again", fake, tmp_path, "held", queue, clock=lambda: later, **half(0))
    try:
        queue.released.set()
        await restarted.core.wait_idle(timeout=30)
        own = next(job for job in jobs.values() if job.reply_context["channel_id"] == first_channel)
        other = next(job for job in jobs.values() if job.reply_context["channel_id"] == second_channel)
        assert restarted.delivered == [own.id]  # its own (timed out by now: told so), not the other shard's
        fresh = await restarted.storage.job(other.id)
        assert fresh is not None and fresh.delivered_at is None
    finally:
        await restarted.stop()


async def test_a_running_process_takes_over_a_dead_processs_job_once_it_may(fake: FakeDiscord, tmp_path: Path) -> None:
    """The shard-1 process dies for good with a job; once its token expired (the pictures go to the channel) and
    its claim is stale, the shard-0 process, still running, takes it over at its next look, and delivers it once."""
    queue = HeldQueue()
    _, channel = fake.add_guild(shard=(1, 2))
    now = [utc_now()]
    turns: asyncio.Queue[None] = asyncio.Queue()

    async def turned_by_hand(seconds: float) -> None:
        await turns.get()

    survivor = await start_process("first", fake, tmp_path, "held", queue, clock=lambda: now[0], **half(0))
    survivor.core.jobs._sleep = turned_by_hand  # its periodic looks, one per turn
    dead = await start_process("second", fake, tmp_path, "held", queue, **half(1))
    try:
        await fake.send_slash_command("profile", {"style": "anime", "count": 1}, attachments=selfie_attachment(),
                                      channel_id=channel)  # fmt: skip
        job = (await eventually(lambda: dead.storage.undelivered_jobs(["discord"]), 1, len))[0]
        await eventually(lambda: dead.storage.delivery_claimant(job.id), 1, lambda holder: int(holder is not None))
    finally:
        await dead.stop()
    await survivor.storage.update_job(job.id, reply_context={**job.reply_context, "token_expires_at": 0})
    try:
        turns.put_nowait(None)
        turns.put_nowait(None)
        await asyncio.sleep(0.5)
        assert survivor.delivered == []  # the claim is the dead process's, and not stale yet
        now[0] += timedelta(days=2)
        queue.released.set()
        turns.put_nowait(None)
        turns.put_nowait(None)
        await eventually(lambda: asyncio.sleep(0, len(survivor.delivered)), 1)
        await survivor.core.wait_idle(timeout=30)
        assert survivor.delivered == [job.id]
        assert await survivor.storage.delivery_claimant(job.id) == "discord shards 0 of 2"
        fresh = await survivor.storage.job(job.id)
        assert fresh is not None and fresh.delivered_at is not None
    finally:
        await survivor.stop()


async def undelivered_in(tmp_path: Path) -> list[Job]:
    storage = await Storage.open(tmp_path / "mmpp.sqlite3")
    try:
        return await storage.undelivered_jobs(["discord"])
    finally:
        await storage.close()
