"""Wiring: settings → storage, queue, core, and the adapters whose tokens are set."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Protocol

from bot import metrics
from bot.core import ChatCore
from bot.metrics import MetricsServer
from bot.queue import CeleryJobQueue, make_client
from bot.redact import install_secret_filter
from bot.settings import BotSettings
from bot.storage import Storage

logger = logging.getLogger(__name__)


@asynccontextmanager
async def open_core(settings: BotSettings) -> AsyncIterator[ChatCore]:
    """The core over the real database and broker; migrations are applied on open."""
    storage = await Storage.open(settings.database)
    queue = CeleryJobQueue(make_client(settings.redis_url, settings.state_dir))
    core = ChatCore(storage, queue, settings)
    try:
        yield core
    finally:
        await core.stop()
        await storage.close()


def start_worker_process(settings: BotSettings) -> subprocess.Popen[bytes]:
    """A generation worker as a child process: the bot never imports torch itself."""
    command = [sys.executable, "-m", "mmpp.cli", "worker", "--pool", "solo", "--loglevel", "WARNING"]
    return subprocess.Popen(command, env={**os.environ, "MMPP_QUEUE": settings.queue}, stdout=sys.stderr)


def stop_worker_process(worker: subprocess.Popen[bytes]) -> None:
    worker.terminate()
    try:
        worker.wait(timeout=20)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait()


class Adapter(Protocol):
    """A platform adapter's life: connect, serve until told to stop, disconnect."""

    def healthy(self) -> bool: ...

    async def open(self) -> None: ...

    async def run(self) -> None: ...

    async def close(self) -> None: ...


def metrics_server(settings: BotSettings, core: ChatCore, adapters: list[Adapter]) -> MetricsServer:
    queue = core.queue
    queues = [settings.queue, f"{settings.queue}.fast", f"{settings.queue}.quality"]

    async def database_ok() -> bool:
        return await core.storage.schema_version() > 0

    async def broker_ok() -> bool:
        return await queue.ping() if isinstance(queue, CeleryJobQueue) else True

    async def adapters_ok() -> bool:
        return all(adapter.healthy() for adapter in adapters)

    async def refresh() -> None:
        for state, count in (await core.storage.job_counts_by_state()).items():
            metrics.JOBS_BY_STATE.labels(state).set(count)
        if isinstance(queue, CeleryJobQueue):
            for name, depth in (await queue.depths(queues)).items():
                metrics.QUEUE_DEPTH.labels(name).set(depth)

    checks = {"database": database_ok, "broker": broker_ok, "adapters": adapters_ok}
    return MetricsServer(settings.metrics_port, checks, refresh)


async def serve(settings: BotSettings, *, with_console: bool | None = None) -> None:
    """Run every adapter whose token is set; the console when none is.

    Adapters connect first and the core resumes unfinished jobs after, so a
    job finished while the bot was down can be delivered at once.
    """
    discord_token = settings.discord_token.get_secret_value()
    telegram_token = settings.telegram_token.get_secret_value()
    if with_console is None:
        with_console = not discord_token and not telegram_token
    install_secret_filter([discord_token, telegram_token])
    async with open_core(settings) as core:
        adapters: list[Adapter] = []
        if discord_token:
            from bot.discord_app import DiscordAdapter

            adapters.append(DiscordAdapter(core, settings))
        if telegram_token:
            from bot.telegram_app import TelegramAdapter

            adapters.append(TelegramAdapter(core, settings))
        if with_console:
            from bot.console_app import ConsoleAdapter

            adapters.append(ConsoleAdapter(core, sys.stdin, sys.stdout, sys.stderr, settings.out))
        if not adapters:
            raise RuntimeError("nothing to run")
        server = None
        try:
            for adapter in adapters:
                await adapter.open()
            await core.start()
            if settings.metrics_port:
                server = metrics_server(settings, core, adapters)
                await server.start()
            await asyncio.gather(*(adapter.run() for adapter in adapters))
        finally:
            if server is not None:
                await server.stop()
            for adapter in adapters:
                try:
                    await adapter.close()
                except Exception:
                    logger.exception("closing %s failed", type(adapter).__name__)
