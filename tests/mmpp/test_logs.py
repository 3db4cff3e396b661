"""Log formats and the secret filter."""

from __future__ import annotations

import json
import logging

from bot.redact import REDACTED, SecretFilter
from mmpp.logs import JsonFormatter


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
