"""Who may ask for what: the deny and admin lists, the prompt filter, and the quotas (per person and per chat)."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from bot.core.platform import Person
from bot.settings import BotSettings
from bot.storage import JobLimits, QuotaRefused, Storage
from mmpp.errors import ErrorCode, MmppError


def parse_people(text: str) -> set[tuple[str, str]]:
    """``"discord:1,telegram:2"`` → ``{("discord", "1"), ("telegram", "2")}``."""
    people = set()
    for item in text.split(","):
        platform, _, user_id = item.strip().partition(":")
        if platform and user_id:
            people.add((platform.strip().lower(), user_id.strip()))
    return people


def quota_chat(chat_id: str, server_id: str | None) -> str:
    """The chat a per-chat quota counts: the whole server or group where the platform has one.

    On Discord that is the server (every channel of it shares one quota) or, in direct
    messages, the DM channel; on Telegram every chat stands alone.
    """
    return server_id or chat_id


class PromptFilter:
    """Refuses prompts containing configured words or phrases (whole words, any case).

    Whole words, so that a deny-listed "ass" does not refuse "glasses"; the
    prompt is normalised (case, accents folded, punctuation as spaces, spelled
    out letters joined) so that "N.U.D.E" is caught along with the plain word.
    """

    def __init__(self, phrases: list[str]) -> None:
        cleaned = sorted({" ".join(self.normalise(phrase).split()) for phrase in phrases if phrase.strip()})
        cleaned = [phrase for phrase in cleaned if phrase]
        self._pattern = (
            re.compile(r"(?<![\w])(" + "|".join(re.escape(phrase) for phrase in cleaned) + r")(?![\w])")
            if cleaned
            else None
        )

    @staticmethod
    def normalise(text: str) -> str:
        folded = unicodedata.normalize("NFKD", text.casefold())
        letters = "".join(character for character in folded if not unicodedata.combining(character))
        return " ".join("".join(ch if ch.isalnum() else " " for ch in letters).split())

    def blocked(self, prompt: str) -> str | None:
        if self._pattern is None or not prompt:
            return None
        normalised = self.normalise(prompt)
        match = self._pattern.search(normalised) or self._pattern.search(self._join_spelled_out(normalised))
        return match.group(1) if match else None

    @staticmethod
    def _join_spelled_out(text: str) -> str:
        """``"a portrait n u d e"`` → ``"a portrait nude"``: runs of single letters become one word."""
        words: list[str] = []
        run: list[str] = []
        for token in [*text.split(), ""]:
            if len(token) == 1:
                run.append(token)
                continue
            if run:
                words.append("".join(run) if len(run) > 1 else run[0])
                run = []
            if token:
                words.append(token)
        return " ".join(words)

    @classmethod
    def from_settings(cls, settings: BotSettings) -> PromptFilter:
        phrases = [item for item in settings.prompt_deny_list.split(",")]
        if settings.prompt_deny_file is not None:
            phrases += settings.prompt_deny_file.read_text(encoding="utf-8").splitlines()
        return cls(phrases)


def _until_midnight(now: datetime, day_start: datetime) -> str:
    minutes = max(1, int((day_start + timedelta(days=1) - now).total_seconds() // 60))
    return f"in {minutes // 60} h {minutes % 60} min"


class Moderation:
    def __init__(self, storage: Storage, settings: BotSettings, clock: Callable[[], datetime]) -> None:
        self.storage = storage
        self.settings = settings
        self._clock = clock
        self.admins = parse_people(settings.admins)
        self.denied = parse_people(settings.denied_users)
        self.prompt_filter = PromptFilter.from_settings(settings)

    def is_admin(self, person: Person) -> bool:
        return (person.platform, person.user_id) in self.admins

    def check_allowed(self, person: Person) -> None:
        if (person.platform, person.user_id) in self.denied:
            raise MmppError(ErrorCode.NOT_ALLOWED, "You are not allowed to use this bot here.")

    def check_prompt(self, prompt: str) -> None:
        blocked = self.prompt_filter.blocked(prompt)
        if blocked:
            raise MmppError(ErrorCode.PROMPT_BLOCKED, f"The prompt contains '{blocked}', which is not allowed here.")

    def limits(self, person: Person) -> JobLimits | None:
        """The quotas an order of ``person`` must fit (admins: none), for the storage to check in the transaction
        that writes the job, so that bot processes sharing the database cannot both take the last place."""
        if self.is_admin(person):
            return None
        settings = self.settings
        day_start = self._day_start(self._clock())
        return JobLimits(
            settings.max_pending_jobs, settings.daily_picture_quota, settings.chat_daily_picture_quota, day_start
        )

    async def check_quotas(self, person: Person, user_id: int, chat_id: str, count: int) -> None:
        """The person's pending jobs and daily pictures, then the chat's daily pictures; admins have none.

        A read before the order is worked out (its variant), to refuse early; what holds is the same check
        again where the job is written (:meth:`limits`)."""
        limits = self.limits(person)
        if limits is None:
            return
        pending = await self.storage.pending_jobs(user_id)
        if pending >= limits.max_pending:
            raise self.refusal(QuotaRefused("pending", pending))
        used = await self.storage.pictures_requested_since(user_id, limits.day_start)
        if used + count > limits.daily_pictures:
            raise self.refusal(QuotaRefused("daily", used))
        used = await self.storage.pictures_requested_in_chat_since(person.platform, chat_id, limits.day_start)
        if used + count > limits.chat_daily_pictures:
            raise self.refusal(QuotaRefused("chat_daily", used))

    def refusal(self, refused: QuotaRefused) -> MmppError:
        """The one line a person is told for a quota the order did not fit."""
        now = self._clock()
        until = _until_midnight(now, self._day_start(now))
        if refused.limit == "pending":
            pending = refused.used
            return MmppError(
                ErrorCode.QUOTA_EXCEEDED,
                f"You already have {pending} job{'s' if pending != 1 else ''} in progress; wait until they are done.",
            )
        if refused.limit == "daily":
            quota = self.settings.daily_picture_quota
            return MmppError(
                ErrorCode.QUOTA_EXCEEDED,
                f"You have used {refused.used} of your {quota} pictures for today; the quota resets at 00:00 UTC "
                f"({until}).",
            )
        return MmppError(
            ErrorCode.QUOTA_EXCEEDED,
            f"This chat has used its {self.settings.chat_daily_picture_quota} pictures for today; the quota resets "
            f"at 00:00 UTC ({until}).",
        )

    def _day_start(self, now: datetime) -> datetime:
        return datetime(now.year, now.month, now.day, tzinfo=UTC)
