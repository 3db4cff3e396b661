"""The adapter's side of Telegram's flood limits (FloodLimits) and its bounded retries (with_retries), on a
controllable clock: sends wait their turn, status edits never wait and always leave room for the sends, a 429
is reported to the core and never retried here, and a 429 is honoured at most SEND_ATTEMPTS times."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from telegram.error import BadRequest, NetworkError, RetryAfter

from bot.telegram_app import (
    CHAT_BURST_SECONDS,
    GROUP_PER_MINUTE,
    GROUP_RESERVE,
    MAX_RETRY_AFTER_SECONDS,
    ONE_ATTEMPT,
    SEND_ATTEMPTS,
    WINDOW_MARGIN_SECONDS,
    FloodLimits,
    NoRoomError,
    with_retries,
)

GROUP = -1001234
PRIVATE = 4242


class Clock:
    """Monotonic time that only moves when the limiter sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


class Telegram:
    """Stands in for PTB's request: records each request that got through, optionally refusing with a 429."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.refuse_with: int | None = None

    def request(self, name: str) -> Any:
        async def call() -> bool:
            self.sent.append(name)
            if self.refuse_with is not None:
                raise RetryAfter(self.refuse_with)
            return True

        return call


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def limits(clock: Clock) -> FloodLimits:
    return FloodLimits(clock=clock, sleep=clock.sleep)


async def send(limits: FloodLimits, telegram: Telegram, chat: int, name: str = "sendMessage", **data: Any) -> Any:
    return await limits.process_request(telegram.request(name), (), {}, name, {"chat_id": chat, **data}, None)


async def edit(limits: FloodLimits, telegram: Telegram, chat: int) -> Any:
    request = telegram.request("editMessageText")
    return await limits.process_request(request, (), {}, "editMessageText", {"chat_id": chat}, ONE_ATTEMPT)


async def test_a_picture_right_after_a_status_edit_does_not_wait(limits: FloodLimits, clock: Clock) -> None:
    telegram = Telegram()
    for chat in (PRIVATE, GROUP):
        assert limits.has_room(str(chat))
        await edit(limits, telegram, chat)
        await send(limits, telegram, chat, "sendPhoto")
    assert telegram.sent == ["editMessageText", "sendPhoto"] * 2
    assert clock.slept == []


async def test_status_edits_never_wait_and_leave_the_chat_room_for_a_send(limits: FloodLimits, clock: Clock) -> None:
    telegram = Telegram()
    await send(limits, telegram, PRIVATE)
    await send(limits, telegram, PRIVATE)
    assert not limits.has_room(str(PRIVATE))  # one slot of the burst left: it is the sends'
    with pytest.raises(NoRoomError):
        await edit(limits, telegram, PRIVATE)
    await send(limits, telegram, PRIVATE)  # the reserve: no waiting
    assert clock.slept == []
    await send(limits, telegram, PRIVATE)  # the burst is used up: this one waits for the first to age out
    assert clock.slept == [pytest.approx(CHAT_BURST_SECONDS + WINDOW_MARGIN_SECONDS)]
    assert telegram.sent == ["sendMessage"] * 4  # the refused edit never reached Telegram


async def test_a_group_keeps_20_a_minute_with_albums_counted_and_a_reserve_for_sends(
    limits: FloodLimits, clock: Clock
) -> None:
    telegram = Telegram()
    album = {"media": ["one", "two", "three", "four", "five"]}
    albums, singles = divmod(GROUP_PER_MINUTE - GROUP_RESERVE, len(album["media"]))
    start = clock.now
    for _ in range(albums):
        await send(limits, telegram, GROUP, "sendMediaGroup", **album)
    for _ in range(singles):
        await send(limits, telegram, GROUP)
    assert not limits.has_room(str(GROUP))  # what is left of the minute is for pictures and replies
    with pytest.raises(NoRoomError):
        await edit(limits, telegram, GROUP)
    for _ in range(GROUP_RESERVE):
        await send(limits, telegram, GROUP)
    assert clock.now - start < 60.0
    await send(limits, telegram, GROUP, "sendPhoto")  # the 21st message within the minute waits for the minute
    assert clock.now - start >= 60.0
    assert "editMessageText" not in telegram.sent and len(telegram.sent) == albums + singles + GROUP_RESERVE + 1


async def test_a_429_is_reported_raised_once_and_holds_the_chats_status_edits(clock: Clock) -> None:
    refused: list[tuple[str, float]] = []
    limits = FloodLimits(
        on_refused=lambda chat, seconds: refused.append((chat, seconds)), clock=clock, sleep=clock.sleep
    )
    telegram = Telegram()
    telegram.refuse_with = 7
    with pytest.raises(RetryAfter):
        await send(limits, telegram, GROUP, "sendPhoto")
    assert telegram.sent == ["sendPhoto"] and refused == [(str(GROUP), 7.0)]  # not retried here
    telegram.refuse_with = None
    assert not limits.has_room(str(GROUP))
    with pytest.raises(NoRoomError):
        await edit(limits, telegram, GROUP)
    assert limits.has_room(str(PRIVATE))  # another chat is not held
    await send(limits, telegram, GROUP, "sendPhoto")  # a send waits the retry_after out, then goes
    assert clock.slept and sum(clock.slept) >= 7.0 - 1e-9
    assert limits.has_room(str(GROUP))


async def test_requests_telegram_does_not_count_pass_straight_through(limits: FloodLimits, clock: Clock) -> None:
    telegram = Telegram()
    for _ in range(10):
        for name in ("answerCallbackQuery", "getChatMember", "deleteMessage", "sendChatAction"):
            data = {} if name == "answerCallbackQuery" else {"chat_id": PRIVATE}
            await limits.process_request(telegram.request(name), (), {}, name, data, None)
    assert clock.slept == [] and limits.has_room(str(PRIVATE))


@pytest.fixture
def pauses(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """``asyncio.sleep`` recorded and skipped, so the retries' pauses can be read without waiting them out."""
    recorded: list[float] = []
    original = asyncio.sleep

    async def record(seconds: float, *arguments: Any) -> None:
        recorded.append(seconds)
        await original(0)

    monkeypatch.setattr(asyncio, "sleep", record)
    return recorded


class Failing:
    def __init__(self, error: Exception, times: int = 1_000) -> None:
        self.error = error
        self.times = times
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.times:
            raise self.error
        return "sent"


async def test_a_429_is_honoured_at_most_send_attempts_times(pauses: list[float]) -> None:
    always = Failing(RetryAfter(2))
    with pytest.raises(RetryAfter):
        await with_retries(always)
    assert always.calls == SEND_ATTEMPTS and pauses == [2.0] * (SEND_ATTEMPTS - 1)

    pauses.clear()
    twice = Failing(RetryAfter(1), times=2)
    assert await with_retries(twice) == "sent" and twice.calls == 3 and pauses == [1.0, 1.0]


async def test_a_retry_after_longer_than_the_bound_is_not_waited_out(pauses: list[float]) -> None:
    hour = Failing(RetryAfter(int(MAX_RETRY_AFTER_SECONDS) + 3540))
    with pytest.raises(RetryAfter):
        await with_retries(hour)
    assert hour.calls == 1 and pauses == []


async def test_network_failures_back_off_and_refusals_are_final(pauses: list[float]) -> None:
    network = Failing(NetworkError("connection reset"))
    with pytest.raises(NetworkError):
        await with_retries(network)
    assert network.calls == SEND_ATTEMPTS and pauses == [0.5, 1.0, 2.0]
    pauses.clear()
    refused = Failing(BadRequest("chat not found"))
    with pytest.raises(BadRequest):
        await with_retries(refused)
    assert refused.calls == 1 and pauses == []
