"""What every ``mmpp`` subcommand shares: the one-line argument errors and the exit codes.

Each subcommand used to carry its own copy of these, and an internal failure
exited with 1 from one command and 3 from another; scripts and CI that check
``$?`` need one meaning per number, so there is one table, here.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from typing import NoReturn

from mmpp.errors import INTERNAL_CODES, ErrorCode, MmppError

EXIT_OK = 0
#: Our failure (or the machine's): a bug, a timeout, a model that would not load.
EXIT_INTERNAL = 1
#: The user's input was refused: a bad option, a photo without a face, an unknown style.
EXIT_BAD_INPUT = 2
#: A benchmark ran and measured, but missed one of its targets.
EXIT_TARGET_MISSED = 3
#: Interrupted with Ctrl-C (the shell's own convention, 128 + SIGINT).
EXIT_INTERRUPTED = 130


def exit_code_for(error: MmppError) -> int:
    return EXIT_INTERNAL if error.code in INTERNAL_CODES else EXIT_BAD_INPUT


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports bad options in the project's one-line form and exit code."""

    def error(self, message: str) -> NoReturn:
        print(f"error[{ErrorCode.INVALID_REQUEST.value}]: {self.prog}: {message}", file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT)


def run_reporting_errors(body: Callable[[], int], logger: logging.Logger) -> int:
    """Run a subcommand's body and turn every failure into one line on stderr and an exit code.

    A user-caused :class:`MmppError` prints its own line; anything unexpected
    prints only its type, because an exception's text may hold paths or URLs
    with secrets; the traceback goes to the log (``-v`` shows it).
    """
    try:
        return body()
    except MmppError as error:
        print(error.as_line(), file=sys.stderr)
        return exit_code_for(error)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as error:
        logger.info("unexpected failure", exc_info=True)
        name = type(error).__name__
        print(f"error[{ErrorCode.INTERNAL.value}]: unexpected {name}; run with -v for details.", file=sys.stderr)
        return EXIT_INTERNAL
