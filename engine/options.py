"""Command-line options that several engine commands share (generate, eval, bench).

Kept apart from ``engine/cli.py`` so that ``engine/evaluate/cli.py`` and the
benchmarks can use them without importing the dispatcher that imports them.
"""

from __future__ import annotations

import argparse

from mmpp.contract import MAX_PICTURES, MIN_PICTURES
from mmpp.errors import ErrorCode, MmppError

WEIGHTS_CHOICES = ("auto", "default", "tiny", "tiny-sdxl", "tiny-klein")
#: ``--family``: which family's tiny weights ``--weights tiny`` means (real weights say their family themselves).
TINY_WEIGHTS_BY_FAMILY = {"sd15": "tiny", "sdxl": "tiny-sdxl", "flux2-klein": "tiny-klein"}


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
        help="weights to use: default = real weights (MMPP_BASE_MODEL); tiny / tiny-sdxl / tiny-klein = test-sized "
        "random model; auto = real if available, else tiny (default: MMPP_WEIGHTS or auto). --profile is the old name.",
    )
    parser.add_argument(
        "--family",
        choices=list(TINY_WEIGHTS_BY_FAMILY),
        default=None,
        help="with --weights tiny: the family of the tiny model (sd15, sdxl or flux2-klein; default sd15); "
        "real weights are detected from MMPP_BASE_MODEL",
    )


def tiny_weights_for(weights: str | None, family: str | None) -> str | None:
    """``--weights tiny --family flux2-klein`` is ``tiny-klein``; a family with other weights is refused."""
    if family is None:
        return weights
    if weights not in {"tiny", TINY_WEIGHTS_BY_FAMILY[family]}:
        raise MmppError(
            ErrorCode.INVALID_REQUEST,
            f"--family chooses the family of the tiny weights (--weights tiny); real weights ({weights or 'auto'}) "
            "tell their family themselves (MMPP_BASE_MODEL).",
        )
    return TINY_WEIGHTS_BY_FAMILY[family]


def picture_count(text: str) -> int:
    """argparse type for ``--count``: the contract's bounds, refused as a usage error."""
    value = int(text)
    if not MIN_PICTURES <= value <= MAX_PICTURES:
        raise argparse.ArgumentTypeError(f"count must be {MIN_PICTURES} to {MAX_PICTURES}")
    return value
