"""``mmpp eval``: score a parameter sweep, or summarise the bot's ratings, into a report folder.

Bad input (a missing folder, a sweep-file field out of range, a database
that is not the bot's) ends as one line ``error[CODE]: message`` and exit
status 2, before any model loads; failures of ours as ``error[INTERNAL]``
and exit status 1, as everywhere in ``mmpp``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from engine.options import add_weights_argument, tiny_weights_for
from mmpp.commandline import EXIT_BAD_INPUT, EXIT_OK, OneLineParser, run_reporting_errors
from mmpp.errors import ErrorCode, MmppError

if TYPE_CHECKING:
    from engine.evaluate.feedback import FeedbackReader

USAGE_EXAMPLES = """\
examples:
  mmpp eval --selfies selfies/ --config sweep.toml --report out/ [--reference real/] [--weights tiny]
  mmpp eval --feedback var/mmpp.sqlite3 [--report out/]

sweep.toml:
  styles = ["anime", "watercolor"]   # required
  style_scale = [0.5, 1.0]           # optional lists (omitted: each style's own value)
  portrait_scale = [0.4]
  ip_adapter_scale = [0.6]
  modes = ["fast"]                   # omitted: each style's default mode
  seeds = [1, 2]                     # default [0]
  steps = 4                          # or {fast = 4, quality = 20}; omitted: style default
  count = 1                          # pictures per seed and selfie (1-4)
  prompt = ""                        # the subject, as a user would type it

environment:
  MMPP_CLIP_MODEL         CLIP folder or Hub id for the CLIP score (default openai/clip-vit-large-patch14;
                          the local cache first, the Hub only when it is reachable and HF_HUB_OFFLINE is unset)
  MMPP_INCEPTION_WEIGHTS  local pt_inception-2015-12-05-6726825d.pth for FID/KID (never downloaded)
"""


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="mmpp eval",
        description="Generate a parameter sweep and score it (identity, CLIP, FID/KID, speed), "
        "or summarise the bot's ratings; write an HTML/JSON/CSV report.",
        epilog=USAGE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress and details to stderr")
    parser.add_argument(
        "--selfies", type=Path, metavar="DIR", help="folder of selfies (JPEG, PNG, WebP) to run the sweep on"
    )
    parser.add_argument("--config", type=Path, metavar="SWEEP.toml", help="the sweep file (TOML, see below)")
    parser.add_argument("--reference", type=Path, metavar="DIR", help="folder of real images for FID/KID")
    parser.add_argument("--feedback", type=Path, metavar="DB", help="the bot's SQLite database: report its ratings")
    parser.add_argument("--report", type=Path, metavar="OUT_DIR", help="folder for index.html, results.*, feedback.*")
    add_weights_argument(parser)
    return parser


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    """Parse and check which options go together; argparse exits with status 2 on misuse."""
    parser = build_parser()
    arguments = parser.parse_args(argv)
    if arguments.selfies is None and arguments.feedback is None:
        parser.error("give --selfies DIR --config SWEEP.toml --report OUT_DIR, or --feedback DB")
    if arguments.selfies is not None and (arguments.config is None or arguments.report is None):
        parser.error("--selfies needs --config SWEEP.toml and --report OUT_DIR")
    if arguments.selfies is None and (arguments.config is not None or arguments.reference is not None):
        parser.error("--config and --reference go with --selfies")
    return arguments


def main(argv: list[str], *, read_feedback_rows: FeedbackReader | None = None) -> int:
    """``read_feedback_rows`` reads the bot's database for ``--feedback`` (the dispatcher passes the bot's)."""
    try:
        arguments = parse_arguments(argv)
    except SystemExit as stop:  # --help, or a one-line usage error already printed
        return stop.code if isinstance(stop.code, int) else EXIT_BAD_INPUT
    from engine.settings import EngineSettings
    from mmpp.logs import configure_logging

    configure_logging(arguments.verbose, EngineSettings().log_format)

    def body() -> int:
        if arguments.selfies is not None:
            _sweep(arguments)
        if arguments.feedback is not None:
            _feedback(arguments, read_feedback_rows)
        return EXIT_OK

    return run_reporting_errors(body, logging.getLogger(__name__))


def _sweep(arguments: argparse.Namespace) -> None:
    from engine.evaluate.sweep import list_images, load_sweep
    from mmpp.catalogue import load_catalogue

    # Everything the user typed is checked before a model loads.
    catalogue = load_catalogue()
    selfies = list_images(arguments.selfies, "selfies")
    config = load_sweep(arguments.config, catalogue)
    reference = list_images(arguments.reference, "reference") if arguments.reference is not None else None
    if arguments.report.exists() and not arguments.report.is_dir():
        raise MmppError(ErrorCode.INVALID_REQUEST, f"the report folder {arguments.report} is a file")

    from engine.hub import prefer_offline_when_unreachable

    # Before huggingface_hub is imported: without a network each Hub lookup (base model, safety
    # checker, CLIP) would otherwise retry for about half a minute before giving up.
    prefer_offline_when_unreachable()
    from engine.evaluate.report import render_index, write_results
    from engine.evaluate.sweep import TINY_LABEL, build_scorers, run_sweep
    from engine.pipeline import Engine

    engine = Engine.from_settings(weights=tiny_weights_for(arguments.weights, arguments.family), catalogue=catalogue)
    scorers = build_scorers(engine.face_analyzer, want_distribution=reference is not None)
    total = len(selfies) * len(config.combinations()) * config.count
    print(f"sweep: {total} pictures ({len(selfies)} selfies x {len(config.combinations())} combinations "
          f"x {config.count}) on {engine.sources.label or engine.sources.base}", file=sys.stderr)  # fmt: skip
    results = run_sweep(
        engine,
        selfies,
        config,
        arguments.report,
        scorers,
        reference_files=reference,
        on_progress=lambda line: print(f"sweep: {line}", file=sys.stderr),
    )
    write_results(results, arguments.report)
    index = render_index(arguments.report)
    for key, entry in results["metrics"].items():
        if not entry["available"]:
            print(f"note: {key}: {entry['detail']}", file=sys.stderr)
    if results["test_sized_model"]:
        print(f"note: {TINY_LABEL}.", file=sys.stderr)
    for failure in results["failures"]:
        print(f"note: failed: {failure['style']} ({failure['mode']}): {failure['error']}", file=sys.stderr)
    print(index)


def _feedback(arguments: argparse.Namespace, read_rows: FeedbackReader | None) -> None:
    """The bot's ratings: the rows through ``read_rows`` (the SQL is the bot's, in ``bot/storage.py``, and the
    engine never imports the bot, so ``mmpp/cli.py`` hands the reader over), the figures from ``mmpp.feedback``."""
    from engine.evaluate.feedback import format_table, read_feedback, write_feedback

    if read_rows is None:
        raise MmppError(ErrorCode.INTERNAL, "reading the bot's database needs the mmpp command: run 'mmpp eval'")
    feedback = read_feedback(arguments.feedback, read_rows)
    print(format_table(feedback))
    if arguments.report is not None:
        from engine.evaluate.report import render_index

        write_feedback(feedback, arguments.report)
        print(render_index(arguments.report))
