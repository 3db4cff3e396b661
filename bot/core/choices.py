"""Orders waiting for a choice: a photo sent without a style, kept until its sender picks one.

Bounded: at most ``limit`` wait at once and each for ``max_age`` at most; the oldest is
dropped first, and a dropped choice only means the person sends the photo again.  Keyed by a
short random token, because a button's data is small (Telegram allows 64 bytes) and a
platform's file reference is longer.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bot.core.platform import Person
from mmpp.errors import ErrorCode, MmppError

#: How many choices may wait at once, and for how long.
PENDING_LIMIT = 1000
PENDING_MAX_AGE_SECONDS = 24 * 3600.0


@dataclass(frozen=True)
class PendingChoice:
    owner: Person
    photo: Any  # what the adapter needs to fetch the photo later (on Telegram: file id, size, type)
    options: dict[str, str]
    created: float


class PendingChoices:
    def __init__(
        self,
        limit: int = PENDING_LIMIT,
        max_age: float = PENDING_MAX_AGE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.max_age = max_age
        self._clock = clock
        self._waiting: OrderedDict[str, PendingChoice] = OrderedDict()

    def __len__(self) -> int:
        return len(self._waiting)

    def put(self, owner: Person, photo: Any, options: dict[str, str]) -> str:
        """Keep the photo until its owner picks a style; returns the token the buttons carry."""
        self._drop_expired()
        token = secrets.token_urlsafe(6)
        while token in self._waiting:
            token = secrets.token_urlsafe(6)
        self._waiting[token] = PendingChoice(owner, photo, dict(options), self._clock())
        while len(self._waiting) > self.limit:
            self._waiting.popitem(last=False)
        return token

    def take(self, token: str, chooser: Person) -> PendingChoice:
        """The waiting photo, removed; only the person who sent it may choose for it."""
        self._drop_expired()
        choice = self._waiting.get(token)
        if choice is None:
            raise MmppError(ErrorCode.NOT_FOUND, "That photo is no longer waiting; please send it again.")
        if (choice.owner.platform, choice.owner.user_id) != (chooser.platform, chooser.user_id):
            raise MmppError(ErrorCode.NOT_ALLOWED, "Only the person who sent the photo can pick its style.")
        del self._waiting[token]
        return choice

    def _drop_expired(self) -> None:
        deadline = self._clock() - self.max_age
        while self._waiting:
            token, oldest = next(iter(self._waiting.items()))
            if oldest.created > deadline:
                break
            del self._waiting[token]
