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
    from collections.abc import Callable

    from engine.evaluate.feedback import FeedbackReader
    from engine.evaluate.sweep import FamilyEngine, SweepConfig
    from engine.pipeline import Engine
    from engine.settings import EngineSettings
    from mmpp.catalogue import Catalogue

USAGE_EXAMPLES = """\
examples:
  mmpp eval --selfies selfies/ --config sweep.toml --report out/ [--reference real/] [--weights tiny]
  mmpp eval --feedback var/mmpp.sqlite3 [--report out/]
  mmpp eval --feedback postgresql://mmpp@db-host/mmpp [--report out/]
  mmpp eval --feedback [--report out/]      # the bot's own database: MMPP_DATABASE_URL, else MMPP_DATABASE

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
  families = ["sd15", "flux2-klein"] # optional: each family on the same selfies, side by side
                                     # (--weights tiny: each family's tiny weights); settings a family
                                     # lacks (portrait/IP-Adapter scale on klein) are not swept there
  base_models = {flux2-klein = "black-forest-labs/FLUX.2-klein-4B"}
                                     # real weights: each family's base model (default MMPP_BASE_MODEL)

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
    # Text, not a Path: a Path folds the '//' of a postgresql:// URL into one '/'.  Given without a value
    # (const ""), the reader takes the database the bot itself is configured with.
    parser.add_argument(
        "--feedback",
        nargs="?",
        const="",
        metavar="DB",
        help="the bot's database (an SQLite file or a postgresql:// URL; without DB the bot's own, "
        "MMPP_DATABASE_URL or else MMPP_DATABASE): report its ratings",
    )
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
    from engine.settings import EngineSettings

    weights = tiny_weights_for(arguments.weights, arguments.family) or EngineSettings().weights
    config = load_sweep(arguments.config, catalogue, default_family=_tiny_family(weights))
    if config.families and arguments.family is not None:
        raise MmppError(
            ErrorCode.INVALID_REQUEST,
            f"the sweep file {arguments.config} names its families; leave --family out (--weights tiny runs "
            "each family's tiny weights)",
        )
    reference = list_images(arguments.reference, "reference") if arguments.reference is not None else None
    if arguments.report.exists() and not arguments.report.is_dir():
        raise MmppError(ErrorCode.INVALID_REQUEST, f"the report folder {arguments.report} is a file")

    from engine.hub import prefer_offline_when_unreachable

    # Before huggingface_hub is imported: without a network each Hub lookup (base model, safety
    # checker, CLIP) would otherwise retry for about half a minute before giving up.
    prefer_offline_when_unreachable()
    from engine.evaluate.report import render_index, write_results
    from engine.evaluate.sweep import TINY_LABEL, build_scorers, run_sweep
    from engine.faces import default_analyzer
    from engine.pipeline import Engine

    engines: Engine | list[FamilyEngine]
    if config.families:
        engines = _family_engines(config, weights, catalogue)
        label = ", ".join(config.families)
    else:
        engines = Engine.from_settings(weights=weights, catalogue=catalogue)
        label = engines.sources.label or engines.sources.base
    scorers = build_scorers(default_analyzer(), want_distribution=reference is not None)
    combinations = sum(len(config.combinations(family)) for family in config.families or [""])
    print(f"sweep: {len(selfies) * combinations * config.count} pictures ({len(selfies)} selfies x {combinations} "
          f"combinations x {config.count}) on {label}", file=sys.stderr)  # fmt: skip
    results = run_sweep(
        engines,
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
    for row in results["families"]:
        for setting, reason in row["not_swept"].items():
            print(f"note: {row['family']}: {setting} not swept ({reason})", file=sys.stderr)
    for failure in results["failures"]:
        print(f"note: failed: {failure['style']} ({failure['mode']}): {failure['error']}", file=sys.stderr)
    print(index)


def _tiny_family(weights: str) -> str:
    """The family ``--weights`` fixes before anything loads (a tiny profile); empty for real weights."""
    from engine.options import TINY_WEIGHTS_BY_FAMILY

    return next((family for family, tiny in TINY_WEIGHTS_BY_FAMILY.items() if tiny == weights), "")


def _family_engines(config: SweepConfig, weights: str, catalogue: Catalogue) -> list[FamilyEngine]:
    """Each family of a side-by-side sweep with the weights it will load, checked before any model loads.

    On the tiny profile (any ``--weights tiny*``) a family runs its tiny weights.  Otherwise it runs its base
    model from the file's ``base_models`` (else ``MMPP_BASE_MODEL``), whose family is read from its index now: a
    sweep that says "klein" and loads SD 1.5 would label SD's pictures as klein's.  With ``auto``, a family whose
    model cannot be found runs its own tiny weights (not SD 1.5's), with a warning.
    """
    from engine.evaluate.sweep import FamilyEngine
    from engine.models import detect_family
    from engine.options import TINY_WEIGHTS_BY_FAMILY
    from engine.settings import EngineSettings

    settings = EngineSettings()
    runs = []
    for family in config.families:
        tiny = TINY_WEIGHTS_BY_FAMILY[family]
        if weights.startswith("tiny"):
            runs.append(FamilyEngine(family, _loader(tiny, settings, catalogue)))
            continue
        base = config.base_models.get(family, settings.base_model)
        try:
            found = detect_family(base)
        except MmppError as error:
            if weights != "auto" or error.code is not ErrorCode.MODEL_UNAVAILABLE:
                raise
            logging.getLogger(__name__).warning(
                "%s: real weights unavailable (%s); the sweep runs its TINY test-sized weights", family, error.message
            )
            runs.append(FamilyEngine(family, _loader(tiny, settings, catalogue)))
            continue
        if found != family:
            raise MmppError(
                ErrorCode.INVALID_REQUEST,
                f"the sweep's family {family} would load {base}, which is family {found}; name its model in "
                f'the sweep file: base_models = {{{family} = "..."}}',
            )
        real = settings.model_copy(update={"base_model": base})
        runs.append(FamilyEngine(family, _loader("default", real, catalogue)))
    return runs


def _loader(weights: str, settings: EngineSettings, catalogue: Catalogue) -> Callable[[], Engine]:
    """A family's engine, built when its turn in the sweep comes (one model in memory at a time)."""

    def load() -> Engine:
        from engine.pipeline import Engine

        return Engine.from_settings(settings, weights=weights, catalogue=catalogue)

    return load


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
