"""The fake gateway refuses what Discord refuses about shards, and routes each guild's events to its shard.

Spoken to with a bare websocket (the frames as Discord documents them), so that what is checked is the fake's
rule, not what discord.py happens to send: https://discord.com/developers/docs/events/gateway#sharding and the
close codes 4010 (Invalid shard) and 4011 (Sharding required), and the session-start limit (one IDENTIFY per 5 s
per bucket ``shard_id % max_concurrency``: https://discord.com/developers/docs/events/gateway#session-start-limit).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.fakes.discord_api import INTENT_GUILDS, MAX_GUILDS_PER_SHARD, FakeDiscord

INTENT_GUILD_MESSAGES = 1 << 9
INTENT_GUILD_MESSAGE_REACTIONS = 1 << 10


#: The identify window of the tests that are not about it, short so that pacing each IDENTIFY costs little.
SHORT_IDENTIFY_INTERVAL = 0.05


@pytest.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord(auto_patch=False, identify_interval=SHORT_IDENTIFY_INTERVAL) as server:
        yield server


class Gateway:
    """One bare gateway connection: HELLO read, IDENTIFY sent, then frames read until READY or a close."""

    def __init__(self, session: aiohttp.ClientSession, fake: FakeDiscord) -> None:
        self.session = session
        self.fake = fake
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.events: list[dict[str, Any]] = []

    async def identify(self, shard: Any = None, *, paced: bool = True) -> int | None:
        """The close code if the fake closed the connection, else ``None`` once READY and its guilds came (or an
        Invalid Session, op 9, came instead: the last event).

        ``paced``: first wait out the fake's identify window, as a client must between two IDENTIFYs of a bucket.
        """
        if paced:
            await asyncio.sleep(self.fake.identify_interval)
        self.ws = await self.session.ws_connect(self.fake.gateway_url + "?v=10&encoding=json")
        hello = json.loads((await self.ws.receive()).data)
        assert hello["op"] == 10
        identify: dict[str, Any] = {
            "token": self.fake.token, "intents": INTENT_GUILDS | INTENT_GUILD_MESSAGES | INTENT_GUILD_MESSAGE_REACTIONS,
            "properties": {"os": "linux", "browser": "test", "device": "test"},
        }  # fmt: skip
        if shard is not None:
            identify["shard"] = shard
        await self.ws.send_str(json.dumps({"op": 2, "d": identify}))
        ready = None
        while True:
            message = await self.ws.receive(timeout=10)
            if message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
                return self.ws.close_code
            frame = json.loads(message.data)
            self.events.append(frame)
            if frame.get("op") == 9:  # Invalid Session: no READY comes
                return None
            if frame.get("t") == "READY":
                ready = frame["d"]
            created = [event for event in self.events if event.get("t") == "GUILD_CREATE"]
            if ready is not None and len(created) == len(ready["guilds"]):
                return None

    def guilds(self, event: str = "GUILD_CREATE") -> set[int]:
        return {int(frame["d"].get("guild_id") or frame["d"]["id"]) for frame in self.events if frame.get("t") == event}

    async def next_event(self, name: str) -> dict[str, Any]:
        assert self.ws is not None
        while True:
            frame = json.loads((await self.ws.receive(timeout=5)).data)
            self.events.append(frame)
            if frame.get("t") == name:
                return frame["d"]


async def test_gateway_bot_recommends_shards_by_guild_count_with_the_session_start_limit(fake: FakeDiscord) -> None:
    headers = {"Authorization": f"Bot {fake.token}"}
    async with aiohttp.ClientSession(headers=headers) as session:
        async with session.get(fake.api_base + "/gateway/bot") as response:
            one = await response.json()
        fake.add_guilds(2100)
        async with session.get(fake.api_base + "/gateway/bot") as response:
            many = await response.json()
    assert one["shards"] == 1 and many["shards"] == 3  # one per 1,000 guilds, rounded up
    assert set(many["session_start_limit"]) == {"total", "remaining", "reset_after", "max_concurrency"}
    assert many["url"] == fake.gateway_url


async def test_identify_without_shards_is_refused_with_4011_beyond_2500_guilds(fake: FakeDiscord) -> None:
    fake.add_guilds(MAX_GUILDS_PER_SHARD - 1)  # 2,500 with the first: still allowed
    async with aiohttp.ClientSession() as session:
        assert await Gateway(session, fake).identify() is None
        fake.add_guild()
        assert await Gateway(session, fake).identify() == 4011
        # Sharded, each session holds about half: accepted, and given only its own guilds.
        first, second = Gateway(session, fake), Gateway(session, fake)
        assert await first.identify([0, 2]) is None and await second.identify([1, 2]) is None
    everything = set(fake.all_guild_ids())
    assert first.guilds() | second.guilds() == everything and not first.guilds() & second.guilds()
    assert all(fake.shard_of(guild, 2) == 0 for guild in first.guilds())


@pytest.mark.parametrize("shard", [[2, 2], [-1, 2], [0, 0], [0], [0, 1, 2], "0,1", [0.0, 1.0], [True, 2]])
async def test_a_wrong_shard_array_is_refused_with_4010(fake: FakeDiscord, shard: Any) -> None:
    async with aiohttp.ClientSession() as session:
        assert await Gateway(session, fake).identify(shard) == 4010
    assert fake.session_shards() == []


async def test_each_shard_gets_its_own_guilds_interactions_and_reactions_and_dms_go_to_shard_0(
    fake: FakeDiscord,
) -> None:
    _, channel_on_1 = fake.add_guild(shard=(1, 2))
    default_shard = fake.shard_of(fake.guild_id, 2)
    async with aiohttp.ClientSession() as session:
        zero, one = Gateway(session, fake), Gateway(session, fake)
        assert await zero.identify([0, 2]) is None and await one.identify([1, 2]) is None
        assert fake.session_shards() == [(0, 2), (1, 2)]
        await fake.send_slash_command("help", channel_id=channel_on_1)
        interaction = await one.next_event("INTERACTION_CREATE")
        assert int(interaction["guild_id"]) == fake.guild_of_channel(channel_on_1)
        assert int(interaction["channel"]["guild_id"]) == int(interaction["guild_id"])
        assert await fake.add_reaction(123, "1️⃣", channel_id=channel_on_1)
        reaction = await one.next_event("MESSAGE_REACTION_ADD")
        assert int(reaction["channel_id"]) == channel_on_1
        await fake.send_slash_command("help")  # the first guild, on its own shard
        first_guild = await (zero if default_shard == 0 else one).next_event("INTERACTION_CREATE")
        assert int(first_guild["guild_id"]) == fake.guild_id
        assert await fake.dispatch("MESSAGE_CREATE", {"channel_id": "1", "content": "a DM"})
        direct = await zero.next_event("MESSAGE_CREATE")
        assert "guild_id" not in direct
    events_of = {
        shard: [
            frame.get("t") for frame in gateway.events if frame.get("t") in {"INTERACTION_CREATE", "MESSAGE_CREATE"}
        ]
        for shard, gateway in ((0, zero), (1, one))
    }
    # Nothing was sent twice: the other shard saw none of these.
    assert events_of[1].count("INTERACTION_CREATE") == (2 if default_shard == 1 else 1)
    assert events_of[0].count("INTERACTION_CREATE") == (1 if default_shard == 0 else 0)
    assert events_of[1].count("MESSAGE_CREATE") == 0


async def test_each_identify_takes_a_session_start_and_none_left_is_an_invalid_session(fake: FakeDiscord) -> None:
    fake.session_starts_remaining = 1
    headers = {"Authorization": f"Bot {fake.token}"}
    async with aiohttp.ClientSession(headers=headers) as session:
        assert await Gateway(session, fake).identify([0, 1]) is None
        async with session.get(fake.api_base + "/gateway/bot") as response:
            assert (await response.json())["session_start_limit"]["remaining"] == 0
        refused = Gateway(session, fake)
        assert await refused.identify([0, 1]) is None
    assert refused.events[-1]["op"] == 9 and refused.events[-1]["d"] is False  # not resumable, and no READY
    assert not [frame for frame in refused.events if frame.get("t") == "READY"]
    assert fake.session_shards() == [(0, 1)]


async def test_a_second_identify_of_a_bucket_within_5_seconds_is_an_invalid_session() -> None:
    """Discord's real window (5 s), unpaced: shards 0 and 2 of 4 share bucket 0 with ``max_concurrency`` 2, shard 1
    is in bucket 1.  The refused IDENTIFY takes no session start and does not move the window."""
    async with FakeDiscord(auto_patch=False) as fake, aiohttp.ClientSession() as session:
        fake.max_concurrency = 2
        assert fake.identify_interval == 5.0
        assert await Gateway(session, fake).identify([0, 4], paced=False) is None
        starts_left = fake.session_starts_remaining
        too_soon = Gateway(session, fake)
        assert await too_soon.identify([2, 4], paced=False) is None
        assert too_soon.events[-1]["op"] == 9 and too_soon.events[-1]["d"] is False
        assert not [frame for frame in too_soon.events if frame.get("t") == "READY"]
        assert fake.identify_too_soon == 1 and fake.session_starts_remaining == starts_left
        other_bucket = Gateway(session, fake)
        assert await other_bucket.identify([1, 4], paced=False) is None  # bucket 1: its own window
        assert other_bucket.events[0].get("t") == "READY"
        fake.identify_interval = 0.2  # past the window (shortened to keep the test quick) bucket 0 takes one again
        await asyncio.sleep(0.25)
        late = Gateway(session, fake)
        assert await late.identify([2, 4], paced=False) is None
        assert late.events[0].get("t") == "READY"
    assert fake.identify_too_soon == 1
    assert fake.session_shards() == [(0, 4), (1, 4), (2, 4)]
    assert [bucket for bucket, _ in fake.identify_starts] == [0, 1, 0]
