"""``mmpp bench soak``: hundreds of jobs with a large photo through a real worker and a small ``noeviction`` Redis.

What it measures, and why this way.  The question is whether a burst of orders can fill the broker:
compose runs Redis with ``noeviction`` (a full Redis refuses writes rather than drop a job), and a
Redis that refuses writes stops the whole service.  So everything that touches Redis is real:

* a private ``redis-server`` on a free port with ``--maxmemory`` small (``--maxmemory-mb``, default 32)
  and ``--maxmemory-policy noeviction``, append-only as compose runs it, in a temporary folder;
* a real ``mmpp worker`` (Celery, prefork, one process) on the tiny test-sized weights
  (``MMPP_WEIGHTS=tiny``: the GPU is not the question, ``mmpp bench engine`` measures it);
* the real chat core (:class:`~bot.core.ChatCore`: selfie downscaling, admission control, the job
  lifecycle) over a real SQLite database with the real Celery client, delivering to a recording
  platform that stands in for Discord or Telegram (``mmpp bench bots`` measures those).

``--jobs`` people (default 300) each order one picture at once, every one with the same large photo: a
2400x1800 JPEG of random noise (which compresses badly: about 2.8 MB) around the sample selfie's face,
so every job is a real job with a face.  Without downscaling and admission control these jobs need
about 1.7 GB of Redis; the run shows what they take instead.

The figures: jobs delivered, failed and duplicated (a job whose pictures were posted twice), jobs lost
(never delivered within ``--timeout``); Redis's peak memory (``used_memory`` sampled every 20 ms and
Redis's own ``used_memory_peak``) against its limit, and the writes it refused for lack of memory
(``errorstat_OOM``); the most jobs the bot held in the broker at once; the result backend's leftovers
after the run (results of delivered jobs must be gone); the photo, the kept selfie and one job's
broker message before and after downscaling; wall time and jobs per second; and how busy the machine
was: this process, its children (the worker and Redis) and other processes, from ``/proc/stat``.

Targets: every job delivered once, none failed, none lost, Redis's peak under its limit, no refused
write, no result left.  Exit status (``mmpp.commandline``'s table): 0 when every target is met, 3 when
one is missed, 2 for bad options or a missing ``redis-server``, 1 for a failure of the harness itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import logging
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.cli import at_least, parse_options
from bench.machine import busy_cpu_seconds, cpu_name
from mmpp.commandline import EXIT_OK, EXIT_TARGET_MISSED, OneLineParser, run_reporting_errors
from mmpp.errors import ErrorCode, MmppError
from mmpp.processes import stop_process

logger = logging.getLogger("bench.soak")

REPO = Path(__file__).resolve().parent.parent
SAMPLE_SELFIE = REPO / "engine" / "assets" / "sample_selfie.jpg"


class SoakError(MmppError):
    """A soak run that cannot start (no redis-server, a worker that never gets ready)."""


# --------------------------------------------------------------------------- the photo and the platform


def large_photo(seed: int = 1) -> bytes:
    """A phone-sized JPEG of random noise (it compresses badly) around the sample selfie's face."""
    import numpy as np
    from PIL import Image

    noise = np.random.default_rng(seed).integers(0, 256, (1800, 2400, 3), dtype=np.uint8)
    photo = Image.fromarray(noise)
    photo.paste(Image.open(SAMPLE_SELFIE).resize((1300, 1300), Image.Resampling.LANCZOS), (550, 250))
    buffer = io.BytesIO()
    photo.save(buffer, "JPEG", quality=92)
    return buffer.getvalue()


@dataclass
class RecordingPlatform:
    """Where the core delivers: it only records, so the figures are the broker's and not a platform's."""

    platform: str = "soak"
    status_edit_pace: Any = None
    posted: Counter[int] = field(default_factory=Counter)
    failed: dict[int, str] = field(default_factory=dict)
    edits: int = 0

    def __post_init__(self) -> None:
        from bot.core import EditPace

        self.status_edit_pace = EditPace(1.0)

    async def post_status(self, job: Any, text: str) -> str:
        return f"status-{job.id}"

    async def edit_status(self, job: Any, message_ref: str, text: str, preview: bytes | None = None) -> None:
        self.edits += 1

    async def post_pictures(self, job: Any, pictures: list[Any], caption: str, on_posted: Any) -> None:
        self.posted[job.id] += 1
        for picture in pictures:
            if picture.message_ref is None:
                await on_posted(picture, f"picture-{picture.id}")

    async def post_failure(self, job: Any, code: ErrorCode, text: str) -> None:
        self.failed[job.id] = code.value

    async def post_notice(self, job: Any, text: str) -> None:
        return None


# --------------------------------------------------------------------------- Redis and the worker


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class SmallRedis:
    folder: Path
    maxmemory: int
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> Any:
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def start(self) -> None:
        server = shutil.which("redis-server")
        if server is None:
            raise SoakError(ErrorCode.INVALID_REQUEST, "mmpp bench soak needs redis-server on the PATH.")
        command = [
            server, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
            "--dir", str(self.folder), "--maxmemory", str(self.maxmemory), "--maxmemory-policy", "noeviction",
            "--logfile", str(self.folder / "redis.log"),
        ]  # fmt: skip
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                if self.client().ping():
                    return
            time.sleep(0.05)
        raise SoakError(ErrorCode.INTERNAL, f"redis-server did not answer on port {self.port} within 15 s.")

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, grace_seconds=10)


class MemoryWatch:
    """Redis's ``used_memory`` every 20 ms, and the bot's jobs in the broker, sampled in a thread."""

    def __init__(self, server: SmallRedis) -> None:
        self.client = server.client()
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="redis-memory", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            with contextlib.suppress(Exception):
                self.samples.append(int(self.client.info("memory")["used_memory"]))

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def peak(self) -> int:
        return max([*self.samples, int(self.client.info("memory")["used_memory_peak"])])

    def refused_writes(self) -> int:
        stats = self.client.info("errorstats")
        return int(stats.get("errorstat_OOM", {}).get("count", 0))


def start_worker(redis_url: str, queue: str, log: Path) -> subprocess.Popen[bytes]:
    environment = {
        **os.environ,
        "REDIS_URL": redis_url,
        "MMPP_QUEUE": queue,
        "MMPP_WEIGHTS": "tiny",
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
        "MMPP_PREVIEW_EVERY_STEPS": "0",
        # One torch thread: the worker shares the machine with the bot, Redis and the sampling.
        "OMP_NUM_THREADS": "1",
    }
    command = [sys.executable, "-m", "mmpp.cli", "worker", "--pool", "prefork", "--concurrency", "1"]
    with log.open("ab") as output:
        return subprocess.Popen(command, env=environment, cwd=REPO, stdout=output, stderr=subprocess.STDOUT)


def stop_worker(worker: subprocess.Popen[bytes]) -> None:
    stop_process(worker, grace_seconds=60)


# --------------------------------------------------------------------------- the run


@dataclass(frozen=True)
class Options:
    jobs: int
    maxmemory_mb: int
    broker_max_jobs: int
    broker_max_bytes_mb: float
    timeout: float


async def soak(options: Options, folder: Path, progress: Any) -> dict[str, Any]:
    from bot.core import ChatCore, Person, ProfileOrder
    from bot.core.selfies import prepare_selfie
    from bot.queue import CeleryJobQueue, broker_message_bytes, make_client
    from bot.settings import BotSettings
    from bot.storage import Storage
    from mmpp.contract import GenerateRequest

    maxmemory = options.maxmemory_mb * 2**20
    server = SmallRedis(folder / "redis", maxmemory)
    server.folder.mkdir(parents=True)
    server.start()
    queue = f"mmpp-soak-{uuid.uuid4().hex[:8]}"
    worker = start_worker(server.url, queue, folder / "worker.log")
    memory = MemoryWatch(server)
    photo = large_photo()
    kept = prepare_selfie(photo).data
    payload_before = len(json.dumps(GenerateRequest(selfie=photo, style="anime").to_payload()))
    payload_after = len(json.dumps(GenerateRequest(selfie=kept, style="anime").to_payload()))
    settings = BotSettings(
        _env_file=None, redis_url=server.url, queue=queue, database=folder / "mmpp.sqlite3",
        state_dir=folder / "state", poll_interval_seconds=0.2, job_timeout_seconds=max(3600.0, options.timeout),
        broker_max_jobs=options.broker_max_jobs, broker_max_bytes=int(options.broker_max_bytes_mb * 2**20),
        daily_picture_quota=10**6, chat_daily_picture_quota=10**6,
    )  # fmt: skip
    storage = await Storage.open(settings.database)
    client = make_client(settings.redis_url, settings.state_dir)
    core = ChatCore(storage, CeleryJobQueue(client, expires_after=settings.job_timeout_seconds), settings)
    platform = RecordingPlatform()
    core.attach(platform)
    most_in_broker = 0
    busy_before, own_before, children_before = busy_cpu_seconds(), time.process_time(), _children_cpu()
    started = time.monotonic()
    memory.start()
    try:
        await core.start()
        progress(f"ordering {options.jobs} jobs with a {len(photo) / 2**20:.1f} MB photo")
        for number in range(options.jobs):
            person = Person("soak", f"person-{number}")
            order = ProfileOrder(person, f"order-{number}", f"chat-{number}", {}, {"style": "anime"}, photo)
            await core.order_profile(order)
            if number % 50 == 49:
                progress(f"{number + 1} ordered, {len(platform.posted)} delivered")
        ordered_at = time.monotonic() - started
        deadline = started + options.timeout
        last_report = 0.0
        while len(platform.posted) + len(platform.failed) < options.jobs and time.monotonic() < deadline:
            load = await storage.broker_load()
            most_in_broker = max(most_in_broker, sum(held for held, _ in load.values()))
            if worker.poll() is not None:
                raise SoakError(ErrorCode.INTERNAL, f"the worker stopped; its log is {folder / 'worker.log'}")
            if time.monotonic() - last_report > 15:
                last_report = time.monotonic()
                progress(f"{len(platform.posted)} delivered, {sum(w for _, w in load.values())} waiting")
            await asyncio.sleep(0.2)
        await core.wait_idle(timeout=30)
        wall = time.monotonic() - started
        await asyncio.sleep(0.5)
        leftovers = len(list(server.client().scan_iter("celery-task-meta-*")))
    finally:
        memory.stop()
        await core.stop()
        await storage.close()
        client.close()
        stop_worker(worker)
        peak, refused = memory.peak(), memory.refused_writes()
        server.stop()
    busy_after, own_after, children_after = busy_cpu_seconds(), time.process_time(), _children_cpu()
    cores = os.cpu_count() or 1
    own, children = own_after - own_before, children_after - children_before
    others = None
    if busy_before is not None and busy_after is not None:
        others = min(1.0, max(0.0, (busy_after - busy_before - own - children) / (wall * cores)))
    duplicates = sum(1 for count in platform.posted.values() if count > 1)
    delivered = len(platform.posted)
    lost = options.jobs - delivered - len(platform.failed)
    result = {
        "jobs": options.jobs,
        "delivered": delivered,
        "failed": len(platform.failed),
        "failure_codes": dict(Counter(platform.failed.values())),
        "duplicated": duplicates,
        "lost": lost,
        "redis_maxmemory_bytes": maxmemory,
        "redis_peak_bytes": peak,
        "redis_refused_writes": refused,
        "most_jobs_in_broker": most_in_broker,
        "broker_max_jobs": options.broker_max_jobs,
        "broker_max_bytes": int(options.broker_max_bytes_mb * 2**20),
        "results_left_in_backend": leftovers,
        "photo_bytes": len(photo),
        "kept_selfie_bytes": len(kept),
        "payload_json_bytes_before": payload_before,
        "payload_json_bytes_after": payload_after,
        "broker_message_bytes_before": broker_message_bytes(len(photo)),
        "broker_message_bytes_after": broker_message_bytes(len(kept)),
        "ordering_seconds": round(ordered_at, 1),
        "wall_seconds": round(wall, 1),
        "jobs_per_second": round(delivered / wall, 2) if wall else None,
        "cpu": cpu_name(),
        "cores": cores,
        "this_process_share": round(own / (wall * cores), 3),
        "worker_and_redis_share": round(children / (wall * cores), 3),
        "other_processes_share": None if others is None else round(others, 3),
    }
    result["pass"] = (
        delivered == options.jobs and not platform.failed and duplicates == 0 and lost == 0
        and peak < maxmemory and refused == 0 and leftovers == 0
    )  # fmt: skip
    return result


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def render_table(result: dict[str, Any]) -> str:
    mb = 2**20
    rows = [
        ("jobs delivered / ordered", f"{result['delivered']} / {result['jobs']}"),
        ("failed, duplicated, lost", f"{result['failed']}, {result['duplicated']}, {result['lost']}"),
        ("Redis peak / maxmemory",
         f"{result['redis_peak_bytes'] / mb:.1f} MB / {result['redis_maxmemory_bytes'] / mb:.0f} MB"),
        ("writes Redis refused (OOM)", str(result["redis_refused_writes"])),
        ("most jobs in the broker", f"{result['most_jobs_in_broker']} (limit {result['broker_max_jobs']} per queue)"),
        ("results left in the backend", str(result["results_left_in_backend"])),
        ("photo -> kept selfie", f"{result['photo_bytes'] / 1e3:.0f} KB -> {result['kept_selfie_bytes'] / 1e3:.0f} KB"),
        ("one job's message before -> after", f"{result['broker_message_bytes_before'] / 1e3:.0f} KB -> "
         f"{result['broker_message_bytes_after'] / 1e3:.0f} KB"),
        ("wall time (ordering)", f"{result['wall_seconds']} s ({result['ordering_seconds']} s), "
         f"{result['jobs_per_second']} jobs/s"),
        ("machine", f"{result['cpu']}, {result['cores']} cores"),
        ("share of the machine: bench / worker+Redis / others",
         f"{result['this_process_share']:.0%} / {result['worker_and_redis_share']:.0%} / "
         + ("n/a" if result["other_processes_share"] is None else f"{result['other_processes_share']:.0%}")),
        ("targets met", "yes" if result["pass"] else "NO"),
    ]  # fmt: skip
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


# --------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="mmpp bench soak",
        description=(
            "Order many jobs at once, each with a large photo, through the real chat core, a real Celery worker on "
            "the tiny weights and a private redis-server with a small maxmemory and noeviction; print jobs "
            "delivered, failed, duplicated and lost, Redis's peak memory against its limit, what is left in the "
            "result backend and the payload sizes before and after downscaling. Exit status "
            f"{EXIT_TARGET_MISSED} when a target is missed."
        ),
    )
    parser.add_argument("--jobs", type=at_least(1, int), default=300, help="jobs to order at once (default 300)")
    parser.add_argument("--maxmemory-mb", type=at_least(4, int), default=32, help="Redis's maxmemory (default 32)")
    parser.add_argument(
        "--broker-max-jobs", type=at_least(1, int), default=8,
        help="MMPP_BROKER_MAX_JOBS for the run (default 8)",
    )  # fmt: skip
    parser.add_argument(
        "--broker-max-bytes-mb", type=at_least(0.001, float), default=8.0,
        help="MMPP_BROKER_MAX_BYTES for the run, in MiB (default 8)",
    )  # fmt: skip
    parser.add_argument(
        "--timeout", type=at_least(1, float), default=3600.0,
        help="seconds after which undelivered jobs count as lost (default 3600)",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details to stderr")
    return parser


def main(argv: list[str] | None = None) -> int:
    """``mmpp bench soak [options]`` (``argv``: the options); returns the exit status."""
    arguments = parse_options(build_parser(), list(sys.argv[1:] if argv is None else argv))
    if isinstance(arguments, int):
        return arguments
    logging.basicConfig(
        level=logging.INFO if arguments.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    options = Options(
        arguments.jobs, arguments.maxmemory_mb, arguments.broker_max_jobs, arguments.broker_max_bytes_mb,
        arguments.timeout,
    )  # fmt: skip
    started = time.monotonic()

    def say(message: str) -> None:
        print(f"[soak {time.monotonic() - started:6.1f}s] {message}", file=sys.stderr, flush=True)

    def body() -> int:
        with tempfile.TemporaryDirectory(prefix="mmpp-soak-") as folder:
            result = asyncio.run(soak(options, Path(folder), say))
        print(json.dumps(result, indent=2) if arguments.json else render_table(result))
        return EXIT_OK if result["pass"] else EXIT_TARGET_MISSED

    return run_reporting_errors(body, logger)
