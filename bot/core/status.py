"""When the core edits a job's status message, and whether the edit carries a new live preview.

The rule is written once, here, for every platform; what differs is data: each adapter's
:class:`~bot.core.platform.EditPace` says how often its platform lets a bot edit, and what
the limit counts (one message on Discord, one chat on Telegram).  The rule:

* an edit happens when the status text changed or the worker sent a preview not shown yet,
  and never sooner than the pace allows after the previous edit (or post) counted with it;
* every edit carries the current text; it carries a preview only when that preview is new,
  and always the newest one (older ones that came while waiting are skipped);
* an edit counts when it is made, whether the platform took it or not: a refused text or
  preview is not sent again (the next change is), and after
  :data:`PREVIEW_REFUSALS_TO_STOP` refused previews in a row the job shows text only;
* status edits give way to everything else the bot sends: where the pace has a ``room`` (the
  adapter's view of the chat's flood budget) an edit waits until the chat has room for it and
  for the pictures and replies that may follow; when the platform answers "too many requests"
  in a chat (to any request, see :meth:`StatusEdits.hold`), the chat's status edits stop for as
  long as it asked and then run at a slower pace (:data:`MAX_SLOWDOWN` times at most), which
  eases back with every edit the platform takes.

Previews are best effort: nothing here waits, retries or touches the delivery of the pictures.
"""

from __future__ import annotations

import functools
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass

from bot.core.platform import CHAT_KIND, EditPace
from bot.storage import Job

#: Refused preview edits in a row after which a job's status shows text only.
PREVIEW_REFUSALS_TO_STOP = 2
#: A chat whose last edit is this old is forgotten (every pace is far shorter).
FORGET_AFTER_SECONDS = 600.0
#: How much slower than its pace a chat's status edits may get after the platform said "too many requests".
MAX_SLOWDOWN = 8.0
_PRUNE_ABOVE = 1024

PaceKey = tuple[str, str, str]
#: A chat as the platform's flood limits count it: ``(platform, the job's chat_id)``.
ChatKey = tuple[str, str]


@dataclass(frozen=True)
class StatusEdit:
    """One edit the adapter is asked to make: the text, and a preview not shown before (or ``None``)."""

    text: str
    preview: bytes | None = None


def _digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=16).digest()


class StatusEdits:
    """The pace of every status message the core follows, shared by all jobs (one per core).

    ``clock`` is a monotonic clock in seconds (tests pass a controllable one).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._last: dict[PaceKey, float] = {}
        self._posted: dict[int, str] = {}
        self._held_until: dict[ChatKey, float] = {}
        self._slowdown: dict[ChatKey, float] = {}

    @staticmethod
    def key(job: Job, pace: EditPace) -> PaceKey:
        """What the platform's limit counts: the job's own status message, or the job's chat."""
        if pace.per == "chat":
            return job.platform, "chat", job.chat_id
        return job.platform, "job", str(job.id)

    @staticmethod
    def interval(job: Job, pace: EditPace) -> float:
        kind = job.reply_context.get(CHAT_KIND) if isinstance(job.reply_context, dict) else None
        return pace.interval(kind if isinstance(kind, str) else None)

    def posted(self, job: Job, pace: EditPace, text: str) -> None:
        """The status message was just posted with ``text``: it counts as an edit, and is what is shown."""
        self.mark(self.key(job, pace))
        self._posted[job.id] = text

    def follow(self, job: Job, pace: EditPace) -> StatusPacer:
        """The pacer of one job's status message, for as long as the job is followed."""
        shown = self._posted.pop(job.id, None)
        room = functools.partial(pace.room, job) if pace.room is not None else None
        chat = (job.platform, job.chat_id)
        return StatusPacer(self, self.key(job, pace), chat, self.interval(job, pace), shown, room)

    def hold(self, platform: str, chat_id: str, seconds: float) -> None:
        """The platform refused a request in this chat as too many ("retry after ``seconds``").

        Whatever was refused (a picture, a reply or an edit), the status edits are what can wait:
        none in this chat for ``seconds``, and then at half the speed of before (down to
        :data:`MAX_SLOWDOWN` times slower), so the chat's budget goes to what people asked for.
        """
        chat = (platform, chat_id)
        now = self._clock()
        self._held_until[chat] = max(self._held_until.get(chat, now), now + max(0.0, seconds))
        self._slowdown[chat] = min(MAX_SLOWDOWN, 2 * self._slowdown.get(chat, 1.0))
        if len(self._held_until) > _PRUNE_ABOVE:
            for old in [name for name, until in self._held_until.items() if now - until > FORGET_AFTER_SECONDS]:
                del self._held_until[old]
                self._slowdown.pop(old, None)

    def held(self, chat: ChatKey) -> bool:
        """Whether the platform's last "too many requests" in this chat still holds its status edits."""
        until = self._held_until.get(chat)
        return until is not None and self._clock() < until

    def slowdown(self, chat: ChatKey) -> float:
        """How many times slower than its pace the chat's status edits go now (1: at its pace)."""
        return self._slowdown.get(chat, 1.0)

    def eased(self, chat: ChatKey) -> None:
        """The platform took an edit in this chat: the slowdown after a refusal eases by half."""
        slowdown = self._slowdown.get(chat)
        if slowdown is None:
            return
        if slowdown / 2 <= 1.0:
            del self._slowdown[chat]
        else:
            self._slowdown[chat] = slowdown / 2

    def due(self, key: PaceKey, interval: float) -> bool:
        last = self._last.get(key)
        return last is None or self._clock() - last >= interval

    def mark(self, key: PaceKey) -> None:
        now = self._clock()
        self._last[key] = now
        if len(self._last) > _PRUNE_ABOVE:
            for old in [name for name, at in self._last.items() if now - at > FORGET_AFTER_SECONDS]:
                del self._last[old]

    def forget(self, key: PaceKey) -> None:
        if key[1] == "job":
            self._last.pop(key, None)


class StatusPacer:
    """One job's status message: what it shows, and whether the next poll should edit it."""

    def __init__(
        self, edits: StatusEdits, key: PaceKey, chat: ChatKey, interval: float, shown_text: str | None,
        room: Callable[[], bool] | None = None,
    ) -> None:  # fmt: skip
        self._edits = edits
        self._key = key
        self._chat = chat
        self.interval = interval
        self._room = room
        self._shown_text = shown_text
        self._shown_preview: bytes | None = None
        self._refused_previews = 0
        self.previews_on = True

    def next_edit(self, text: str, preview: bytes | None) -> StatusEdit | None:
        """The edit to make now, or ``None``: nothing changed, or the pace, a hold after the platform's
        "too many requests", or the chat's flood budget does not allow one yet (it comes later)."""
        fresh = preview if preview and self.previews_on and _digest(preview) != self._shown_preview else None
        if text == self._shown_text and fresh is None:
            return None
        if self._edits.held(self._chat):
            return None
        if not self._edits.due(self._key, self.interval * self._edits.slowdown(self._chat)):
            return None
        if self._room is not None and not self._room():
            return None
        self._edits.mark(self._key)
        self._shown_text = text
        if fresh is not None:
            self._shown_preview = _digest(fresh)
        return StatusEdit(text, fresh)

    def outcome(self, edit: StatusEdit, made: bool) -> None:
        """Whether the platform took ``edit``; previews it keeps refusing are no longer sent for this job."""
        if made:
            self._edits.eased(self._chat)
        if edit.preview is None:
            return
        self._refused_previews = 0 if made else self._refused_previews + 1
        if self._refused_previews >= PREVIEW_REFUSALS_TO_STOP:
            self.previews_on = False

    def close(self) -> None:
        """The job is no longer followed (delivered, or the follower stopped)."""
        self._edits.forget(self._key)
