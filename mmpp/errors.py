"""The project's one error: a stable code and one line a person can act on.

Both sides raise it and both sides report it, so it lives in the torch-free
kernel: a worker's ``NO_FACE`` reaches a chat user and a terminal user with the
same code and the same words, and tests match on the code alone.
"""

from __future__ import annotations

import enum


class ErrorCode(enum.StrEnum):
    """Stable error codes; users, logs and tests all match on these strings."""

    NOT_AN_IMAGE = "NOT_AN_IMAGE"
    IMAGE_TOO_LARGE = "IMAGE_TOO_LARGE"
    IMAGE_TOO_SMALL = "IMAGE_TOO_SMALL"
    NO_FACE = "NO_FACE"
    MULTIPLE_FACES = "MULTIPLE_FACES"
    UNKNOWN_STYLE = "UNKNOWN_STYLE"
    PROMPT_TOO_LONG = "PROMPT_TOO_LONG"
    INVALID_REQUEST = "INVALID_REQUEST"
    MODEL_UNAVAILABLE = "MODEL_UNAVAILABLE"
    TIMEOUT = "TIMEOUT"
    INTERNAL = "INTERNAL"
    # Raised by the chat side only; listed here so every code lives in one enum.
    OUTPUT_BLOCKED = "OUTPUT_BLOCKED"
    QUOTA_EXCEEDED = "QUOTA_EXCEEDED"
    UNKNOWN_COMMAND = "UNKNOWN_COMMAND"
    NOT_FOUND = "NOT_FOUND"
    PROMPT_BLOCKED = "PROMPT_BLOCKED"
    NOT_ALLOWED = "NOT_ALLOWED"
    #: Someone pressed a control on another person's picture that only its requester may use (upscale).
    NOT_YOURS = "NOT_YOURS"
    #: The platform would not take the outcome of a job (no permission to post there, retries exhausted).
    DELIVERY_FAILED = "DELIVERY_FAILED"
    #: A job reached a worker of another engine family than it needs (a variant's ``family``): the bot's
    #: ``MMPP_FAMILY_QUEUES`` or a worker's ``--queues`` sends it to the wrong workers.  Refused, not rendered.
    WRONG_FAMILY = "WRONG_FAMILY"


#: Codes that mean "our fault, or the machine's", not the user's: they exit with
#: :data:`EXIT_INTERNAL` rather than :data:`EXIT_BAD_INPUT`.
INTERNAL_CODES = frozenset({ErrorCode.INTERNAL, ErrorCode.TIMEOUT, ErrorCode.DELIVERY_FAILED, ErrorCode.WRONG_FAMILY})


class MmppError(Exception):
    """A failure that has a stable code and a one-line message fit for a user.

    Raised anywhere in the engine or the chat core; the task, the chat core and
    the command line turn it into a result, a reply or an ``error[CODE]:
    message`` line, never a traceback.  The message is folded onto one line
    here, once, because every place that shows it shows exactly one line.
    """

    def __init__(self, code: ErrorCode, message: str) -> None:
        one_line = " ".join(str(message).split())
        super().__init__(f"{code.value}: {one_line}")
        self.code = code
        self.message = one_line

    def as_line(self) -> str:
        return f"error[{self.code.value}]: {self.message}"
