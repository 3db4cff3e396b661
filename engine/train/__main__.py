"""``python -m engine.train ...``: the same command as ``mmpp train ...``.

It exists for ``accelerate launch -m engine.train ...``, which starts one such process
per GPU (and per machine); accelerate's environment variables then tell each process
its place, and the training code needs nothing else.
"""

from __future__ import annotations

import sys


def main() -> int:
    from engine.cli import main as engine_main

    return engine_main("train", sys.argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
