"""Logging set-up shared by every process: text for people, JSON lines for collectors, no secrets.

It lives beside the command dispatcher because both sides use it and neither
may import the other.  JSON lines carry the job id when a log call passes
``extra={"job_id": ...}``, so one job can be followed from bot to worker.

The Telegram token is part of every Bot API and file URL, and HTTP libraries
put URLs into log arguments and exception texts; rather than trusting every
call site, a :class:`SecretFilter` sits on every handler (not on a logger:
a logger's filters never see the records its children propagate) and
rewrites each record before any formatter or file sees it.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: An error record in :data:`TEXT_FORMAT` ("2026-01-02 03:04:05,678 ERROR name: ...") or in Celery's
#: own format ("[2026-01-02 03:04:05,678: ERROR/MainProcess] ...").
_TEXT_ERROR = re.compile(r"^(?:\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} |\[[^\]]*: )(?:ERROR|CRITICAL)\b")


REDACTED = "<redacted>"
#: Shorter strings are not treated as secrets: replacing them would garble ordinary text.
MIN_SECRET_LENGTH = 6


def secret_forms(secret: str) -> list[str]:
    """The ways a secret can appear in a log line: as is, percent-encoded (in a URL), and a
    Telegram token's part after the colon alone (the bot id before it is public)."""
    forms = [secret, quote(secret, safe="")]
    _, colon, after = secret.partition(":")
    if colon:
        forms.append(after)
    return [form for form in forms if len(form) >= MIN_SECRET_LENGTH]


class SecretFilter(logging.Filter):
    """Replaces every form of the secrets in a record's message, arguments, traceback and stack."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets: list[str] = []
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        for secret in secrets:
            for form in secret_forms(secret or ""):
                if form not in self.secrets:
                    self.secrets.append(form)
        # The longest first, so that a token is replaced whole and not around its shorter part.
        self.secrets.sort(key=len, reverse=True)

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed log call must still be logged, and redacted
            message = f"{record.msg!s} {record.args!r}"
        record.msg, record.args = self.redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        return True


def all_handlers() -> list[logging.Handler]:
    """Every handler on the root logger and on any logger a library created, each once."""
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    handlers: list[logging.Handler] = []
    for logger in loggers:
        for handler in getattr(logger, "handlers", ()):  # PlaceHolder entries have none
            if handler not in handlers:
                handlers.append(handler)
    return handlers


def install_secret_filter(secrets: Iterable[str]) -> None:
    """Make every handler there is redact ``secrets`` (again callable: secrets add up, filters do not pile up)."""
    secrets = list(secrets)
    for handler in all_handlers():
        existing = next((item for item in handler.filters if isinstance(item, SecretFilter)), None)
        if existing is None:
            handler.addFilter(SecretFilter(secrets))
        else:
            existing.add(secrets)


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
    verbose: bool = False,
    log_format: str = "text",
    *,
    log_file: Path | None = None,
    own: Sequence[str] = (),
    secrets: Iterable[str] = (),
) -> None:
    """Replace the root handlers with one stderr handler in the chosen format.

    Python's warnings become log records.  With ``log_file`` every record from
    INFO up is appended to that file, and the terminal keeps only the errors and the
    warnings of the ``own`` loggers (``verbose`` is then ignored): libraries'
    chatter does not come between the lines of a conversation.  Every handler,
    the file's included, redacts ``secrets`` from the first record on.
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
    # Python's warnings go through the handlers too: printed straight to stderr they would bypass the redaction.
    # Off, then on: captureWarnings(True) does nothing when it thinks it is already on, even if something
    # (a warnings.catch_warnings block that has ended, a library) has put another showwarning in place since.
    logging.captureWarnings(False)
    logging.captureWarnings(True)
    # httpx logs request URLs at INFO, and Telegram's contain the bot token: kept out twice over.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    install_secret_filter(secrets)


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
