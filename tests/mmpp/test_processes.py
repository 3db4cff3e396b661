"""A child that ignores SIGTERM is still stopped; one that honours it exits cleanly, not killed."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from mmpp.processes import stop_process

_WAIT_FOR_SIGNAL = "import signal, sys, time\n{handler}\nprint('ready', flush=True)\ntime.sleep(60)\n"


def _child(handler: str) -> subprocess.Popen[bytes]:
    process = subprocess.Popen([sys.executable, "-c", _WAIT_FOR_SIGNAL.format(handler=handler)], stdout=subprocess.PIPE)
    assert process.stdout is not None and process.stdout.readline() == b"ready\n"
    return process


def test_a_child_that_honours_sigterm_exits_on_it() -> None:
    process = _child("signal.signal(signal.SIGTERM, lambda *_: sys.exit(3))")
    assert stop_process(process, grace_seconds=20) == 3


def test_a_child_that_ignores_sigterm_is_killed_after_the_grace() -> None:
    process = _child("signal.signal(signal.SIGTERM, signal.SIG_IGN)")
    started = time.monotonic()
    assert stop_process(process, grace_seconds=0.5) == -signal.SIGKILL
    assert time.monotonic() - started < 10


def test_a_finished_child_is_left_alone() -> None:
    process = subprocess.Popen([sys.executable, "-c", "raise SystemExit(5)"])
    process.wait()
    assert stop_process(process, grace_seconds=1) == 5
