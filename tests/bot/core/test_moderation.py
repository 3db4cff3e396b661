"""Who may ask for what (bot/core/moderation.py): quotas and the chat they count, deny and admin lists,
the prompt filter."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.core import ChatCore, Person, ProfileOrder
from bot.core.moderation import quota_chat
from bot.storage import Storage
from mmpp.errors import ErrorCode, MmppError
from tests.bot.conftest import BOB, SELFIE, RecordingDelivery, ScriptedQueue, bot_settings, order


async def test_quotas(storage: Storage, queue: ScriptedQueue, tmp_path: Path) -> None:
    queue.progress_polls = 10_000
    core = ChatCore(storage, queue, bot_settings(tmp_path, max_pending_jobs=1, daily_picture_quota=3))
    core.attach(RecordingDelivery())
    await core.order_profile(order("one", count="2"))
    with pytest.raises(MmppError) as pending:
        await core.order_profile(order("two"))
    assert pending.value.code is ErrorCode.QUOTA_EXCEEDED and "in progress" in pending.value.message
    with pytest.raises(MmppError) as daily:
        await core.order_profile(order("three", person=BOB, count="4"))
    assert daily.value.code is ErrorCode.QUOTA_EXCEEDED and "resets at 00:00 UTC" in daily.value.message
    await core.stop()


async def test_denied_people_admins_and_chat_quotas(storage: Storage, queue: ScriptedQueue, tmp_path: Path) -> None:
    queue.progress_polls = 0
    settings = bot_settings(
        tmp_path, denied_users="test:mallory", admins="test:alice", daily_picture_quota=1, chat_daily_picture_quota=3
    )
    core = ChatCore(storage, queue, settings)
    core.attach(RecordingDelivery())
    with pytest.raises(MmppError) as denied:
        await core.order_profile(order("m", person=Person("test", "mallory")))
    assert denied.value.code is ErrorCode.NOT_ALLOWED
    for index in range(2):  # the admin is over her personal quota of 1 and still served
        await core.order_profile(order(f"a{index}"))
        await core.wait_idle(timeout=5)
    await core.order_profile(order("b1", person=BOB))
    await core.wait_idle(timeout=5)
    carol = Person("test", "carol")
    with pytest.raises(MmppError) as chat_full:  # 3 pictures used in chat-1 today
        await core.order_profile(order("c1", person=carol))
    assert chat_full.value.code is ErrorCode.QUOTA_EXCEEDED and "This chat" in chat_full.value.message
    other_chat = ProfileOrder(carol, "c2", "chat-2", {}, {"style": "anime"}, SELFIE)
    assert (await core.order_profile(other_chat))[1]
    await core.stop()


@pytest.mark.parametrize(
    ("prompt", "blocked"),
    [
        ("a portrait in a NUDE style", "nude"),
        ("a portrait, n.u.d.e", "nude"),
        ("a portrait with Gore everywhere", "gore"),
        ("a portrait in a nudé mood", "nude"),
        ("a pirate with glasses", None),
        ("a hat full of gorey details", None),
        ("a photo of donald trump smiling", "donald trump"),
    ],
)
async def test_the_prompt_deny_list(
    storage: Storage, queue: ScriptedQueue, tmp_path: Path, prompt: str, blocked: str | None
) -> None:
    deny_file = tmp_path / "deny.txt"
    deny_file.write_text("Donald  Trump\n\n")
    core = ChatCore(storage, queue, bot_settings(tmp_path, prompt_deny_list="nude, gore", prompt_deny_file=deny_file))
    core.attach(RecordingDelivery())
    if blocked is None:
        assert (await core.order_profile(order(prompt=prompt)))[1]
    else:
        with pytest.raises(MmppError) as raised:
            await core.order_profile(order(prompt=prompt))
        assert raised.value.code is ErrorCode.PROMPT_BLOCKED and blocked in raised.value.message
    await core.stop()


def test_a_quota_counts_the_server_where_there_is_one() -> None:
    assert quota_chat("channel-1", "server-1") == "server-1"
    assert quota_chat("dm-channel", None) == "dm-channel"


async def test_the_channels_of_one_server_share_its_chat_quota(
    storage: Storage, queue: ScriptedQueue, tmp_path: Path
) -> None:
    queue.progress_polls = 0
    core = ChatCore(storage, queue, bot_settings(tmp_path, chat_daily_picture_quota=2))
    core.attach(RecordingDelivery())

    def in_channel(event: str, person: Person, channel: str, server: str | None) -> ProfileOrder:
        return ProfileOrder(person, event, channel, {}, {"style": "anime"}, SELFIE, server_id=server)

    first, _ = await core.order_profile(in_channel("s1", Person("test", "p1"), "general", "server-1"))
    await core.order_profile(in_channel("s2", Person("test", "p2"), "random", "server-1"))
    await core.wait_idle(timeout=5)
    assert first.chat_id == "server-1"
    with pytest.raises(MmppError) as full:  # another channel of the same server: its 2 pictures are used
        await core.order_profile(in_channel("s3", Person("test", "p3"), "art", "server-1"))
    assert full.value.code is ErrorCode.QUOTA_EXCEEDED and "This chat" in full.value.message
    other, created = await core.order_profile(in_channel("s4", Person("test", "p3"), "art", "server-2"))
    direct, created_direct = await core.order_profile(in_channel("s5", Person("test", "p4"), "dm-7", None))
    assert created and created_direct and (other.chat_id, direct.chat_id) == ("server-2", "dm-7")
    await core.stop()


async def test_the_quota_holds_where_the_job_is_written(
    storage: Storage, queue: ScriptedQueue, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The early read can be overtaken (another bot process's order landing in between): the same check in
    the transaction that writes the job refuses, with the same words, and writes nothing."""
    queue.progress_polls = 10_000
    core = ChatCore(storage, queue, bot_settings(tmp_path, max_pending_jobs=1, daily_picture_quota=3))
    core.attach(RecordingDelivery())
    await core.order_profile(order("one", count="2"))

    async def overtaken(*arguments: object) -> None:
        return None

    monkeypatch.setattr(core.moderation, "check_quotas", overtaken)
    with pytest.raises(MmppError) as pending:
        await core.order_profile(order("two"))
    assert pending.value.code is ErrorCode.QUOTA_EXCEEDED and "You already have 1 job in progress" in (
        pending.value.message
    )
    with pytest.raises(MmppError) as daily:
        await core.order_profile(order("three", person=BOB, count="4"))
    assert daily.value.message.startswith("You have used 0 of your 3 pictures for today; the quota resets")
    assert await storage.count("jobs") == 1 and await storage.count("selfies") == 1
    await core.stop()
