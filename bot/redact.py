"""Keep secrets out of logs, whatever library writes them.

The Telegram token is part of every Bot API and file URL, and HTTP libraries
put URLs into exception texts; rather than trusting every call site, a
filter on the log handlers replaces each secret in the formatted message and
traceback before anything is written.
"""

from __future__ import annotations

import logging

REDACTED = "<redacted>"


class SecretFilter(logging.Filter):
    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self.secrets = [secret for secret in secrets if secret and len(secret) >= 6]

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        message = self.redact(record.getMessage())
        record.msg, record.args = message, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        return True


def install_secret_filter(secrets: list[str]) -> SecretFilter:
    """Attach the filter to every handler of the root logger (call after logging is configured)."""
    secret_filter = SecretFilter(secrets)
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=logging.WARNING)
    for handler in root.handlers:
        handler.addFilter(secret_filter)
    return secret_filter
