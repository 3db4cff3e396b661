"""Helpers for injecting faults for real: private Redis servers, killable workers, a bot on FakeTelegram.

Every test here owns its processes.  Workers talk to a private ``redis-server`` on a free port (append-only,
as docker-compose configures it), never to the shared Redis on 6379: a test that kills or restarts Redis, or
starts a worker with a short visibility timeout (whose sweep would hand back *other* tests' running jobs),
must not touch anything other tests use.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis

from bot.core import ChatCore
from bot.queue import CeleryJobQueue, JobQueue, make_client
from bot.settings import BotSettings
from bot.storage import Job, Storage
from bot.telegram_app import TelegramAdapter
from mmpp.contract import queue_for
from tests.conftest import REPO
from tests.fakes.telegram_api import FakeTelegram, FakeUser
from tests.support.telegram import telegram_settings

TOKEN = "123456:TEST-token-abcdefghijklmnopqrstuvwxyz"
BOT_USERNAME = "MmppTestBot"
ALICE = FakeUser(1001, "Alice", username="alice")
BOB = FakeUser(1002, "Bob", username="bob")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def unique_queue() -> str:
    return f"mmpp-fault-{uuid.uuid4().hex[:8]}"


# ---------------------------------------------------------------------------------------------- Redis


class PrivateRedis:
    """A ``redis-server`` of our own that tests may kill and restart on the same port and data folder.

    ``arguments`` go to ``redis-server`` after ours (e.g. ``--maxmemory 8mb --maxmemory-policy noeviction``).
    """

    def __init__(self, folder: Path, arguments: tuple[str, ...] = ()) -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.arguments = arguments
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2, socket_connect_timeout=2)

    def start(self) -> None:
        command = [
            "redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
            "--dir", str(self.folder), "--logfile", str(self.folder / "redis.log"), *self.arguments,
        ]  # fmt: skip
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}; see {self.folder}/redis.log")
            with contextlib.suppress(redis.RedisError):
                if self.client().ping():
                    return
            time.sleep(0.05)
        raise RuntimeError(f"redis-server on port {self.port} did not answer within 15 s")

    def kill(self) -> None:
        """SIGKILL: no goodbye to clients; the append-only file keeps what was written before."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def shutdown(self) -> None:
        """The SHUTDOWN command: Redis fsyncs the append-only file and exits."""
        assert self.process is not None
        with contextlib.suppress(redis.ConnectionError):
            self.client().shutdown()
        self.process.wait(timeout=15)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    # What the worker and the bot left in Redis, read directly.

    def task_meta(self, task_id: str) -> dict[str, Any] | None:
        raw = self.client().get(f"celery-task-meta-{task_id}")
        return json.loads(raw) if raw else None

    def queue_length(self, queue: str) -> int:
        """Messages waiting in a worker's queues (the base queue and its fast and quality queues)."""
        client = self.client()
        return sum(int(client.llen(queue_for(queue, mode))) for mode in (None, "fast", "quality"))

    def unacked(self) -> int:
        """Messages delivered to a worker and not yet acknowledged (kombu's ``unacked`` hash)."""
        return int(self.client().hlen("unacked"))

    def unacked_since(self) -> list[float]:
        """When each unacknowledged message was delivered (Unix time; kombu's ``unacked_index``)."""
        return [score for _, score in self.client().zrange("unacked_index", 0, -1, withscores=True)]


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    server = PrivateRedis(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


# ---------------------------------------------------------------------------------------------- PostgreSQL


class PrivatePostgres:
    """A PostgreSQL server of our own (initdb into ``folder``, loopback on a free port, trust auth) that a test
    may restart under load.  initdb and pg_ctl refuse to run as root: as root they run as the user postgres, as
    the Makefile's ``postgres`` target does.  fsync is off: the test restarts the server, it never crashes the
    machine, so what was committed survives a restart all the same."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.run_as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *command: str) -> None:
        done = subprocess.run([*self.run_as, *command], capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"{command[0]} failed ({done.returncode}): {done.stderr.strip()[-500:]}")

    def _pg_ctl(self, *arguments: str) -> None:
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.folder} -c fsync=off"
        log = str(self.folder / "server.log")
        self._run("pg_ctl", "-D", str(self.folder), "-l", log, "-w", "-t", "30", "-o", options, *arguments)

    def start(self) -> None:
        if not (self.folder / "PG_VERSION").exists():
            self.folder.mkdir(parents=True, exist_ok=True)
            self.folder.chmod(0o700)
            if self.run_as:
                shutil.chown(self.folder, "postgres")
            self._run("initdb", "-D", str(self.folder), "-U", "postgres", "--auth=trust", "--no-sync")
        self._pg_ctl("start")

    def restart(self) -> None:
        """``pg_ctl restart -m fast``: every connection is closed and every open transaction rolled back."""
        self._pg_ctl("restart", "-m", "fast")

    def stop(self) -> None:
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            self._pg_ctl("stop", "-m", "immediate")


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    if shutil.which("initdb") is None or shutil.which("pg_ctl") is None:
        pytest.fail("initdb and pg_ctl are not installed (the PostgreSQL server package)")
    # Not under tmp_path: pytest makes its folders 0700 for root, where the user postgres cannot reach.
    home = Path(tempfile.mkdtemp(prefix="mmpp-postgres-"))
    if os.geteuid() == 0:
        shutil.chown(home, "postgres")
    server = PrivatePostgres(home / "data")
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(home, ignore_errors=True)


# ---------------------------------------------------------------------------------------------- workers


@dataclass
class Worker:
    """A real ``mmpp worker`` (prefork, one pool child) whose processes a test may kill."""

    process: subprocess.Popen[bytes]
    log: Path

    def children(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def pool_child(self, timeout: float = 60.0) -> psutil.Process:
        """The one prefork pool process (the one that runs the jobs)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            children = [child for child in self.children() if _alive(child)]
            if len(children) == 1:
                return children[0]
            time.sleep(0.05)
        raise AssertionError(f"expected one pool process, found {self.children()}\n{self.log_tail()}")

    def kill_everything(self) -> None:
        """SIGKILL the main process and its pool, main first so that nobody is left to requeue the job."""
        children = self.children()
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGKILL)
        for child in children:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
        self.process.wait(timeout=10)
        psutil.wait_procs(children, timeout=10)

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except FileNotFoundError:
            return "(no worker log)"
        return "\n".join(text.splitlines()[-lines:])

    def wait_ready(self, timeout: float = 90.0) -> None:
        """Until Celery says ``ready`` (consumer connected) in the log."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"the worker exited with {self.process.returncode}\n{self.log_tail()}")
            if self.log.exists() and " ready." in self.log.read_text(errors="replace"):
                return
            time.sleep(0.1)
        raise AssertionError(f"the worker was not ready within {timeout} s\n{self.log_tail()}")


def _alive(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def spawn_worker(queue: str, cache_dir: Path, redis_url: str, log: Path, **env: str) -> Worker:
    """Like ``tests.conftest.start_worker`` but on ``redis_url``, logging to ``log``, with one torch thread."""
    environment = {
        **os.environ,
        "REDIS_URL": redis_url,
        "MMPP_QUEUE": queue,
        "MMPP_WEIGHTS": "tiny",
        "MMPP_CACHE_DIR": str(cache_dir),
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
        # One torch thread: on 2 shared vCPUs, two OpenMP threads competing with other processes made a
        # 1-picture tiny job take 40-55 s instead of 2 s; one thread keeps job times (and time limits) predictable.
        "OMP_NUM_THREADS": "1",
        **env,
    }
    command = [sys.executable, "-m", "mmpp.cli", "worker", "--pool", "prefork", "--concurrency", "1"]
    with log.open("ab") as output:
        process = subprocess.Popen(command, env=environment, cwd=REPO, stdout=output, stderr=subprocess.STDOUT)
    return Worker(process, log)


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    """Tests append the workers they start; whatever is left alive is killed at the end."""
    started: list[Worker] = []
    yield started
    for worker in started:
        worker.kill_everything()


@pytest.fixture(scope="session")
def tiny_weights(cache_dir: Path) -> Path:
    """The tiny model cache, built once before any worker races to build it."""
    from engine.models import build_tiny_weights
    from mmpp.catalogue import load_catalogue

    build_tiny_weights(cache_dir / "tiny", "sd15", load_catalogue().names)
    return cache_dir


# ---------------------------------------------------------------------------------------------- the bot


@dataclass
class TelegramBot:
    fake: FakeTelegram
    core: ChatCore
    storage: Storage
    adapter: TelegramAdapter
    settings: BotSettings


@contextlib.asynccontextmanager
async def telegram_bot(
    fake: FakeTelegram,
    tmp_path: Path,
    *,
    redis_url: str = "",
    queue: str = "mmpp",
    job_queue: JobQueue | None = None,
    **overrides: Any,
) -> AsyncIterator[TelegramBot]:
    """The real Telegram adapter and core over a real database; the real Celery client unless ``job_queue``."""
    settings = telegram_settings(fake, tmp_path, redis_url=redis_url, queue=queue, **overrides)
    storage = await Storage.open(settings.database_location)
    if job_queue is None:
        job_queue = CeleryJobQueue(make_client(settings.redis_url, settings.state_dir))
    core = ChatCore(storage, job_queue, settings)
    adapter = TelegramAdapter(core, settings, TOKEN)
    try:
        await asyncio.wait_for(adapter.open(), 30)
        await core.start()
        await fake.wait_polling(timeout=30)
        yield TelegramBot(fake, core, storage, adapter, settings)
    finally:
        await core.stop()
        await adapter.close()
        await storage.close()


@pytest.fixture
async def fake_telegram() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram(token=TOKEN, bot_username=BOT_USERNAME) as server:
        yield server


# ---------------------------------------------------------------------------------------------- waiting


async def wait_until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``check`` (sync or async) until it returns something truthy; that value is returned."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if loop.time() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)


async def wait_for_job(storage: Storage, job_id: int, check: Callable[[Job], Any], timeout: float = 60) -> Job:
    async def current() -> Job | None:
        job = await storage.job(job_id)
        return job if job is not None and check(job) else None

    return await wait_until(current, timeout, f"job {job_id}")


async def wait_for_progress(server: PrivateRedis, task_id: str, timeout: float = 120) -> dict[str, Any]:
    """Until the worker reports the task in PROGRESS: it is mid-job, past loading and before the result."""

    def progress() -> dict[str, Any] | None:
        meta = server.task_meta(task_id)
        if meta is not None and meta["status"] == "SUCCESS":
            raise AssertionError("the job finished before the test saw it running")
        return meta if meta is not None and meta["status"] == "PROGRESS" else None

    return await wait_until(progress, timeout, f"task {task_id} to report progress")


def replies_in(fake: FakeTelegram, chat_id: int) -> list[str]:
    """What the bot finally answered in a chat: 'pictures' per picture delivery, the text of each failure line."""
    replies = []
    for call in fake.calls():
        if not call.ok or call.params.get("chat_id") != chat_id:
            continue
        if call.method in {"sendPhoto", "sendMediaGroup"}:
            replies.append("pictures")
        elif call.method == "sendMessage" and str(call.params.get("text", "")).startswith("⚠️"):
            replies.append(call.params["text"])
    return replies
