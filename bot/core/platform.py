"""What an adapter and the core exchange: who (Person), what they ordered (ProfileOrder), and how the
core answers on the adapter's platform (Delivery, implemented by each adapter)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

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

#: The key of a job's ``reply_context`` under which an adapter names the kind of chat (Telegram's
#: ``private``, ``group``...), where its platform's edit limits depend on it (see :class:`EditPace`).
CHAT_KIND = "chat_kind"


@dataclass(frozen=True)
class EditPace:
    """How often a platform lets a bot edit status messages: data an adapter gives, the rule is the core's.

    At least ``seconds`` pass between two edits counted together, ``per`` one status message
    (``"message"``: Discord limits edits per message) or per chat (``"chat"``: Telegram limits
    what a bot sends to a chat, edits included, so every job in one chat shares the pace).
    ``by_chat_kind`` gives other intervals for some kinds of chat, named as the adapter names
    them in the job's reply context under :data:`CHAT_KIND`; a job without one gets ``seconds``.
    ``room``, where the platform counts what a bot sends to a chat, asks the adapter whether the
    job's chat has room for an edit right now with enough left over for pictures and replies; the
    core then skips the edit (and makes it later) rather than let it take what they need.
    """

    seconds: float
    per: Literal["message", "chat"] = "message"
    by_chat_kind: Mapping[str, float] = field(default_factory=dict)
    room: Callable[[Job], bool] | None = field(default=None, compare=False)

    def interval(self, chat_kind: str | None) -> float:
        return self.by_chat_kind.get(chat_kind, self.seconds) if chat_kind else self.seconds


class DeliveryRefused(Exception):  # noqa: N818 - a refusal, not an error of ours
    """The platform refused a delivery for good: no permission to post there, an unknown chat, a request it will
    never take.  Sending the same again cannot succeed (and Discord counts every refused request towards a
    ban), so an adapter raises this instead of its library's error and the core stops at once."""


@runtime_checkable
class DirectMessages(Protocol):
    """What an adapter whose platform lets a bot write to someone in private implements (Discord's DMs)."""

    async def post_direct(self, job: Job, code: ErrorCode, text: str) -> None:
        """Tell the job's requester, in private, how the job ended; raise if the platform refused."""


@runtime_checkable
class FindsPosted(Protocol):
    """What an adapter implements whose platform lets a bot read back what it posted (Discord's channel history).

    The core asks it about a picture in doubt (:attr:`StoredPicture.in_doubt`: its post began, no message was
    recorded) before posting it again: a process killed between the platform's answer and the record would
    otherwise post the picture twice.  Platforms without a way to read a chat back (Telegram's bots cannot list
    a chat's messages) do not implement it, and their pictures in doubt are posted again: at least once.
    """

    async def find_posted(self, job: Job, pictures: list[StoredPicture]) -> dict[int, str]:
        """``{picture id: message reference}`` for those of ``pictures`` (all in doubt) the platform shows as
        posted; the others, or all where it refuses to show, are posted again.  One bounded look, no retries."""


@runtime_checkable
class Shards(Protocol):
    """What an adapter implements whose platform splits its chats between bot processes (Discord's shards).

    Facts only; the rule (which process follows and delivers a job) is the core's, in
    :meth:`bot.core.jobs.Jobs.may_deliver`, with a claim in the database so that never two do.
    """

    @property
    def claimant(self) -> str:
        """This process's stable name among those sharing the database (e.g. its shards): a restarted process
        with the same shards takes its own claims back at once.  Two live processes must never share one."""

    def shard_of(self, job: Job) -> int:
        """The shard the job's chat belongs to (what it was ordered through)."""

    def owns_shard(self, shard: int) -> bool:
        """Whether this process is connected for ``shard``."""

    def replies_through_channel(self, job: Job) -> bool:
        """Whether the job's reply no longer goes through what its order came with (Discord: the interaction's
        token expired), so any process may post it in the channel."""


class Delivery(Protocol):
    """What an adapter implements so the core can talk on its platform."""

    platform: str
    #: How often the platform lets the core edit a status message (see :mod:`bot.core.status`).
    status_edit_pace: EditPace

    async def post_status(self, job: Job, text: str) -> str | None: ...

    async def edit_status(self, job: Job, message_ref: str, text: str, preview: bytes | None = None) -> None:
        """Show ``text`` in the status message; with ``preview`` (a small JPEG), show it too, replacing the last one.

        Without a preview the one shown stays.  The core calls this at its pace and never
        repeats a call: make one attempt (no retries, no waiting out a rate limit) and raise
        if it failed; the core logs it and carries on with the job.
        """

    async def post_pictures(
        self, job: Job, pictures: list[StoredPicture], caption: str, on_posted: PostedCallback
    ) -> None:
        """Post the pictures; call ``on_posted(picture, message_ref)`` as soon as each exists.

        Right away, before adding rating controls: people react within
        milliseconds, and a reaction on a message the core does not know yet
        would be lost.  A picture whose ``message_ref`` is set was posted by an
        earlier attempt: never post it again (all are given, so that the caption
        and the controls stay where they belong).  Raise :class:`DeliveryRefused`
        for a refusal that retrying cannot change; anything else is retried.
        """

    async def post_failure(self, job: Job, code: ErrorCode, text: str) -> None: ...

    async def post_notice(self, job: Job, text: str) -> None: ...
