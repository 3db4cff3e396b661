"""Engine subcommands of ``mmpp``: generate, styles, worker, train.

``mmpp eval`` and ``mmpp bench`` do not pass through here: the dispatcher
(``mmpp/cli.py``, whose ``ENGINE_COMMANDS`` and ``BOT_COMMANDS`` list every
command once) hands them to ``engine.evaluate.cli`` and ``bench.cli`` itself.

Every failure a user can cause ends as one line ``error[CODE]: message`` on
stderr and exit status 2; a failure of ours as ``error[INTERNAL]`` and exit
status 1 (``mmpp.commandline`` holds the table).  Never a traceback: the log
(``-v``) has those.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from engine.options import add_weights_argument, picture_count, tiny_weights_for
from mmpp.commandline import OneLineParser, run_reporting_errors
from mmpp.contract import GenerateRequest, GenerateResult, Mode
from mmpp.errors import ErrorCode, MmppError

TINY_NOTE = "note: these pictures come from the tiny test-sized model (random weights); they are noise, not art."


def build_parser(command: str) -> argparse.ArgumentParser:
    parser = OneLineParser(prog=f"mmpp {command}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress and details to stderr")
    if command == "generate":
        parser.description = "Turn a selfie into profile pictures in this process and write them to --out."
        parser.add_argument("--photo", required=True, type=Path, help="the selfie (JPEG, PNG or WebP)")
        parser.add_argument("--style", required=True, help="a style name from 'mmpp styles'")
        parser.add_argument("--prompt", default="", help="who or what is in the picture (default: 'a person')")
        parser.add_argument("--mode", choices=[mode.value for mode in Mode], default=None)
        parser.add_argument("--count", type=picture_count, default=1, help="pictures to make, 1-4")
        parser.add_argument("--seed", type=int, default=None, help="seed of the first picture (others +1, +2, ...)")
        parser.add_argument("--steps", type=int, default=None, help="override the style's denoising steps")
        parser.add_argument("--guidance", type=float, default=None, help="override the style's guidance scale")
        parser.add_argument("--out", required=True, type=Path, help="folder for the pictures")
        add_weights_argument(parser)
    elif command == "worker":
        parser.description = "Run a Celery worker that serves engine.generate."
        parser.add_argument("--concurrency", type=int, default=1, help="worker processes (one per GPU)")
        parser.add_argument("--pool", choices=["prefork", "solo", "threads"], default="prefork")
        parser.add_argument(
            "--queues",
            default=None,
            help="comma-separated queues (default: MMPP_QUEUE and its .fast and .quality queues); "
            "e.g. --queues mmpp.quality for a GPU that only serves quality jobs",
        )
        parser.add_argument("--loglevel", default="INFO")
    elif command == "styles":
        parser.description = "List the style catalogue."
    elif command == "train":
        from engine.train.cli import add_arguments

        add_arguments(parser)
    return parser


def main(command: str, argv: list[str]) -> int:
    arguments = build_parser(command).parse_args(argv)
    from engine.settings import EngineSettings
    from mmpp.logs import configure_logging

    configure_logging(arguments.verbose or command == "worker", EngineSettings().log_format)
    if command in {"generate", "worker", "train"}:
        from engine.hub import prefer_offline_when_unreachable

        prefer_offline_when_unreachable()
    runners = {"generate": _generate, "styles": lambda _: _styles(), "worker": _worker, "train": _train}
    return run_reporting_errors(lambda: runners[command](arguments), logging.getLogger(__name__))


def _train(arguments: argparse.Namespace) -> int:
    from engine.train.cli import run as train_run

    return train_run(arguments)


def _read_photo(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise MmppError(ErrorCode.NOT_AN_IMAGE, f"Cannot read the photo {path}: {error.strerror}.") from None


def _generate(arguments: argparse.Namespace) -> int:
    weights = tiny_weights_for(arguments.weights, arguments.family)
    request = GenerateRequest(
        selfie=_read_photo(arguments.photo),
        style=arguments.style,
        prompt=arguments.prompt,
        mode=Mode(arguments.mode) if arguments.mode else None,
        count=arguments.count,
        seed=arguments.seed,
        steps=arguments.steps,
        guidance=arguments.guidance,
    )
    request.validate()
    from engine.faces import default_analyzer
    from mmpp.catalogue import load_catalogue

    # Refuse a bad photo or style before spending seconds on loading a model.
    catalogue = load_catalogue()
    catalogue.get(request.style)
    default_analyzer().prepare_selfie(request.selfie)  # the engine reuses this analyzer
    from engine.pipeline import Engine

    engine = Engine.from_settings(weights=weights, catalogue=catalogue)
    result = engine.generate(request)
    for path in write_pictures(result, arguments.out):
        print(path)
    if result.test_sized_model:
        print(TINY_NOTE, file=sys.stderr)
    return 0


def write_pictures(result: GenerateResult, folder: Path, prefix: str = "") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for picture in result.pictures:
        path = folder / f"{prefix}{result.style}-{result.mode}-{picture.seed}.png"
        path.write_bytes(picture.png)
        paths.append(path)
    return paths


def _styles() -> int:
    from mmpp.catalogue import load_catalogue

    catalogue = load_catalogue()
    width = max(len(style.name) for style in catalogue)
    for style in catalogue:
        lora = style.lora or "-"
        print(
            f"{style.emoji} {style.name:<{width}}  {style.display_name}: {style.description}  "
            f"[mode {style.mode.value}; style {style.style_scale:g}, portrait {style.portrait_scale:g}, "
            f"ip-adapter {style.ip_adapter_scale:g}; lora {lora}]"
        )
    return 0


def _worker(arguments: argparse.Namespace) -> int:
    from engine.celery_app import app
    from engine.settings import EngineSettings

    base = EngineSettings().queue
    queues = arguments.queues or f"{base},{base}.fast,{base}.quality"
    app.worker_main(
        [
            "worker",
            f"--loglevel={arguments.loglevel}",
            f"--pool={arguments.pool}",
            f"--concurrency={arguments.concurrency}",
            f"--queues={queues}",
            "--without-gossip",
            "--without-mingle",
        ]
    )
    return 0
