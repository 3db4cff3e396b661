"""Command-line options that several engine commands share (generate, eval, bench).

Kept apart from ``engine/cli.py`` so that ``engine/evaluate/cli.py`` and the
benchmarks can use them without importing the dispatcher that imports them.
"""

from __future__ import annotations

import argparse

from mmpp.contract import MAX_PICTURES, MIN_PICTURES

WEIGHTS_CHOICES = ("auto", "default", "tiny", "tiny-sdxl")


def add_weights_argument(parser: argparse.ArgumentParser) -> None:
    """``--weights``: which weights to run; ``--profile`` is its old name, kept for one release.

    "profile" also names the chat command (``/profile``), so the option says
    what it chooses instead.
    """
    parser.add_argument(
        "--weights",
        "--profile",
        dest="weights",
        choices=WEIGHTS_CHOICES,
        default=None,
        help="weights to use: default = real weights (MMPP_BASE_MODEL); tiny / tiny-sdxl = test-sized random "
        "model; auto = real if available, else tiny (default: MMPP_WEIGHTS or auto). --profile is the old name.",
    )


def picture_count(text: str) -> int:
    """argparse type for ``--count``: the contract's bounds, refused as a usage error."""
    value = int(text)
    if not MIN_PICTURES <= value <= MAX_PICTURES:
        raise argparse.ArgumentTypeError(f"count must be {MIN_PICTURES} to {MAX_PICTURES}")
    return value
