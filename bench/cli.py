"""``mmpp bench SIDE``: picks the benchmark; each parses its own options."""

from __future__ import annotations

import sys

from mmpp.commandline import EXIT_BAD_INPUT

SIDES = ("engine", "bots")


def main(argv: list[str]) -> int:
    side = argv[0] if argv else ""
    if side == "engine":
        from bench.engine import main as engine_main

        return engine_main(argv)
    if side == "bots":
        from bench.bots import main as bots_main

        return bots_main(argv)
    print(f"error[INVALID_REQUEST]: mmpp bench: name what to measure: {' or '.join(SIDES)}.", file=sys.stderr)
    return EXIT_BAD_INPUT
