"""``mmpp`` subcommand dispatch; each side parses its own options."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mmpp.feedback import FeedbackRows

#: Every ``mmpp`` command exactly once, with the help line ``mmpp --help`` shows.  The engine side's:
#: ``bench`` and ``eval`` are routed here (``_bench``, ``_eval``), the rest go to ``engine.cli``.
ENGINE_COMMANDS = {
    "generate": "write profile pictures for a photo, in this process",
    "styles": "list the style catalogue",
    "worker": "run a Celery generation worker",
    "bench": "measure the engine or the chat side (mmpp bench engine --help, mmpp bench bots --help)",
    "eval": "score a parameter sweep or the bot's ratings into a report (mmpp eval --help)",
    "train": "train a portrait or style LoRA on a folder of pictures (mmpp train --help)",
}
#: The chat side's commands, all run by ``bot.cli``.
BOT_COMMANDS = {
    "run": "start a worker and the adapters whose tokens are set (the console when none is)",
    "chat": "the console adapter alone (needs a running worker)",
    "migrate": "apply the database migrations",
    "feedback": "ratings per style (--csv exports the raw ratings)",
    "variants": "the styles' variants on live traffic: list, promote, pause, resume, rollback, floor",
    "forget": "delete everything about one person (--platform P --user ID)",
}


def usage() -> str:
    lines = ["usage: mmpp COMMAND [options]", "", "commands:"]
    lines += [f"  {name:<10} {text}" for name, text in {**BOT_COMMANDS, **ENGINE_COMMANDS}.items()]
    lines += ["", "mmpp COMMAND --help shows a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command == "bench":
        return _bench(rest)
    if command == "eval":
        return _eval(rest)
    if command in ENGINE_COMMANDS:
        from engine.cli import main as engine_main

        return engine_main(command, rest)
    if command in BOT_COMMANDS:
        from bot.cli import main as bot_main

        return bot_main(command, rest)
    print(f"error[UNKNOWN_COMMAND]: 'mmpp {command[:40]}' is not a command; try 'mmpp --help'.", file=sys.stderr)
    return 2


#: Where a source checkout has its top-level folders, when this file is ``<checkout>/mmpp/cli.py``.
CHECKOUT = Path(__file__).resolve().parent.parent


def _bench(argv: list[str]) -> int:
    """``mmpp bench``: the benchmarks are tools of the checkout, not of the installed product (bench/__init__.py).

    An editable install maps ``bot``, ``engine`` and ``mmpp`` only, so the
    checkout this ``mmpp`` sits in goes on ``sys.path`` (first, so that its
    ``bench`` and ``tests`` win over any installed namesakes), for this
    subcommand alone.
    """
    if not (CHECKOUT / "bench" / "cli.py").is_file():
        print(
            "error[INVALID_REQUEST]: mmpp bench runs from a source checkout (git clone; pip install -e .); "
            f"this mmpp is installed without one ({CHECKOUT} has no bench/).",
            file=sys.stderr,
        )
        return 2
    if str(CHECKOUT) not in sys.path:
        sys.path.insert(0, str(CHECKOUT))
    from bench.cli import main as bench_main

    return bench_main(argv)


def _eval(argv: list[str]) -> int:
    """``mmpp eval``: the engine's evaluation, handed the bot's reader for ``--feedback DB``.

    The engine may not import the bot, and the SQL that reads the bot's database lives only in
    ``bot/storage.py`` (read-only there); this dispatcher is the one module that knows both sides,
    so it passes that reader in, imported only when a report of the ratings is asked for.
    """
    from engine.evaluate.cli import main as eval_main

    def read_feedback_rows(location: str) -> FeedbackRows:
        """``location`` as given to ``--feedback``; "" (the option without a value) is the bot's own database,
        from the same settings ``mmpp run`` reads (``MMPP_DATABASE_URL``, else the file ``MMPP_DATABASE``)."""
        from bot.storage import read_feedback_rows as read

        if not location:
            from bot.settings import BotSettings

            return read(BotSettings().database_location)
        return read(location)

    return eval_main(argv, read_feedback_rows=read_feedback_rows)


if __name__ == "__main__":
    raise SystemExit(main())
