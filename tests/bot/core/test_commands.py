"""Parsing what people type: the console grammar and Telegram captions."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.core import parse_caption, parse_console_line, photo_order
from bot.core.commands import MAX_LINE_CHARACTERS, profile_options
from mmpp.errors import ErrorCode, MmppError


def test_console_profile_line_with_every_option() -> None:
    command = parse_console_line(
        "/profile style:anime photo:/tmp/me.jpg prompt:a pirate with a (red hat)1.3 count:2 mode:quality seed:7"
    )
    assert command is not None and command.name == "profile"
    assert command.options == {
        "style": "anime", "photo": "/tmp/me.jpg", "prompt": "a pirate with a (red hat)1.3",
        "count": "2", "mode": "quality", "seed": "7",
    }  # fmt: skip
    options = profile_options(command.options)
    assert (options.style, options.count, options.mode, options.seed) == ("anime", 2, "quality", 7)


def test_console_positional_arguments_and_blank_lines() -> None:
    rate = parse_console_line("/rate 3 1 5")
    assert rate is not None and rate.arguments == ("3", "1", "5")
    assert parse_console_line("   \n") is None


@pytest.mark.parametrize(
    ("line", "code"),
    [
        ("/dance", ErrorCode.UNKNOWN_COMMAND),
        ("hello", ErrorCode.UNKNOWN_COMMAND),
        ("/profile style:a style:b", ErrorCode.INVALID_REQUEST),
        ("/profile " + "x" * (MAX_LINE_CHARACTERS + 1), ErrorCode.PROMPT_TOO_LONG),
    ],
)
def test_console_errors(line: str, code: ErrorCode) -> None:
    with pytest.raises(MmppError) as raised:
        parse_console_line(line)
    assert raised.value.code is code


@pytest.mark.parametrize(
    ("caption", "style", "prompt"),
    [
        ("anime", "anime", ""),
        ("Anime in a red hat", "Anime", "in a red hat"),
        ("/profile anime", "anime", ""),
        ("/profile@MmppBot pixel-art", "pixel-art", ""),
        ("/profile style:watercolor prompt:smiling", "watercolor", "smiling"),
        ("アニメ", "アニメ", ""),
    ],
)
def test_telegram_captions(caption: str, style: str, prompt: str) -> None:
    command = parse_caption(caption, "MmppBot")
    assert command is not None and command.name == "profile"
    assert command.options.get("style") == style
    assert command.options.get("prompt", "") == prompt


def test_captions_for_other_bots_and_empty_captions() -> None:
    assert parse_caption("/profile@OtherBot anime", "MmppBot") is None
    empty = parse_caption(None, "MmppBot")
    assert empty is not None and empty.name == "profile" and "style" not in empty.options
    assert parse_caption("/styles", "MmppBot").name == "styles"
    with pytest.raises(MmppError) as raised:
        parse_caption("/dance", "MmppBot")
    assert raised.value.code is ErrorCode.UNKNOWN_COMMAND


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_console_parser_either_parses_or_raises_a_coded_error(text: str) -> None:
    try:
        command = parse_console_line(text)
    except MmppError as error:
        assert error.code in {ErrorCode.UNKNOWN_COMMAND, ErrorCode.INVALID_REQUEST, ErrorCode.PROMPT_TOO_LONG}
        assert "\n" not in error.message
        return
    if command is not None:
        assert command.name and all("\x00" not in value for value in command.options.values())


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300), st.sampled_from(["", "MmppBot"]))
def test_caption_parser_either_parses_or_raises_a_coded_error(text: str, bot_name: str) -> None:
    try:
        command = parse_caption(text, bot_name)
    except MmppError as error:
        assert error.code in {ErrorCode.UNKNOWN_COMMAND, ErrorCode.INVALID_REQUEST, ErrorCode.PROMPT_TOO_LONG}
        return
    if command is not None and command.name == "profile":
        try:
            profile_options(command.options)
        except MmppError as error:
            assert error.code is ErrorCode.INVALID_REQUEST


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(["anime", "pixel-art", "headshot"]),
    st.lists(st.text(alphabet=st.characters(blacklist_categories=("C", "Z")), min_size=1, max_size=12), max_size=8),
)
def test_a_caption_style_followed_by_any_prompt_keeps_both(style: str, words: list[str]) -> None:
    prompt = " ".join(words)
    if any(f"{key}:" in prompt.lower() for key in ("style", "photo", "prompt", "count", "mode", "seed")):
        return
    command = parse_caption(f"{style} {prompt}", "MmppBot")
    assert command is not None
    assert command.options["style"] == style
    assert command.options.get("prompt", "") == prompt


@pytest.mark.parametrize(
    ("caption", "in_group", "options"),
    [
        ("anime", False, {"style": "anime"}),
        (None, False, {}),  # no caption in a private chat: the style is asked for
        ("anime", True, None),  # people share photos in groups: only a command is for us
        (None, True, None),
        ("/profile anime", True, {"style": "anime"}),
        ("/profile@MmppBot anime", True, {"style": "anime"}),
        ("/profile", True, {}),
        ("/profile@OtherBot anime", True, None),
        ("/profile@OtherBot anime", False, None),
        ("/styles", False, None),  # another command under a photo is no order
    ],
)
def test_which_photos_are_orders(caption: str | None, in_group: bool, options: dict[str, str] | None) -> None:
    assert photo_order(caption, "MmppBot", in_group=in_group) == options


def test_a_bad_caption_is_an_error_even_in_a_group() -> None:
    with pytest.raises(MmppError) as raised:
        photo_order("/dance", "MmppBot", in_group=True)
    assert raised.value.code is ErrorCode.UNKNOWN_COMMAND
