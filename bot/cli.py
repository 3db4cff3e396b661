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
from typing import Any

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
    elif command == "variants":
        parser.description = (
            "The styles' variants on live traffic: list them with their figures, or steer them "
            "(docs/variants.md).  Actions: list [STYLE]; promote STYLE VARIANT; pause STYLE VARIANT; "
            "resume STYLE VARIANT; rollback STYLE; floor RESULTS.json (from mmpp eval) with "
            "--min-face-found-rate and/or --max-identity-distance."
        )
        parser.add_argument("action", nargs="?", default="list", help=f"one of {', '.join(VARIANT_ACTIONS)}")
        parser.add_argument("names", nargs="*", metavar="STYLE_OR_VARIANT")
        parser.add_argument("--json", action="store_true", help="print the list as JSON")
        parser.add_argument("--min-face-found-rate", type=float, metavar="SHARE", help="floor: e.g. 0.95")
        parser.add_argument("--max-identity-distance", type=float, metavar="DISTANCE", help="floor: e.g. 0.6")
    elif command == "forget":
        parser.description = "Delete everything stored about one person."
        parser.add_argument("--platform", required=True, choices=["discord", "telegram", "console"])
        parser.add_argument("--user", required=True, help="the platform's user id")
    return parser


#: What ``mmpp variants`` does, and the names each action takes.
VARIANT_ACTIONS = {
    "list": "[STYLE]", "promote": "STYLE VARIANT", "pause": "STYLE VARIANT", "resume": "STYLE VARIANT",
    "rollback": "STYLE", "floor": "RESULTS.json",
}  # fmt: skip

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
    from bot.database import redacted
    from bot.storage import Storage

    if command == "migrate":
        storage = await Storage.open(settings.database_location)
        version = await storage.schema_version()
        await storage.close()
        print(f"{redacted(settings.database_location)}: schema version {version}")
        return 0
    if command == "feedback":
        return await _feedback(settings, arguments)
    if command == "variants":
        return await _variants(settings, arguments)
    if command == "forget":
        async with open_core(settings) as core:
            print(await core.forget(Person(arguments.platform, arguments.user)))
        return 0
    if command == "chat":
        await serve(settings, with_console=True)
        return 0
    if command == "run":
        where = "Redis (REDIS_URL)" if settings.redis_url else f"the embedded SQLite broker in {settings.state_dir}/"
        database = redacted(settings.database_location)
        print(f"mmpp: broker: {where}; database: {database}", file=sys.stderr)
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

    storage = await Storage.open(settings.database_location)
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
        print(f"{row['style']:<16}{row['jobs']:>6}{row['pictures']:>10}{_figures_text(row)}")
        # A style's variants under it, once any job rendered one other than the style as written.
        if any(variant["variant"] != "base" for variant in row["variants"]) or row["promoted_variant"]:
            for variant in row["variants"]:
                marker = " (default)" if variant["variant"] == row["promoted_variant"] else ""
                name = f"  {variant['variant']}{marker}"
                print(f"{name:<16}{variant['jobs']:>6}{'':>10}{_figures_text(variant)}")
            if row["promotion"]:
                promotion = row["promotion"]
                evidence = promotion["evidence"]
                why = (
                    f"P(best) {evidence['probability_best']:.3f} over {evidence['ratings']} ratings"
                    if promotion["decided_by"] == "ratings"
                    else "by an operator"
                )
                print(f"  promoted {row['promoted_variant']} {promotion['at'][:16].replace('T', ' ')} UTC: {why}")
    return 0


def _figures_text(row: dict[str, Any]) -> str:
    mean = f"{row['mean']:.2f}" if row["mean"] is not None else "-"
    interval = f"[{row['ci95_low']:.2f},{row['ci95_high']:.2f}]" if row["ci95_low"] is not None else "-"
    positive = f"{row['positive_share']:.0%}" if row["positive_share"] is not None else "-"
    return f"{row['ratings']:>9}{mean:>7}  {interval:<14}{positive:>9}"


async def _variants(settings: BotSettings, arguments: argparse.Namespace) -> int:
    """``mmpp variants``: the operator's view of the experiments, and their three levers."""
    from bot.core.variants import Variants
    from bot.storage import Storage
    from mmpp.catalogue import load_catalogue
    from mmpp.errors import ErrorCode, MmppError

    action, names = arguments.action, list(arguments.names)
    if action not in VARIANT_ACTIONS:  # `mmpp variants anime` lists one style
        action, names = "list", [action, *names]
    wanted = VARIANT_ACTIONS[action]
    if not (len(names) == len(wanted.split()) or (action == "list" and not names)):
        raise MmppError(ErrorCode.INVALID_REQUEST, f"mmpp variants {action} takes {wanted}.")
    catalogue = load_catalogue(settings.styles_file)
    storage = await Storage.open(settings.database_location)
    try:
        variants = Variants(storage, catalogue, served_families=settings.family_queues_map())
        if action == "promote":
            promotion = await variants.promote(names[0], names[1])
            print(f"{promotion.style}: variant {promotion.variant} is now the default (promoted by an operator).")
        elif action in {"pause", "resume"}:
            await variants.pause(names[0], names[1], paused=action == "pause")
            print(f"{catalogue.get(names[0]).name}: variant {names[1]} {action}d.")
        elif action == "rollback":
            promotion = await variants.roll_back(names[0])
            print(
                f"{promotion.style}: promotion of variant {promotion.variant} rolled back; the variant is paused "
                f"(mmpp variants resume {promotion.style} {promotion.variant} serves it again)."
            )
        elif action == "floor":
            await _floor(variants, Path(names[0]), arguments.min_face_found_rate, arguments.max_identity_distance)
        else:
            await _list_variants(variants, names[0] if names else None, arguments.json)
    finally:
        await storage.close()
    return 0


async def _list_variants(variants: Any, style: str | None, as_json: bool) -> None:
    rows = await variants.status(style)
    if as_json:
        print(json.dumps([
            {"style": row.style, "variant": row.variant, "state": _state(row), "default": row.default,
             "ineligible_reason": row.ineligible_reason, "family": row.family or None,
             "unserved_reason": row.unserved_reason, "ratings": row.summary.ratings if row.summary else 0,
             "raw_mean": row.summary.raw_mean if row.summary else None,
             "adjusted_mean": row.summary.adjusted_mean if row.summary else None,
             "probability_best": row.summary.probability_best if row.summary else None}
            for row in rows
        ], indent=2))  # fmt: skip
        return
    if not rows:
        print("No style has variants.")
        return
    print(f"{'style':<16}{'variant':<18}{'state':<12}{'ratings':>8}{'mean':>7}{'adjusted':>10}{'P(best)':>9}")
    for row in rows:
        summary = row.summary
        mean = f"{summary.raw_mean:.2f}" if summary and summary.raw_mean is not None else "-"
        adjusted = f"{summary.adjusted_mean:.2f}" if summary and summary.adjusted_mean is not None else "-"
        best = f"{summary.probability_best:.2f}" if summary else "-"
        print(
            f"{row.style:<16}{row.variant:<18}{_state(row):<12}{summary.ratings if summary else 0:>8}{mean:>7}"
            f"{adjusted:>10}{best:>9}" + "".join(f"  ({why})" for why in _reasons(row))
        )


def _state(row: Any) -> str:
    """``unserved`` before the operator's states: a variant whose family this bot has no workers for is not
    served whatever else is decided about it, and ``default`` then says a promotion stands but cannot serve."""
    if row.unserved_reason:
        return "unserved"
    if row.default:
        return "default"
    if row.ineligible_reason:
        return "ineligible"
    return "paused" if row.paused else "active"


def _reasons(row: Any) -> list[str]:
    """What the table adds after a variant's figures: its family where it names one, why it is not served."""
    reasons = [f"family {row.family}"] if row.family and not row.unserved_reason else []
    return reasons + [why for why in (row.unserved_reason, row.ineligible_reason) if why]


async def _floor(
    variants: Any, results_path: Path, min_face_found_rate: float | None, max_identity_distance: float | None
) -> None:
    """Mark each variant measured in an ``mmpp eval`` sweep eligible or not against the operator's floor."""
    from mmpp.errors import ErrorCode, MmppError
    from mmpp.variant_floor import variant_figures

    if min_face_found_rate is None and max_identity_distance is None:
        raise MmppError(
            ErrorCode.INVALID_REQUEST, "mmpp variants floor needs --min-face-found-rate and/or --max-identity-distance."
        )
    for figures in variant_figures(results_path):
        if figures.style not in variants.catalogue:
            continue
        reason = figures.below(min_face_found_rate, max_identity_distance)
        await variants.storage.set_variant_ineligible(figures.style, figures.variant, reason)
        print(f"{figures.style} {figures.variant}: {'ineligible: ' + reason if reason else 'eligible'} ({figures})")
