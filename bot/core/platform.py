"""What an adapter and the core exchange: who (Person), what they ordered (ProfileOrder), and how the
core answers on the adapter's platform (Delivery, implemented by each adapter)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from bot.storage import Job, StoredPicture
from mmpp.errors import ErrorCode


@dataclass(frozen=True)
class Person:
    """Someone on a platform; ``user_id`` is the platform's own id."""

    platform: str
    user_id: str
    display_name: str = ""


@dataclass(frozen=True)
class ProfileOrder:
    """A request for profile pictures, as an adapter hands it over: platform facts, no decisions.

    ``chat_id`` is where it was sent; ``server_id`` the server or group that chat belongs to,
    where the platform has one (the core decides which of the two a quota counts);
    ``photo_type`` the MIME type the platform declared for the photo, if it declared one.
    """

    requester: Person
    event_key: str
    chat_id: str
    reply_context: dict[str, Any]
    options: dict[str, str] = field(default_factory=dict)
    photo: bytes | None = None
    server_id: str | None = None
    photo_type: str | None = None


PostedCallback = Callable[[StoredPicture, str], Awaitable[None]]


class Delivery(Protocol):
    """What an adapter implements so the core can talk on its platform."""

    platform: str
    #: Seconds between two edits of a status message (platform rate limits).
    status_edit_interval: float

    async def post_status(self, job: Job, text: str) -> str | None: ...

    async def edit_status(self, job: Job, message_ref: str, text: str) -> None: ...

    async def post_pictures(
        self, job: Job, pictures: list[StoredPicture], caption: str, on_posted: PostedCallback
    ) -> None:
        """Post the pictures; call ``on_posted(picture, message_ref)`` as soon as each exists.

        Right away, before adding rating controls: people react within
        milliseconds, and a reaction on a message the core does not know yet
        would be lost.
        """

    async def post_failure(self, job: Job, code: ErrorCode, text: str) -> None: ...

    async def post_notice(self, job: Job, text: str) -> None: ...
