"""/settings on Telegram end to end: the real python-telegram-bot against the loopback Bot API, the real core and
database, a scripted queue in place of the worker (the job's row and the request sent are what is checked).

Set as text or with the keyboard of a bare /settings (its presses change only their owner's defaults and edit
the message); a photo without a caption is painted with the defaults instead of asking for a style; an option in
the caption wins; /help shows them; bad values are one line with their code; /forget deletes them."""

from __future__ import annotations

import re
from pathlib import Path

from bot.core import ChatCore, Person
from bot.storage import PersonSettings
from bot.telegram_app import SETTINGS_PATTERN, settings_keyboard
from mmpp.catalogue import load_catalogue
from mmpp.contract import GenerateRequest
from tests.bot.telegram_app.conftest import ALICE, BOB, TOKEN, running_bot, texts_sent
from tests.conftest import SAMPLE_SELFIE
from tests.fakes.telegram_api import Call, FakeTelegram

#: Alice as the core knows her (her Telegram user id).
ALICE_IN_CORE = Person("telegram", str(ALICE.id))
DEFAULTS = 'Your defaults: style pixel-art · mode quality · 3 pictures · suffix "with a hat".'


async def reply_to(fake: FakeTelegram, chat: object, user: object, text: str, expected: str) -> Call:
    start = len(fake.calls())
    await fake.send_message(chat, user, text)  # type: ignore[arg-type]
    return await fake.wait_for(
        lambda call: call.method == "sendMessage" and expected in str(call.params.get("text", "")), start=start
    )


def buttons(message: Call) -> dict[str, str]:
    """The keyboard of a sent or edited message: callback data → label."""
    rows = message.params["reply_markup"]["inline_keyboard"]
    return {button["callback_data"]: button["text"] for row in rows for button in row}


async def test_defaults_set_as_text_paint_a_photo_without_a_caption(tmp_path: Path) -> None:
    async with FakeTelegram(token=TOKEN) as fake, running_bot(fake, tmp_path) as bot:
        await reply_to(
            fake, None, ALICE, '/settings style:pixel-art mode:quality count:3 suffix:"with a hat"', DEFAULTS
        )
        await fake.send_photo(None, ALICE, SAMPLE_SELFIE.read_bytes())  # no caption: no style question
        await fake.wait_for("sendMediaGroup", timeout=30)
        await bot.core.wait_idle(timeout=30)
        (job,) = await bot.storage.recent_jobs(1)
        assert (job.style, job.mode, job.picture_count, job.prompt) == ("pixel-art", "quality", 3, "with a hat")
        request = GenerateRequest.from_payload(bot.queue.submitted[job.task_id])
        assert (request.style, request.mode, request.count, request.prompt) == (
            "pixel-art", "quality", 3, "with a hat",
        )  # fmt: skip
        assert "Which style?" not in texts_sent(fake)

        await fake.send_photo(None, ALICE, SAMPLE_SELFIE.read_bytes(), caption="anime in a boat count:1")
        await fake.wait_for("sendPhoto", timeout=30)
        await bot.core.wait_idle(timeout=30)
        latest = (await bot.storage.recent_jobs(1))[0]
        assert (latest.style, latest.mode, latest.picture_count, latest.prompt) == (
            "anime", "quality", 1, "in a boat, with a hat",
        )  # fmt: skip

        help_text = await reply_to(fake, None, ALICE, "/help", "I turn a selfie")
        assert DEFAULTS in help_text.params["text"]

        for line, code in [
            ("/settings count:9", "(INVALID_REQUEST)"),
            ("/settings style:building", "(UNKNOWN_STYLE)"),
            ("/settings mode:slow", "(INVALID_REQUEST)"),
            ("/settings suffix:(hat)9", "(INVALID_REQUEST)"),
        ]:
            refused = await reply_to(fake, None, ALICE, line, code)
            assert refused.params["text"].startswith("⚠️ ") and "\n" not in refused.params["text"]
        stored = await bot.core.settings_of(ALICE_IN_CORE)
        assert stored is not None and (stored.style, stored.picture_count) == ("pixel-art", 3)  # unchanged

        await reply_to(fake, None, ALICE, "/forget", "deleted everything")
        assert await bot.storage.count("person_settings") == 0
        await reply_to(fake, None, ALICE, "/settings", "You have no defaults")
        await fake.send_photo(None, ALICE, SAMPLE_SELFIE.read_bytes())
        await fake.wait_for(lambda call: call.method == "sendMessage" and call.params["text"] == "Which style?")


async def test_the_keyboard_changes_only_its_owners_defaults_and_edits_the_message(tmp_path: Path) -> None:
    async with FakeTelegram(token=TOKEN) as fake, running_bot(fake, tmp_path) as bot:
        group = fake.group()
        shown = await reply_to(fake, group, ALICE, "/settings", "You have no defaults")
        offered = buttons(shown)
        assert f"set:{ALICE.id}:style:anime" in offered and f"set:{ALICE.id}:count:4" in offered
        assert all(len(data.encode()) <= 64 and re.match(SETTINGS_PATTERN, data) for data in offered)

        query = await fake.press_button(shown.result, ALICE, f"set:{ALICE.id}:mode:fast")
        edited = await fake.wait_for("editMessageText")
        assert fake.callback_answers[query]["text"].startswith("Your defaults: mode fast.")
        assert edited.params["text"].startswith("Your defaults: mode fast.")
        assert buttons(edited)[f"set:{ALICE.id}:mode:fast"] == "✓ fast"  # the keyboard stays, marked
        await fake.press_button(edited.result, ALICE, f"set:{ALICE.id}:style:watercolor")
        await fake.wait_for(lambda call: call.method == "editMessageText" and "watercolor" in call.params["text"])
        alice = await bot.core.settings_of(ALICE_IN_CORE)
        assert alice is not None and (alice.style, alice.mode) == ("watercolor", "fast")

        start = len(fake.calls())
        intruder = await fake.press_button(fake.messages[(group.id, edited.result["message_id"])], BOB,
                                           f"set:{ALICE.id}:count:4")  # fmt: skip
        await fake.wait_for("answerCallbackQuery", start=start)
        answer = fake.callback_answers[intruder]
        assert answer["show_alert"] and "(NOT_ALLOWED)" in answer["text"]
        alice = await bot.core.settings_of(ALICE_IN_CORE)
        assert alice is not None and alice.picture_count is None
        assert await bot.storage.count("person_settings") == 1  # Bob's press stored nothing for him either

        start = len(fake.calls())
        same = await fake.press_button(edited.result, ALICE, f"set:{ALICE.id}:style:watercolor")  # nothing new
        await fake.wait_for("answerCallbackQuery", start=start)
        assert fake.callback_answers[same]["text"].startswith("Your defaults: style watercolor")
        start = len(fake.calls())
        await fake.press_button(edited.result, ALICE, f"set:{ALICE.id}:clear:all")
        cleared = await fake.wait_for(
            lambda call: call.method == "editMessageText" and "no defaults" in call.params["text"], start=start
        )
        assert cleared.ok and await bot.core.settings_of(ALICE_IN_CORE) is None
        assert not any("(INTERNAL)" in text for text in texts_sent(fake))


def test_every_button_fits_telegrams_64_bytes_even_for_the_largest_user_id() -> None:
    """Telegram user ids go up to 52 bits; the fake refuses (BUTTON_DATA_INVALID) data over 64 bytes, as Telegram."""
    core = ChatCore.__new__(ChatCore)  # the keyboard reads only the styles
    core.styles = {style.name: style for style in load_catalogue()}
    current = PersonSettings(1, "anime", "fast", 2, "x", "now")
    keyboard = settings_keyboard(core, 2**52, current).to_dict()["inline_keyboard"]
    data = [button["callback_data"] for row in keyboard for button in row]
    assert len(data) == len(core.styles) + 2 + 4 + 1
    assert all(len(item.encode()) <= 64 and re.match(SETTINGS_PATTERN, item) for item in data)
