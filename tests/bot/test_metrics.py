"""The bot's /metrics and /healthz, fed by the real core and database."""

from __future__ import annotations

import socket

import aiohttp

from bot.app import metrics_server
from bot.core import ChatCore, Person, ProfileOrder
from tests.bot.conftest import SELFIE, bot_settings


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
