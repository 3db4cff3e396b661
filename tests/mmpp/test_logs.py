"""Log formats and the secret filter."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import pytest

from mmpp.logs import REDACTED, JsonFormatter, SecretFilter, configure_logging, is_error_line


def test_json_lines_carry_the_job_id() -> None:
    record = logging.LogRecord("mmpp.test", logging.INFO, __file__, 1, "job %s done", ("7",), None)
    record.job_id = "7"
    entry = json.loads(JsonFormatter().format(record))
    assert entry["message"] == "job 7 done" and entry["job_id"] == "7" and entry["level"] == "info"


def test_the_secret_filter_redacts_messages_and_tracebacks() -> None:
    token = "123456:SECRET-token-value"
    secret_filter = SecretFilter([token, ""])
    try:
        raise RuntimeError(f"GET https://api.telegram.org/bot{token}/getMe failed")
    except RuntimeError as error:
        record = logging.LogRecord(
            "x", logging.ERROR, __file__, 1, "url %s", (f"/bot{token}/x",), (RuntimeError, error, error.__traceback__)
        )
    secret_filter.filter(record)
    assert token not in record.getMessage() and REDACTED in record.getMessage()
    assert token not in record.exc_text and REDACTED in record.exc_text


def test_with_a_log_file_the_terminal_keeps_errors_and_our_warnings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], restored_logging: None
) -> None:
    log_file = tmp_path / "log" / "run.log"
    configure_logging(False, "text", log_file=log_file, own=("bot", "mmpp"))
    logging.getLogger("bot.core.jobs").info("job 1 submitted")
    logging.getLogger("bot.core.jobs").warning("job 2 is slow")
    logging.getLogger("discord.gateway").warning("gateway hiccup")
    logging.getLogger("discord.gateway").error("gateway gone")
    logging.getLogger("botany").warning("not ours despite the prefix")
    warnings.warn("a library's notice", UserWarning, stacklevel=1)
    terminal = capsys.readouterr().err
    log = log_file.read_text(encoding="utf-8")
    everything = ("job 1 submitted", "job 2 is slow", "gateway hiccup", "gateway gone", "not ours", "notice")
    for text in everything:
        assert text in log, text
    assert "job 2 is slow" in terminal and "gateway gone" in terminal
    for text in ("job 1 submitted", "gateway hiccup", "not ours", "a library's notice"):
        assert text not in terminal, text


def test_error_lines_are_told_from_the_rest_of_a_process_output() -> None:
    record = logging.LogRecord("celery.worker.consumer", logging.ERROR, __file__, 1, "Cannot connect", None, None)
    errors = [
        "error[INTERNAL]: unexpected ValueError; run with -v for details.",
        "2026-12-01 22:12:27,053 ERROR celery.worker.consumer.consumer: consumer: Cannot connect to redis://x",
        "2026-12-01 22:12:27,053 CRITICAL engine.tasks: the GPU is gone",
        "[2026-12-01 22:12:27,053: ERROR/MainProcess] consumer: Cannot connect",
        JsonFormatter().format(record),
    ]
    others = [
        "2026-12-01 22:12:27,053 WARNING engine.safety: NSFW check unavailable",
        " -------------- celery@vm v5.7.0 (collider)",
        "  raise ValueError('ERROR in the middle')",
        '{"not": "a log record"',
        JsonFormatter().format(logging.LogRecord("x", logging.WARNING, __file__, 1, "careful", None, None)),
    ]
    assert all(is_error_line(line) for line in errors)
    assert not any(is_error_line(line) for line in others)


def test_warnings_reach_the_log_even_after_an_earlier_capture_was_undone(
    tmp_path: Path, restored_logging: None
) -> None:
    """``logging.captureWarnings(True)`` is a no-op when it thinks it is on; a ``catch_warnings`` block that ended
    since (pytest wraps every test in one, libraries use them) has put the plain printer back meanwhile."""
    with warnings.catch_warnings():
        logging.captureWarnings(True)
    log_file = tmp_path / "run.log"
    configure_logging(False, "text", log_file=log_file, own=("bot", "mmpp"))
    warnings.warn("a notice after the undone capture", UserWarning, stacklevel=1)
    assert "a notice after the undone capture" in log_file.read_text(encoding="utf-8")
