"""``mmpp bench bots``: how the chat side holds up under many people at once.

What it measures, and why this way.  Issue #4 asks whether the bot stays
responsive and exact under load: Discord drops an interaction that is not
acknowledged within 3 s, and a lost or doubled job or rating is a bug
whatever the load.  The GPU is not part of the question (``mmpp bench
engine`` measures it), so everything here is the real chat side and only the
worker is stood in for:

* the real :class:`~bot.core.ChatCore` with a real :class:`~bot.storage.Storage`
  (an SQLite file in a temporary folder, with the real migrations);
* the real adapter: discord.py's client (:class:`~bot.discord_app.DiscordAdapter`)
  talking to the loopback Discord fake over a real websocket and real HTTP,
  or python-telegram-bot (:class:`~bot.telegram_app.TelegramAdapter`) polling
  the loopback Bot API fake;
* :class:`InstantWorkerQueue`, a stand-in for the Celery worker that belongs
  to this benchmark harness only: every job succeeds at once with one tiny
  PNG per picture, so the figures are the bot's alone.

N simulated people (``--users``, default 200) each loop for ``--seconds``
(default 20): send ``/profile`` with the same small selfie
(``engine/assets/sample_selfie.jpg``), wait until the picture and its rating
controls arrive, react with a rating, wait ``--think`` seconds (uniformly
0-2x, default 0: back-to-back, the harshest case), and start again.  The
first people start spread over the first second, as real ones would not all
press Enter in the same millisecond.

The figures:

* time to the first reply, p50/p99: on Discord the interaction callback (the
  deferral), timed by the fake from the dispatch of INTERACTION_CREATE to the
  callback's arrival, exactly the interval Discord's 3 s rule applies to; on
  Telegram the first message the bot sends in reply to the photo (the status
  line), timed from the moment the update was queued for ``getUpdates``;
* rating writes per second: rows in the ``ratings`` table at the end,
  divided by the load phase's duration, next to the reactions sent;
* errors: refused or late acknowledgements, error replies, people who never
  got their pictures, exceptions, and ERROR lines the bot logged;
* lost and duplicated jobs (every command must have exactly one job row),
  deliveries (exactly one picture message per picture of a job, as seen on the
  platform) and ratings (every reaction must end as its row, with its score).

Targets: first reply p99 <= 250 ms; zero lost or duplicated jobs, deliveries
and ratings; zero errors.

The fakes live in ``tests/fakes/``: they are test doubles, part of the
repository checkout but not of the installed package (``pyproject.toml``
ships ``bot``, ``engine`` and ``mmpp`` only).  Moving them into ``bot/``
would ship test code, and a copy would drift from the fakes the tests keep
honest.  So this module loads them lazily, by file path from the checkout it
sits in (``<checkout>/tests/fakes/<name>.py``), without putting the checkout
on ``sys.path`` (an unrelated installed ``tests`` package cannot shadow
them); outside a checkout it stops with a one-line error saying so.  Nothing
here imports torch, diffusers or the engine beyond ``engine.contracts``.

One process, one event loop: the fake and the simulated people run beside
the bot, as the tests do, so their CPU time is billed to the same loop.  The
report says how much of the machine other processes took meanwhile, since
these machines are shared.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import struct
import sys
import zlib
from collections import Counter
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import ModuleType
from typing import Any

from bot.queue import QueueStatus
from engine.contracts import ErrorCode, GenerateResult, Picture

logger = logging.getLogger(__name__)

PLATFORMS = ("discord", "telegram")
TARGET_FIRST_REPLY_P99_SECONDS = 0.250
EXIT_BAD_INPUT = 2
EXIT_INTERNAL = 3
EXIT_TARGET_MISSED = 1
#: The checkout this module sits in; the fakes are looked for under it.
CHECKOUT = Path(__file__).resolve().parent.parent
#: How long one person waits for their pictures before counting an error.
CYCLE_TIMEOUT_SECONDS = 30.0
#: After the load: how long the bot gets to finish what is in flight.
DRAIN_TIMEOUT_SECONDS = 30.0
#: How often the one watcher task looks at the fake for new replies.
WATCH_INTERVAL_SECONDS = 0.005
#: Ratings each simulated person gives, by platform: reactions the core maps to 1-5.
DISCORD_REACTIONS = {"1️⃣": 1, "2️⃣": 2, "3️⃣": 3, "4️⃣": 4, "5️⃣": 5}
TELEGRAM_REACTIONS = {"💩": 1, "👎": 2, "🤔": 3, "👍": 4, "🔥": 5}
TELEGRAM_TOKEN = "424242:bench-token-not-a-secret"
STYLE = "anime"


class BenchError(Exception):
    """A benchmark that cannot run (no checkout, a bad option); ends as one line."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def as_line(self) -> str:
        return f"error[{self.code.value}]: mmpp bench bots: {self.message}"


# --------------------------------------------------------------------------- the stand-in worker


def tiny_png(width: int = 8, height: int = 8, rgb: tuple[int, int, int] = (200, 120, 80)) -> bytes:
    """A valid PNG built by hand, so the harness needs no imaging library."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = b"".join(b"\x00" + bytes(rgb) * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


class InstantWorkerQueue:
    """Benchmark harness only: a :class:`~bot.queue.JobQueue` whose "worker" finishes every job at once.

    It answers ``SUCCESS`` on the first status poll with a real
    :class:`~engine.contracts.GenerateResult` payload (one tiny PNG per
    requested picture), so the core runs its whole job lifecycle (store the
    pictures, deliver them, mark the job delivered) with no GPU and no broker
    in the measurement.  It also counts submissions per task id: the core must
    enqueue each job exactly once when nothing crashes.
    """

    def __init__(self) -> None:
        self.png = tiny_png()
        self.jobs: dict[str, tuple[int, str, int]] = {}
        self.submissions: Counter[str] = Counter()

    async def submit(self, task_id: str, payload: dict[str, Any]) -> None:
        self.submissions[task_id] += 1
        count = int(payload.get("count") or 1)
        self.jobs[task_id] = (count, str(payload.get("style") or ""), int(payload.get("seed") or 0))

    async def status(self, task_id: str) -> QueueStatus:
        job = self.jobs.get(task_id)
        if job is None:
            return QueueStatus("PENDING")
        count, style, seed = job
        result = GenerateResult(
            pictures=[Picture(png=self.png, seed=seed + index) for index in range(count)],
            style=style, mode="fast", steps=0, model="bench: InstantWorkerQueue (no GPU)", test_sized_model=True,
        )  # fmt: skip
        return QueueStatus("SUCCESS", result=result.to_payload())

    async def forget(self, task_id: str) -> None:
        self.jobs.pop(task_id, None)


# --------------------------------------------------------------------------- what one person did


@dataclass
class Cycle:
    """One command of one simulated person, from sending it to rating its picture."""

    person: int
    platform_user_id: str
    event_key: str = ""
    sent_at: float = 0.0  # time.monotonic() when the platform queued the command
    first_reply_seconds: float | None = None
    pictures_seconds: float | None = None
    picture_ref: str | None = None  # the picture message, as the adapter names it (message_ref)
    error: str | None = None
    reaction: str | None = None
    stars: int | None = None
    done: asyncio.Future[None] | None = field(default=None, repr=False)
    handle: Any = field(default=None, repr=False)  # the platform's own record of the command

    def finish(self, error: str | None = None) -> None:
        if error is not None and self.error is None:
            self.error = error
        if self.done is not None and not self.done.done():
            self.done.set_result(None)


class ErrorCounter(logging.Handler):
    """Counts ERROR records while the benchmark runs: a bot that logs errors under load is not passing."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.count = 0
        self.first: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        if self.first is None:
            self.first = f"{record.name}: {record.getMessage()}"[:200]


# --------------------------------------------------------------------------- loading the fakes


def load_fake(name: str) -> ModuleType:
    """``tests/fakes/<name>.py`` of this checkout (see the module docstring for why by path)."""
    path = CHECKOUT / "tests" / "fakes" / f"{name}.py"
    loaded = sys.modules.get(f"tests.fakes.{name}")
    if loaded is not None and Path(getattr(loaded, "__file__", "") or "").resolve() == path:
        return loaded  # already imported (under pytest): the same classes
    private_name = f"_mmpp_bench_fakes_{name}"
    if private_name in sys.modules:
        return sys.modules[private_name]
    if not path.is_file():
        raise BenchError(
            ErrorCode.NOT_FOUND,
            f"the loopback platform fakes are not here ({path}); they ship with the repository checkout, "
            "not with the installed package: run it from a checkout (git clone; pip install -e .).",
        )
    spec = importlib.util.spec_from_file_location(private_name, path)
    if spec is None or spec.loader is None:
        raise BenchError(ErrorCode.INTERNAL, f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[private_name] = module  # dataclasses look their module up while the class is built
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(private_name, None)
        raise
    return module


def sample_selfie() -> bytes:
    return resources.files("engine").joinpath("assets", "sample_selfie.jpg").read_bytes()


