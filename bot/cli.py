"""Chat-side subcommands of ``mmpp``: run, chat, migrate, feedback, forget.

Errors end as one line ``error[CODE]: message`` with the exit codes of ``mmpp.commandline``.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import logging
import os
import sys
from pathlib import Path

from bot.core import Person
from bot.settings import BotSettings
from mmpp.commandline import OneLineParser, run_reporting_errors
from mmpp.logs import configure_logging

logger = logging.getLogger(__name__)


def build_parser(command: str) -> argparse.ArgumentParser:
    parser = OneLineParser(prog=f"mmpp {command}")
    verbose_help = (
        "show the worker's and the libraries' output here, in full, instead of in the log file"
        if command == "run"
        else "log progress and details to stderr"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help=verbose_help)
    if command == "run":
        parser.description = (
            "Start a worker and every adapter whose token is set (DISCORD_TOKEN, TELEGRAM_TOKEN); "
            "the console when neither is.  The worker's and the libraries' output goes to "
            "MMPP_STATE_DIR/log/mmpp-run.log (errors also here); -v shows all of it here instead."
        )
        parser.add_argument("--no-worker", action="store_true", help="use workers started elsewhere")
    elif command == "chat":
        parser.description = "The console adapter: type commands, get replies (needs a worker: mmpp worker)."
    elif command == "feedback":
        parser.description = "Ratings per style: jobs, pictures, ratings, mean with 95% interval, share positive."
        parser.add_argument("--csv", action="store_true", help="export the raw ratings as CSV instead")
        parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    elif command == "forget":
        parser.description = "Delete everything stored about one person."
        parser.add_argument("--platform", required=True, choices=["discord", "telegram", "console"])
        parser.add_argument("--user", required=True, help="the platform's user id")
    return parser


#: Loggers whose warnings ``mmpp run`` keeps on the terminal; everything else but errors goes to its log file.
OWN_LOGGERS = ("bot", "mmpp")


def set_up_logging(command: str, verbose: bool, settings: BotSettings) -> Path | None:
    """The logging of a chat-side command, tokens redacted on every handler; the log file, if any.

    `mmpp run` is a conversation on the terminal: the worker's and the libraries' output
    goes to a file unless -v asks for all of it here.
    """
    log_file = settings.run_log_file if command == "run" and not verbose else None
    configure_logging(verbose, settings.log_format, log_file=log_file, own=OWN_LOGGERS, secrets=settings.secrets())
    return log_file


def main(command: str, argv: list[str]) -> int:
    arguments = build_parser(command).parse_args(argv)
    settings = BotSettings()
    log_file = set_up_logging(command, arguments.verbose, settings)
    return run_reporting_errors(lambda: asyncio.run(_dispatch(command, arguments, settings, log_file)), logger)


async def _dispatch(
    command: str, arguments: argparse.Namespace, settings: BotSettings, log_file: Path | None = None
) -> int:
    from bot.app import open_core, serve, start_worker_process, stop_worker_process
    from bot.storage import Storage

    if command == "migrate":
        storage = await Storage.open(settings.database)
        version = await storage.schema_version()
        await storage.close()
        print(f"{settings.database}: schema version {version}")
        return 0
    if command == "feedback":
        return await _feedback(settings, arguments)
    if command == "forget":
        async with open_core(settings) as core:
            print(await core.forget(Person(arguments.platform, arguments.user)))
        return 0
    if command == "chat":
        await serve(settings, with_console=True)
        return 0
    if command == "run":
        where = "Redis (REDIS_URL)" if settings.redis_url else f"the embedded SQLite broker in {settings.state_dir}/"
        print(f"mmpp: broker: {where}; database: {settings.database}", file=sys.stderr)
        if log_file is not None:
            logger.info("mmpp run started (pid %d)", os.getpid())
            what = "library output" if arguments.no_worker else "worker and library output"
            print(f"mmpp: {what}: {log_file} (mmpp run -v shows it here)", file=sys.stderr)
        worker = None if arguments.no_worker else start_worker_process(settings, log_file)
        if not settings.discord_token.get_secret_value() and not settings.telegram_token.get_secret_value():
            print(
                "mmpp: no DISCORD_TOKEN or TELEGRAM_TOKEN set: console mode. Try:\n"
                "  /profile style:anime photo:engine/assets/sample_selfie.jpg\n"
                "(end with Ctrl-D; /help lists the commands)",
                file=sys.stderr,
            )
        try:
            await serve(settings)
        finally:
            if worker is not None:
                stop_worker_process(worker)
        return 0
    raise AssertionError(command)


async def _feedback(settings: BotSettings, arguments: argparse.Namespace) -> int:
    from bot.core.ratings import feedback_report
    from bot.storage import Storage

    storage = await Storage.open(settings.database)
    try:
        if arguments.csv:
            rows = await storage.ratings_export()
            writer = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]) if rows else ["style", "score"])
            writer.writeheader()
            writer.writerows(rows)
            return 0
        report = await feedback_report(storage)
    finally:
        await storage.close()
    if arguments.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{'style':<16}{'jobs':>6}{'pictures':>10}{'ratings':>9}{'mean':>7}  {'95% interval':<14}{'positive':>9}")
    for row in report:
        mean = f"{row['mean']:.2f}" if row["mean"] is not None else "-"
        interval = f"[{row['ci95_low']:.2f},{row['ci95_high']:.2f}]" if row["ci95_low"] is not None else "-"
        positive = f"{row['positive_share']:.0%}" if row["positive_share"] is not None else "-"
        print(
            f"{row['style']:<16}{row['jobs']:>6}{row['pictures']:>10}{row['ratings']:>9}{mean:>7}  "
            f"{interval:<14}{positive:>9}"
        )
    return 0
