"""Stopping a child process politely first, and for certain after a grace period."""

from __future__ import annotations

import subprocess


def stop_process(process: subprocess.Popen[bytes], grace_seconds: float) -> int:
    """SIGTERM, then SIGKILL once ``grace_seconds`` pass; the exit status.

    Why both: a Celery worker or a Redis server given SIGTERM finishes what it holds and exits
    cleanly, which is what keeps jobs from being lost; one that hangs must still never keep
    ``make run`` or a benchmark from ending.
    """
    if process.poll() is not None:
        return process.returncode
    process.terminate()
    try:
        return process.wait(timeout=grace_seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()
