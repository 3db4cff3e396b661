"""Parsing what people type, for every platform, in one place.

Three surfaces share one vocabulary: the console grammar
(``/profile style:anime photo:me.jpg prompt:a pirate count:2``), Telegram
captions (``anime``, ``/profile anime``, ``/profile@MmppBot anime in a hat``)
and Discord's typed options (already parsed by Discord, checked here too).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from mmpp.contract import MAX_PICTURES, MAX_SEED, MIN_PICTURES, Mode
from mmpp.errors import ErrorCode, MmppError

COMMANDS = ("profile", "styles", "history", "rate", "forget", "help", "start", "settings", "upscale")
OPTION_KEYS = ("style", "photo", "prompt", "count", "mode", "seed")
#: The keys of ``/settings`` (bot/core/person_settings.py): a person's defaults for their orders.
SETTINGS_KEYS = ("style", "mode", "count", "suffix")


def _option_split(keys: tuple[str, ...]) -> re.Pattern[str]:
    return re.compile(r"(?:^|\s+)(" + "|".join(keys) + r"):", re.IGNORECASE)


_OPTION_SPLIT = _option_split(OPTION_KEYS)
_SETTINGS_SPLIT = _option_split(SETTINGS_KEYS)
#: Longest command line we read; anything longer is refused, not truncated.
MAX_LINE_CHARACTERS = 4000

CommandError = MmppError


@dataclass(frozen=True)
class ParsedCommand:
    name: str
    options: dict[str, str] = field(default_factory=dict)
    arguments: tuple[str, ...] = ()


def _strip_controls(text: str) -> str:
    return "".join(character if character.isprintable() or character in "\n\t" else " " for character in text)


def split_options(text: str, keys: tuple[str, ...] = OPTION_KEYS) -> tuple[tuple[str, ...], dict[str, str]]:
    """``"1 2 style:anime prompt:a red hat"`` → ``(("1", "2"), {"style": "anime", "prompt": "a red hat"})``.

    A value runs until the next known ``key:``, so prompts may hold spaces
    (and colons that are not one of our keys, such as ``(red:1.2)``).  ``keys``: the command's keys
    (:data:`OPTION_KEYS` of an order, :data:`SETTINGS_KEYS` of ``/settings``).
    """
    pattern = _SETTINGS_SPLIT if keys == SETTINGS_KEYS else _OPTION_SPLIT if keys == OPTION_KEYS else None
    parts = (pattern or _option_split(keys)).split(text)
    positional = tuple(parts[0].split())
    options: dict[str, str] = {}
    for key, value in zip(parts[1::2], parts[2::2], strict=True):
        key = key.lower()
        if key in options:
            raise MmppError(ErrorCode.INVALID_REQUEST, f"The option {key}: is given twice.")
        options[key] = value.strip()
    return positional, options


def parse_console_line(line: str) -> ParsedCommand | None:
    """One console line; ``None`` for a blank line."""
    line = _strip_controls(line).strip()
    if not line:
        return None
    if len(line) > MAX_LINE_CHARACTERS:
        raise MmppError(ErrorCode.PROMPT_TOO_LONG, f"The line is longer than {MAX_LINE_CHARACTERS} characters.")
    if not line.startswith("/"):
        raise MmppError(ErrorCode.UNKNOWN_COMMAND, "Commands start with '/'; try /help.")
    head, _, rest = line[1:].partition(" ")
    name = head.lower()
    if name not in COMMANDS:
        raise MmppError(ErrorCode.UNKNOWN_COMMAND, f"There is no command /{head[:30]}; try /help.")
    positional, options = split_options(rest, keys_of(name))
    return ParsedCommand(name, options, positional)


def keys_of(command: str) -> tuple[str, ...]:
    """The ``key:`` options a command takes: ``/settings`` its own, every other command an order's."""
    return SETTINGS_KEYS if command == "settings" else OPTION_KEYS


def parse_caption(text: str | None, bot_username: str = "") -> ParsedCommand | None:
    """A Telegram caption or message text; ``None`` when it is not meant for us.

    Accepted: a bare style (``anime``), a style and a prompt (``anime in a
    red hat``), ``/profile anime``, ``/profile@ThisBot anime``, and the
    console's ``key:value`` options.  ``/command@OtherBot`` is not ours.
    """
    text = _strip_controls(text or "").strip()
    if len(text) > MAX_LINE_CHARACTERS:
        raise MmppError(ErrorCode.PROMPT_TOO_LONG, f"The text is longer than {MAX_LINE_CHARACTERS} characters.")
    if not text:
        return ParsedCommand("profile")
    if text.startswith("/"):
        head, _, rest = text[1:].partition(" ")
        name, _, addressee = head.partition("@")
        if addressee and bot_username and addressee.lower() != bot_username.lower():
            return None
        name = name.lower()
        if name not in COMMANDS:
            raise MmppError(ErrorCode.UNKNOWN_COMMAND, f"There is no command /{name[:30]}; try /help.")
        if name != "profile":
            positional, options = split_options(rest, keys_of(name))
            return ParsedCommand(name, options, positional)
        text = rest.strip()
    positional, options = split_options(text)
    if positional and "style" not in options:
        options["style"] = positional[0]
        if positional[1:] and "prompt" not in options:
            options["prompt"] = " ".join(positional[1:])
    elif positional and "prompt" not in options:
        options["prompt"] = " ".join(positional)
    return ParsedCommand("profile", options)


def photo_order(caption: str | None, bot_username: str = "", *, in_group: bool = False) -> dict[str, str] | None:
    """The profile options a photo's caption asks for; ``None`` when the photo is not an order for us.

    In a private chat every photo is for us (a bare style, a style and a prompt, or nothing,
    and then the style is asked for).  In a group people share photos with each other, so only
    a caption that is a command (``/profile anime``, ``/profile@ThisBot anime``) is for us; a
    command for another bot, or another command than /profile, is not an order either.
    """
    command = parse_caption(caption, bot_username)
    if command is None or (in_group and not (caption or "").startswith("/")):
        return None
    if command.name != "profile":
        return None
    return dict(command.options)


@dataclass(frozen=True)
class ProfileOptions:
    style: str | None
    prompt: str
    count: int
    mode: str | None
    seed: int | None


def profile_options(options: dict[str, str]) -> ProfileOptions:
    """Typed, checked profile options; the same checks for every platform."""
    count_text = options.get("count", "1")
    try:
        count = int(count_text)
    except ValueError:
        raise MmppError(
            ErrorCode.INVALID_REQUEST, f"count must be a number from {MIN_PICTURES} to {MAX_PICTURES}."
        ) from None
    if not MIN_PICTURES <= count <= MAX_PICTURES:
        raise MmppError(ErrorCode.INVALID_REQUEST, f"count must be a number from {MIN_PICTURES} to {MAX_PICTURES}.")
    mode = options.get("mode") or None
    if mode is not None:
        mode = mode.lower()
        if mode not in {item.value for item in Mode}:
            raise MmppError(ErrorCode.INVALID_REQUEST, "mode must be fast or quality.")
    seed_text = options.get("seed")
    seed = None
    if seed_text:
        try:
            seed = int(seed_text)
        except ValueError:
            raise MmppError(ErrorCode.INVALID_REQUEST, f"seed must be a whole number from 0 to {MAX_SEED}.") from None
        if not 0 <= seed <= MAX_SEED:
            raise MmppError(ErrorCode.INVALID_REQUEST, f"seed must be a whole number from 0 to {MAX_SEED}.")
    style = (options.get("style") or "").strip().lower() or None
    return ProfileOptions(style=style, prompt=options.get("prompt", "").strip(), count=count, mode=mode, seed=seed)
