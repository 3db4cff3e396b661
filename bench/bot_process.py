"""A bot process for ``mmpp bench bots``: what a second ``mmpp run`` on another machine is.

    python -m bench.bot_process CONFIG.json

With ``--processes 2`` the benchmark's own process holds the platform fake, the simulated people and the first
bot (Discord shard 0 of 2), and this one is the second; with ``--bots-apart`` every bot is one of these and the
benchmark's process holds only the fake and the people.  Each is the real :class:`~bot.core.ChatCore` and
:class:`~bot.discord_app.DiscordAdapter` for its shards, on the benchmark's database, with its own
:class:`~bench.bots.InstantWorkerQueue` (each job is sent to the broker by the process that delivers it, so each
process's stand-in sees exactly its own jobs).
It prints ``ready`` once its shard is connected and its core started, runs until its standard input closes,
then writes what the benchmark checks and reports (CONFIG's ``report`` file): the jobs its queue was sent,
when each result was first read, the CPU seconds it used, and the ERROR lines it logged.

Why a process and not a second core in the same event loop: the question is whether two processes share the
work (and the CPU) without losing or doubling anything; one loop would share one core and one GIL.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any


async def serve(config: dict[str, Any]) -> dict[str, Any]:
    from bench.bots import InstantWorkerQueue, bench_settings, counting_errors
    from bot.core import ChatCore
    from bot.discord_app import DiscordAdapter
    from bot.storage import Storage

    settings = bench_settings(Path(config["workdir"]), **config["settings"])
    queue = InstantWorkerQueue()
    storage = await Storage.open(settings.database_location)
    core = ChatCore(storage, queue, settings)
    adapter = DiscordAdapter(core, settings, config["token"])
    async with counting_errors() as errors:
        try:
            await asyncio.wait_for(adapter.open(), 60)
            await core.start()
            cpu_at_ready = time.process_time()
            print("ready", flush=True)
            # Until the benchmark closes our standard input: it has checked that every job is delivered.
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
            cpu_seconds = time.process_time() - cpu_at_ready
        finally:
            await core.stop()
            await adapter.close()
            await storage.close()
    return {
        "submissions": dict(queue.submissions),
        "ready_at": queue.ready_at,
        "cpu_seconds": cpu_seconds,
        "errors": errors.count,
        "first_error": errors.first,
    }


def main(path: str) -> int:
    config = json.loads(Path(path).read_text(encoding="utf-8"))
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    outcome = asyncio.run(serve(config))
    Path(config["report"]).write_text(json.dumps(outcome), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
