"""Per-person defaults (``/settings``): a person's default style, mode, picture count and prompt suffix.

Decided here once for every platform: what a value may be (the same checks as an order's option, and
a suffix passes the same prompt checks and moderation as a prompt), what ``/settings`` typed as text
means (console and Telegram share the grammar of ``/profile``'s options), and how an order is
completed by them (:meth:`PersonalDefaults.order_options`: an option the order names always wins, the
suffix is appended to the prompt).  The values are checked again when an order uses them, because the
catalogue or the deny list may have changed since they were set.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from bot.core import texts
from bot.core.commands import profile_options
from bot.core.moderation import Moderation
from bot.core.platform import Person
from bot.storage import PersonSettings, Storage
from mmpp.catalogue import Catalogue
from mmpp.errors import ErrorCode, MmppError
from mmpp.prompts import check_prompt_weights, clean_prompt

#: The longest prompt suffix: it is added to every prompt, which must stay within MAX_PROMPT_CHARACTERS
#: with the person's own words, so it gets well under half of it.
MAX_SUFFIX_CHARACTERS = 200
#: What ``/settings clear`` is typed as (one word, no ``key:``).
CLEAR_WORD = "clear"
#: A value that removes one default (``/settings suffix:none``); an empty value (``suffix:``) does too.
NO_VALUE = "none"
_QUOTES = {'"': '"', "'": "'", "“": "”", "‘": "’", "«": "»"}


@dataclass(frozen=True)
class SettingsRequest:
    """What one ``/settings`` asks for: the defaults to change (``None``: remove that one), and whether to
    clear them all first.  Neither: show them."""

    changes: Mapping[str, str | None]
    clear: bool = False


def unquoted(value: str) -> str:
    """``"with a hat"`` → ``with a hat``: people quote a value with spaces, phones turn the quotes curly."""
    value = value.strip()
    if len(value) >= 2 and _QUOTES.get(value[0]) == value[-1]:
        return value[1:-1].strip()
    return value


def parse_settings_text(arguments: tuple[str, ...], options: Mapping[str, str]) -> SettingsRequest:
    """``/settings style:anime mode:fast count:2 suffix:"with a hat"``, ``/settings clear``, ``/settings``.

    ``arguments`` and ``options`` as :func:`bot.core.commands.split_options` split them with
    :data:`SETTINGS_KEYS`; a word that is neither ``clear`` nor a ``key:`` is refused with the usage.
    """
    clear = [word.lower() for word in arguments] == [CLEAR_WORD]
    if arguments and not clear:
        words = " ".join(arguments)[:40]
        raise MmppError(ErrorCode.INVALID_REQUEST, f"I don't know '{words}' here. {texts.SETTINGS_USAGE}")
    changes: dict[str, str | None] = {}
    for key, raw in options.items():
        value = unquoted(raw)
        changes[key] = None if not value or value.lower() == NO_VALUE else value
    return SettingsRequest(changes, clear)


def with_suffix(prompt: str, suffix: str | None) -> str:
    """The order's prompt with the person's suffix after it (the suffix alone when the order had none)."""
    if not suffix:
        return prompt
    return f"{prompt}, {suffix}" if prompt.strip() else suffix


class PersonalDefaults:
    """Reads, checks, stores and applies a person's defaults; the SQL stays in :mod:`bot.storage`."""

    def __init__(self, storage: Storage, catalogue: Catalogue, moderation: Moderation) -> None:
        self.storage = storage
        self.catalogue = catalogue
        self.moderation = moderation

    async def of(self, person: Person) -> PersonSettings | None:
        """The person's defaults; ``None`` when they have none (a person never seen is not created)."""
        return await self.storage.person_settings_of(person.platform, person.user_id)

    def check_suffix(self, suffix: str) -> str:
        """The suffix, cleaned, if a prompt could carry it: bounded, readable weights, nothing the filter refuses."""
        cleaned = clean_prompt(suffix)
        if len(cleaned) > MAX_SUFFIX_CHARACTERS:
            raise MmppError(
                ErrorCode.PROMPT_TOO_LONG,
                f"The suffix has {len(cleaned)} characters; the limit is {MAX_SUFFIX_CHARACTERS}.",
            )
        check_prompt_weights(cleaned)
        self.moderation.check_prompt(cleaned)
        return cleaned

    def checked(self, key: str, value: str) -> str | int:
        """One default, checked as the same option of an order is (and stored in its canonical form)."""
        if key == "style":
            return self.catalogue.get(value).name
        if key == "mode":
            mode = profile_options({"mode": value}).mode
            assert mode is not None  # a non-empty value is a mode or refused
            return mode
        if key == "count":
            return profile_options({"count": value}).count
        if key == "suffix":
            return self.check_suffix(value)
        raise MmppError(ErrorCode.INVALID_REQUEST, f"There is no setting {key[:30]}. {texts.SETTINGS_USAGE}")

    async def change(self, person: Person, request: SettingsRequest) -> str:
        """Apply one ``/settings``: clear, change, or only show; the reply.  Every value is checked before
        anything is stored, so a refused one leaves the defaults as they were."""
        self.moderation.check_allowed(person)
        values = {key: None if value is None else self.checked(key, value) for key, value in request.changes.items()}
        if not request.clear and not values:
            return texts.settings_text(await self.of(person))
        user_id = await self.storage.ensure_user(person.platform, person.user_id, person.display_name)
        if request.clear:
            await self.storage.clear_person_settings(user_id)
        before = None if request.clear else await self.storage.person_settings(user_id)
        merged = {
            "style": before.style if before else None,
            "mode": before.mode if before else None,
            "count": before.picture_count if before else None,
            "suffix": before.prompt_suffix if before else None,
            **values,
        }
        if all(value is None for value in merged.values()):
            await self.storage.clear_person_settings(user_id)
            return texts.settings_text(None)
        stored = await self.storage.save_person_settings(
            user_id,
            style=_text_or_none(merged["style"]),
            mode=_text_or_none(merged["mode"]),
            picture_count=int(merged["count"]) if merged["count"] is not None else None,
            prompt_suffix=_text_or_none(merged["suffix"]),
        )
        return texts.settings_text(stored)

    async def order_options(self, person: Person, options: Mapping[str, str]) -> dict[str, str]:
        """The order's options completed by the person's defaults: a style, mode or count the order names
        wins; the suffix goes after the prompt.  An order of someone without defaults comes back as it was."""
        merged = dict(options)
        settings = await self.of(person)
        if settings is None:
            return merged
        if not merged.get("style") and settings.style:
            if settings.style not in self.catalogue.names:  # the catalogue changed since it was set
                raise MmppError(
                    ErrorCode.UNKNOWN_STYLE,
                    f"Your default style '{settings.style}' is no longer offered; name a style, or set another "
                    f"with /settings style:NAME ({', '.join(self.catalogue.names)}).",
                )
            merged["style"] = settings.style
        if not merged.get("mode") and settings.mode:
            merged["mode"] = settings.mode
        if not merged.get("count") and settings.picture_count:
            merged["count"] = str(settings.picture_count)
        if settings.prompt_suffix:
            merged["prompt"] = with_suffix(merged.get("prompt", "").strip(), settings.prompt_suffix)
        return merged


def _text_or_none(value: str | int | None) -> str | None:
    return None if value is None else str(value)
