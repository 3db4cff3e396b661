"""Wiring: settings → storage, queue, core, and the adapters whose tokens are set."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TextIO

from bot import metrics
from bot.core import ChatCore
from bot.metrics import MetricsServer
from bot.queue import CeleryJobQueue, make_client
from bot.settings import BotSettings
from bot.storage import Storage
from mmpp.errors import ErrorCode
from mmpp.logs import SecretFilter, install_secret_filter, is_error_line
from mmpp.processes import stop_process

logger = logging.getLogger(__name__)


@asynccontextmanager
async def open_core(settings: BotSettings) -> AsyncIterator[ChatCore]:
    """The core over the real database and broker; migrations are applied on open."""
    settings.family_queues_map()  # a bad MMPP_FAMILY_QUEUES is one line, before anything is opened
    storage = await Storage.open(settings.database_location)
    # A job no worker has started by the end of the bot's patience is dropped by the worker, not painted for nobody.
    client = make_client(settings.redis_url, settings.state_dir)
    queue = CeleryJobQueue(client, expires_after=settings.job_timeout_seconds)
    core = ChatCore(storage, queue, settings)
    try:
        yield core
    finally:
        await core.stop()
        await storage.close()


@dataclass
class WorkerProcess:
    """A generation worker as a child process: the bot never imports torch itself.

    With a ``log_file`` its output (Celery's banner, library warnings, its log)
    is appended there by a reader thread, which also copies each error line to
    the terminal and says so there when the worker ends before it is stopped;
    without one the output goes straight to the terminal's stderr.  Those lines
    bypass this process's log handlers, so the reader redacts ``secrets`` itself.
    """

    process: subprocess.Popen[bytes]
    log_file: Path | None = None
    terminal: TextIO = field(default_factory=lambda: sys.stderr)
    stopping: bool = False
    reader: threading.Thread | None = None
    secrets: list[str] = field(default_factory=list)

    def copy_output(self) -> None:
        assert self.process.stdout is not None and self.log_file is not None
        redactor = SecretFilter(self.secrets)
        with self.log_file.open("ab") as log:
            for line in self.process.stdout:
                if redactor.secrets:
                    line = redactor.redact(line.decode("utf-8", "replace")).encode("utf-8")
                log.write(line)
                log.flush()
                text = line.decode("utf-8", "replace").rstrip()
                if is_error_line(text):
                    print(f"worker: {text}", file=self.terminal, flush=True)
        status = self.process.wait()
        if not self.stopping:
            print(
                f"error[{ErrorCode.INTERNAL.value}]: the worker stopped (exit status {status}); "
                f"its output is in {self.log_file}.",
                file=self.terminal,
                flush=True,
            )


#: What the worker never needs: it talks to the broker, not to the chats.
CHAT_TOKEN_VARIABLES = ("DISCORD_TOKEN", "TELEGRAM_TOKEN")


def worker_environment(settings: BotSettings) -> dict[str, str]:
    """This process's environment for the worker child, without the chat tokens (nothing there can leak them)."""
    env = {name: value for name, value in os.environ.items() if name not in CHAT_TOKEN_VARIABLES}
    env["MMPP_QUEUE"] = settings.queue
    return env


def start_worker_process(settings: BotSettings, log_file: Path | None = None) -> WorkerProcess:
    """Start ``mmpp worker`` for this bot's queue; its output goes to ``log_file`` when given (see WorkerProcess)."""
    command = [sys.executable, "-m", "mmpp.cli", "worker", "--pool", "solo", "--loglevel", "WARNING"]
    env = worker_environment(settings)
    if log_file is None:
        return WorkerProcess(subprocess.Popen(command, env=env, stdout=sys.stderr))
    log_file.parent.mkdir(parents=True, exist_ok=True)
    env["PYTHONUNBUFFERED"] = "1"  # lines reach the file (and errors the terminal) as they are written
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    worker = WorkerProcess(process, log_file, secrets=settings.secrets())
    worker.reader = threading.Thread(target=worker.copy_output, name="worker-output", daemon=True)
    worker.reader.start()
    return worker


def stop_worker_process(worker: WorkerProcess) -> None:
    worker.stopping = True
    stop_process(worker.process, grace_seconds=20)
    if worker.reader is not None:
        worker.reader.join(timeout=10)


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

    async def broker_accepts_jobs() -> bool:
        """False while the broker refuses jobs (full, unreachable): they wait in the database meanwhile."""
        return core.jobs.admission.refusal is None

    async def adapters_ok() -> bool:
        return all(adapter.healthy() for adapter in adapters)

    async def refresh() -> None:
        for state, count in (await core.storage.job_counts_by_state()).items():
            metrics.JOBS_BY_STATE.labels(state).set(count)
        load = await core.storage.broker_load()
        for name in {*queues, *load}:
            held, waiting = load.get(name, (0, 0))
            metrics.JOBS_IN_BROKER.labels(name).set(held)
            metrics.JOBS_WAITING.labels(name).set(waiting)
        if isinstance(queue, CeleryJobQueue):
            for name, depth in (await queue.depths(queues)).items():
                metrics.QUEUE_DEPTH.labels(name).set(depth)

    checks = {
        "database": database_ok,
        "broker": broker_ok,
        "broker_accepts_jobs": broker_accepts_jobs,
        "adapters": adapters_ok,
    }
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
    # `mmpp run` installed the filter with its logging; this covers any other caller and any handler since.
    install_secret_filter(settings.secrets())
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
