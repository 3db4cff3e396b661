"""``mmpp bench BENCHMARK [options]``: picks the benchmark and hands it its own options."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable
from typing import Any

from mmpp.commandline import EXIT_BAD_INPUT, EXIT_OK

#: Each benchmark's module (its ``main(options)``) and what it measures.
BENCHMARKS = {
    "engine": ("bench.engine", "what the engine costs on top of a plain diffusers call"),
    "bots": ("bench.bots", "how the chat side holds up under many people at once"),
    "soak": ("bench.soak", "whether a burst of large photos can fill a small noeviction Redis"),
    "feedback": ("bench.feedback", "whether adaptive variant assignment beats an A/B test (a simulation)"),
}


def usage() -> str:
    lines = ["usage: mmpp bench BENCHMARK [options]", "", "benchmarks:"]
    lines += [f"  {name:<8} {text}" for name, (_, text) in BENCHMARKS.items()]
    lines += ["", "mmpp bench BENCHMARK --help shows a benchmark's options."]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    """``argv``: what follows ``mmpp bench``; returns the exit status."""
    if argv and argv[0] in {"-h", "--help", "help"}:
        print(usage())
        return EXIT_OK
    if not argv or argv[0] not in BENCHMARKS:
        what = f"'{argv[0][:40]}' is not a benchmark" if argv else "no benchmark named"
        print(f"error[INVALID_REQUEST]: mmpp bench: {what}; choose one of: {', '.join(BENCHMARKS)}.", file=sys.stderr)
        return EXIT_BAD_INPUT
    module = importlib.import_module(BENCHMARKS[argv[0]][0])
    return int(module.main(argv[1:]))


def at_least(low: float, kind: type[int] | type[float]) -> Callable[[str], Any]:
    """An option type: a number of ``kind`` no smaller than ``low``, refused in argparse's words otherwise."""

    def parse(text: str) -> Any:
        value = kind(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, not {text}")
        return value

    return parse


def parse_options(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace | int:
    """``parser.parse_args(argv)``, or the exit status where argparse would exit (``--help``, a refused option).

    Returning the status instead of raising ``SystemExit`` lets a benchmark's
    ``main`` be called from tests and from ``mmpp`` alike.
    """
    try:
        return parser.parse_args(argv)
    except SystemExit as stop:
        return stop.code if isinstance(stop.code, int) else EXIT_BAD_INPUT if stop.code else EXIT_OK
