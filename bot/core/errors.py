"""The chat side's error: a stable code and one line a person can act on."""

from __future__ import annotations

from engine.contracts import ErrorCode


class CoreError(Exception):
    def __init__(self, code: ErrorCode, message: str) -> None:
        self.code = code
        self.message = " ".join(str(message).split())
        super().__init__(f"{code.value}: {self.message}")

    def as_line(self) -> str:
        return f"error[{self.code.value}]: {self.message}"
