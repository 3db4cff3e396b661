"""Per-person defaults (bot/core/person_settings.py): /settings parsed and checked once, orders completed by
them (an explicit option wins, the suffix goes after the prompt), /help shows them, /forget deletes them;
on a real SQLite database and a scripted queue."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.core import ChatCore, ProfileOrder
from bot.core.commands import parse_console_line
from bot.core.person_settings import MAX_SUFFIX_CHARACTERS, SettingsRequest, parse_settings_text, unquoted
from bot.storage import Storage
from mmpp.contract import GenerateRequest
from mmpp.errors import ErrorCode, MmppError
from tests.bot.conftest import ALICE, BOB, SELFIE, RecordingDelivery, ScriptedQueue, bot_settings


def plain_order(event: str, person=ALICE, **options: str) -> ProfileOrder:  # type: ignore[no-untyped-def]
    """An order naming only what is given (the conftest's ``order`` always names a style)."""
    return ProfileOrder(person, event, "chat-1", {"channel": "chat-1"}, dict(options), SELFIE)


async def settings(core: ChatCore, line: str, person=ALICE) -> str:  # type: ignore[no-untyped-def]
    """``line`` as the console reads it, through the core's /settings."""
    command = parse_console_line(line)
    assert command is not None and command.name == "settings"
    return await core.settings_command(person, command.arguments, command.options)


async def test_an_order_without_options_carries_the_defaults_to_the_job_and_the_worker(
    core: ChatCore, storage: Storage, queue: ScriptedQueue
) -> None:
    reply = await settings(core, '/settings style:Pixel-Art mode:quality count:3 suffix:"with a hat"')
    assert reply.startswith('Your defaults: style pixel-art · mode quality · 3 pictures · suffix "with a hat"')
    job, created = await core.order_profile(plain_order("event-1"))
    await core.wait_idle(timeout=5)
    assert created
    assert (job.style, job.mode, job.picture_count, job.prompt) == ("pixel-art", "quality", 3, "with a hat")
    request = GenerateRequest.from_payload(queue.submitted[job.task_id])
    assert (request.style, request.mode, request.count, request.prompt) == ("pixel-art", "quality", 3, "with a hat")
    assert queue.queues[job.task_id] == "mmpp.quality"


async def test_an_explicit_option_wins_and_the_suffix_follows_the_prompt(core: ChatCore, queue: ScriptedQueue) -> None:
    await settings(core, "/settings style:pixel-art mode:quality count:3 suffix:with a hat")
    job, _ = await core.order_profile(plain_order("event-1", style="anime", mode="fast", count="1", prompt="a pirate"))
    await core.wait_idle(timeout=5)
    assert (job.style, job.mode, job.picture_count, job.prompt) == ("anime", "fast", 1, "a pirate, with a hat")
    request = GenerateRequest.from_payload(queue.submitted[job.task_id])
    assert (request.style, request.count, request.prompt) == ("anime", 1, "a pirate, with a hat")


async def test_someone_elses_defaults_do_not_apply(core: ChatCore) -> None:
    await settings(core, "/settings style:pixel-art count:3", person=BOB)
    job, _ = await core.order_profile(plain_order("event-1", style="anime"))
    await core.wait_idle(timeout=5)
    assert (job.style, job.picture_count, job.mode) == ("anime", 1, None)


async def test_without_a_style_or_a_default_one_the_order_is_refused(core: ChatCore) -> None:
    with pytest.raises(MmppError) as refused:
        await core.order_profile(plain_order("event-1"))
    assert refused.value.code is ErrorCode.UNKNOWN_STYLE
    await settings(core, "/settings count:2")
    with pytest.raises(MmppError) as still:
        await core.check_order(ALICE, {})
    assert still.value.code is ErrorCode.UNKNOWN_STYLE
    await settings(core, "/settings style:anime")
    parsed, style = await core.check_order(ALICE, {})
    assert (style.name, parsed.count) == ("anime", 2)


async def test_changes_merge_one_default_goes_with_none_and_clear_removes_all(core: ChatCore, storage: Storage) -> None:
    await settings(core, "/settings style:anime count:2")
    await settings(core, "/settings mode:fast suffix:“in the rain”")
    stored = await core.settings_of(ALICE)
    assert stored is not None
    assert (stored.style, stored.mode, stored.picture_count) == ("anime", "fast", 2)
    assert stored.prompt_suffix == "in the rain"  # curly quotes, as phones type them, are taken off too
    await settings(core, "/settings count:none suffix:")
    stored = await core.settings_of(ALICE)
    assert stored is not None and (stored.picture_count, stored.prompt_suffix) == (None, None)
    assert (await settings(core, "/settings")).startswith("Your defaults: style anime · mode fast.")
    assert (await settings(core, "/settings CLEAR")).startswith("You have no defaults")
    assert await core.settings_of(ALICE) is None and await storage.count("person_settings") == 0
    await settings(core, "/settings style:anime")
    assert (await settings(core, "/settings style:none")).startswith("You have no defaults")
    assert await storage.count("person_settings") == 0


async def test_showing_settings_creates_nobody(core: ChatCore, storage: Storage) -> None:
    assert (await settings(core, "/settings")).startswith("You have no defaults")
    assert await storage.count("users") == 0


@pytest.mark.parametrize(
    ("line", "code", "words"),
    [
        ("/settings style:building", ErrorCode.UNKNOWN_STYLE, "There is no style called 'building'"),
        ("/settings mode:slow", ErrorCode.INVALID_REQUEST, "mode must be fast or quality"),
        ("/settings count:0", ErrorCode.INVALID_REQUEST, "count must be a number from 1 to 4"),
        ("/settings count:5", ErrorCode.INVALID_REQUEST, "count must be a number from 1 to 4"),
        ("/settings count:two", ErrorCode.INVALID_REQUEST, "count must be a number from 1 to 4"),
        ("/settings suffix:" + "a" * (MAX_SUFFIX_CHARACTERS + 1), ErrorCode.PROMPT_TOO_LONG, "the limit is 200"),
        ("/settings suffix:(hat)9", ErrorCode.INVALID_REQUEST, "Prompt weights must stay between"),
        ("/settings suffix:in the nude", ErrorCode.PROMPT_BLOCKED, "'nude'"),
        ("/settings anime", ErrorCode.INVALID_REQUEST, "I don't know 'anime' here"),
        ("/settings style:anime style:fantasy", ErrorCode.INVALID_REQUEST, "given twice"),
    ],
)
async def test_every_bad_value_is_one_line_with_its_code_and_changes_nothing(
    storage: Storage, queue: ScriptedQueue, delivery: RecordingDelivery, tmp_path: Path, line: str,
    code: ErrorCode, words: str,
) -> None:  # fmt: skip
    core = ChatCore(storage, queue, bot_settings(tmp_path, prompt_deny_list="nude"))
    await settings(core, "/settings style:anime count:2 suffix:smiling")
    with pytest.raises(MmppError) as refused:
        # With a good value beside the bad one: nothing of the line is stored.
        await settings(core, line if "count:" in line else f"{line} count:3")
    assert refused.value.code is code and words in refused.value.message
    assert "\n" not in refused.value.as_line()
    stored = await core.settings_of(ALICE)
    assert stored is not None and (stored.style, stored.picture_count, stored.prompt_suffix) == ("anime", 2, "smiling")


async def test_a_default_suffix_is_checked_again_with_the_prompt_when_ordering(
    storage: Storage, queue: ScriptedQueue, tmp_path: Path
) -> None:
    """The deny list can grow after a suffix was set: the order is refused, not sent."""
    await ChatCore(storage, queue, bot_settings(tmp_path)).settings_command(ALICE, (), {"suffix": "in a tophat"})
    stricter = ChatCore(storage, queue, bot_settings(tmp_path, prompt_deny_list="tophat"))
    with pytest.raises(MmppError) as refused:
        await stricter.order_profile(plain_order("event-1", style="anime"))
    assert refused.value.code is ErrorCode.PROMPT_BLOCKED and not queue.submitted


async def test_help_shows_the_persons_defaults(core: ChatCore) -> None:
    assert "You have no defaults" in await core.help_for(ALICE, "How to order.")
    await settings(core, "/settings style:anime mode:fast count:2 suffix:with a hat")
    text = await core.help_for(ALICE, "How to order.")
    assert 'Your defaults: style anime · mode fast · 2 pictures · suffix "with a hat"' in text
    assert "You have no defaults" in await core.help_for(BOB, "How to order.")


async def test_forget_deletes_the_settings(core: ChatCore, storage: Storage) -> None:
    await settings(core, "/settings style:anime suffix:with a hat")
    await settings(core, "/settings style:fantasy", person=BOB)
    assert await storage.count("person_settings") == 2
    await core.forget(ALICE)
    assert await core.settings_of(ALICE) is None
    bob = await storage.find_user(BOB.platform, BOB.user_id)
    assert bob is not None
    assert await storage.count("person_settings") == 1
    assert await storage.count("person_settings", "user_id = ?", (bob,)) == 1


async def test_the_storage_forgets_the_row_even_without_the_cascade(tmp_path: Path) -> None:
    storage = await Storage.open(tmp_path / "db.sqlite3")
    try:
        user = await storage.ensure_user("test", "alice")
        await storage.save_person_settings(user, style="anime", mode=None, picture_count=2, prompt_suffix=None)
        await storage._db.execute("PRAGMA foreign_keys = OFF")
        await storage.forget_user(user)
        assert await storage.count("person_settings") == 0
    finally:
        await storage.close()


async def test_a_photo_waiting_for_a_style_gets_the_other_defaults(core: ChatCore, queue: ScriptedQueue) -> None:
    await settings(core, "/settings count:2 suffix:with a hat")
    token = core.await_style(ALICE, "photo-ref", {})
    choice = core.take_style_choice(token, ALICE, "fantasy")
    job, _ = await core.order_profile(ProfileOrder(ALICE, "event-1", "chat-1", {}, choice.options, SELFIE))
    await core.wait_idle(timeout=5)
    assert (job.style, job.picture_count, job.prompt) == ("fantasy", 2, "with a hat")


def test_the_text_grammar() -> None:
    assert parse_settings_text((), {}) == SettingsRequest({}, clear=False)
    assert parse_settings_text(("clear",), {"count": "2"}) == SettingsRequest({"count": "2"}, clear=True)
    assert parse_settings_text((), {"suffix": "'with a hat'", "mode": "none"}).changes == {
        "suffix": "with a hat",
        "mode": None,
    }
    assert unquoted('"with a hat"') == "with a hat" and unquoted('"half') == '"half'
    command = parse_console_line('/settings style:anime suffix:"a (red:1.2) hat" count:2')
    assert command is not None
    assert command.options == {"style": "anime", "suffix": '"a (red:1.2) hat"', "count": "2"}


async def test_a_default_style_that_left_the_catalogue_is_named_in_the_refusal(
    core: ChatCore, storage: Storage, queue: ScriptedQueue
) -> None:
    await settings(core, "/settings style:anime count:2")
    user = await storage.find_user(ALICE.platform, ALICE.user_id)
    assert user is not None
    await storage.save_person_settings(user, style="retired-style", mode=None, picture_count=2, prompt_suffix=None)
    with pytest.raises(MmppError) as refused:
        await core.order_profile(plain_order("event-1"))
    assert refused.value.code is ErrorCode.UNKNOWN_STYLE and "default style 'retired-style'" in refused.value.message
    job, _ = await core.order_profile(plain_order("event-2", style="fantasy"))  # naming one still works
    await core.wait_idle(timeout=5)
    assert (job.style, job.picture_count) == ("fantasy", 2) and len(queue.submitted) == 1
