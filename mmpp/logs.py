"""Logging set-up shared by every process: text for people, JSON lines for collectors.

It lives beside the command dispatcher because both sides use it and neither
may import the other.  JSON lines carry the job id when a log call passes
``extra={"job_id": ...}``, so one job can be followed from bot to worker.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: An error record in :data:`TEXT_FORMAT` ("2026-01-02 03:04:05,678 ERROR name: ...") or in Celery's
#: own format ("[2026-01-02 03:04:05,678: ERROR/MainProcess] ...").
_TEXT_ERROR = re.compile(r"^(?:\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} |\[[^\]]*: )(?:ERROR|CRITICAL)\b")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("job_id", "task_id", "platform", "style", "error_code"):
            if hasattr(record, key):
                entry[key] = getattr(record, key)
        if record.exc_info:
            entry["exception"] = record.exc_text or self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class TerminalFilter(logging.Filter):
    """What stays on the terminal while the log goes to a file: every error, and the warnings of ``own`` loggers."""

    def __init__(self, own: Sequence[str]) -> None:
        super().__init__()
        self.own = tuple(own)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            return True
        mine = any(record.name == name or record.name.startswith(f"{name}.") for name in self.own)
        return mine and record.levelno >= logging.WARNING


def configure_logging(
    verbose: bool = False, log_format: str = "text", *, log_file: Path | None = None, own: Sequence[str] = ()
) -> None:
    """Replace the root handlers with one stderr handler in the chosen format.

    With ``log_file`` every record from INFO up, Python's warnings included, is
    appended to that file, and the terminal keeps only the errors and the
    warnings of the ``own`` loggers (``verbose`` is then ignored): libraries'
    chatter does not come between the lines of a conversation.
    """
    formatter = JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
        if isinstance(existing, logging.FileHandler):  # an earlier call's log file
            existing.close()
    root.addHandler(handler)
    root.setLevel(logging.INFO if verbose else logging.WARNING)
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        to_file = logging.FileHandler(log_file, encoding="utf-8")
        to_file.setFormatter(formatter)
        root.addHandler(to_file)
        handler.addFilter(TerminalFilter(own))
        root.setLevel(logging.INFO)
        logging.captureWarnings(True)
    # httpx logs request URLs at INFO, and Telegram's contain the bot token.
    logging.getLogger("httpx").setLevel(logging.WARNING)


def is_error_line(line: str) -> bool:
    """Whether one line of a process's output reports an error.

    An ``error[CODE]: ...`` line (``mmpp.commandline``), or the first line of
    an ERROR or CRITICAL record in either of our formats (or Celery's own).
    """
    text = line.strip()
    if text.startswith("error[") or _TEXT_ERROR.match(text):
        return True
    if text.startswith("{"):
        try:
            entry = json.loads(text)
        except ValueError:
            return False
        return isinstance(entry, dict) and entry.get("level") in {"error", "critical"}
    return False
