"""The bot's /metrics and /healthz, fed by the real core and database."""

from __future__ import annotations

import socket

import aiohttp

from bot.app import metrics_server
from bot.core import ChatCore, Person, ProfileOrder
from tests.bot.conftest import SELFIE, bot_settings
from tests.faults.conftest import wait_until


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Adapter:
    def __init__(self, healthy: bool) -> None:
        self._healthy = healthy

    def healthy(self) -> bool:
        return self._healthy


async def test_metrics_count_jobs_and_health_names_the_failing_part(core: ChatCore, tmp_path) -> None:
    order = ProfileOrder(Person("test", "alice"), "e1", "chat", {}, {"style": "anime"}, SELFIE)
    await core.order_profile(order)
    await core.wait_idle(timeout=5)
    await core.rate_message(Person("test", "bob"), "message-1-1", 5, "reaction")
    port = free_port()
    settings = bot_settings(tmp_path, metrics_port=port)
    for adapters, expected in (([Adapter(True)], 200), ([Adapter(True), Adapter(False)], 503)):
        server = metrics_server(settings, core, adapters)  # type: ignore[arg-type]
        await server.start()
        try:
            async with aiohttp.ClientSession() as session:
                async with session.get(f"http://127.0.0.1:{port}/healthz") as response:
                    body = await response.json()
                    assert response.status == expected and body["database"] is True
                    assert body["adapters"] is (expected == 200)
                async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
                    text = await response.text()
            assert 'mmpp_bot_jobs{state="done"} 1.0' in text
            assert "mmpp_bot_jobs_created_total" in text and "mmpp_bot_delivery_seconds_count" in text
            assert 'mmpp_bot_ratings_total{source="reaction"}' in text
        finally:
            await server.stop()


async def test_a_broker_that_refuses_jobs_shows_in_health_and_metrics(storage, tmp_path) -> None:
    """/healthz names the refusing broker (503) and /metrics counts the refusals, the jobs waiting in the
    database for a place and the ones holding one; both recover when the broker takes jobs again."""
    from redis.exceptions import OutOfMemoryError

    from tests.bot.conftest import RecordingDelivery, ScriptedQueue

    class FullRedis(ScriptedQueue):
        full = True

        async def submit(self, task_id, payload, queue) -> None:
            if self.full:
                raise OutOfMemoryError("command not allowed when used memory > 'maxmemory'.")
            await super().submit(task_id, payload, queue)

    queue = FullRedis(progress_polls=10**6)
    port = free_port()
    settings = bot_settings(tmp_path, metrics_port=port)
    core = ChatCore(storage, queue, settings)
    core.attach(RecordingDelivery())
    await core.start()
    server = metrics_server(settings, core, [Adapter(True)])  # type: ignore[arg-type]
    await server.start()
    try:
        for number in range(3):
            await core.order_profile(
                ProfileOrder(Person("test", f"p{number}"), f"e{number}", "c", {}, {"style": "anime"}, SELFIE)
            )
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/healthz") as response:
                assert response.status == 503
                assert (await response.json())["broker_accepts_jobs"] is False
            async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
                text = await response.text()
            assert "mmpp_bot_broker_accepting 0.0" in text and 'mmpp_bot_broker_refusals_total{kind="full"}' in text
            # anime is a fast-mode style: its queue is mmpp.fast; the oldest holds a place, the others wait.
            assert 'mmpp_bot_jobs_waiting_for_broker{queue="mmpp.fast"} 2.0' in text
            assert 'mmpp_bot_jobs_in_broker{queue="mmpp.fast"} 1.0' in text

            queue.full = False
            await wait_until(lambda: len(queue.submitted) == 3, 40, "the jobs sent")
            async with session.get(f"http://127.0.0.1:{port}/healthz") as response:
                assert response.status == 200 and (await response.json())["broker_accepts_jobs"] is True
            async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
                text = await response.text()
            assert "mmpp_bot_broker_accepting 1.0" in text
            assert 'mmpp_bot_jobs_waiting_for_broker{queue="mmpp.fast"} 0.0' in text
            assert 'mmpp_bot_jobs_in_broker{queue="mmpp.fast"} 3.0' in text
    finally:
        await server.stop()
        await core.stop()
