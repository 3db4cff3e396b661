"""/settings on Discord end to end: the real discord.py against the loopback gateway and REST API (which checks
the command's registration and every invocation as Discord would), the real core and database, and a scripted
queue in place of the worker (the job's row and the request sent are what is checked).

The slash command's options set the defaults (privately); /profile without options is painted with them, an
option given wins; /help shows them; bad values are one private line with their code; /forget deletes them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.core import Person
from mmpp.catalogue import load_catalogue
from mmpp.contract import GenerateRequest
from tests.bot.conftest import ScriptedQueue
from tests.bot.discord_app.test_discord import RunningBot, picture_messages, selfie_attachment, start_bot, stop_bot
from tests.fakes.discord_api import FakeDiscord

DEFAULTS = 'Your defaults: style pixel-art · mode quality · 3 pictures · suffix "with a hat".'


@pytest.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord(auto_patch=False) as server:
        yield server


@pytest.fixture
async def running(fake: FakeDiscord, tmp_path: Path) -> AsyncIterator[RunningBot]:
    bot = await start_bot(fake, tmp_path, "unused", job_queue=ScriptedQueue(), prompt_deny_list="nude")
    yield bot
    await stop_bot(bot)


async def reply(fake: FakeDiscord, command: str, options: dict[str, object]) -> str:
    """The private one-message answer to a command."""
    callback = await fake.wait_for_callback(await fake.send_slash_command(command, options))
    assert callback.type == 4 and callback.ephemeral
    return str(callback.data["content"])


async def test_the_settings_command_is_registered_with_typed_options(running: RunningBot) -> None:
    command = running.fake.command("settings")
    assert command is not None
    options = {option["name"]: option for option in command["options"]}
    assert list(options) == ["style", "mode", "count", "suffix", "clear"]
    assert not any(option.get("required") for option in options.values())
    assert [choice["value"] for choice in options["style"]["choices"]] == load_catalogue().names[:25]
    assert [choice["value"] for choice in options["mode"]["choices"]] == ["fast", "quality"]
    assert (options["count"]["type"], options["count"]["min_value"], options["count"]["max_value"]) == (4, 1, 4)
    assert (options["suffix"]["type"], options["suffix"]["max_length"]) == (3, 200)
    assert options["clear"]["type"] == 5
    profile = running.fake.command("profile")
    assert profile is not None and profile["options"][0]["name"] == "photo"  # required before optional


async def test_defaults_set_by_slash_command_paint_a_profile_without_options(running: RunningBot) -> None:
    fake, storage, core = running.fake, running.storage, running.core
    queue = core.queue
    assert isinstance(queue, ScriptedQueue)
    options = {"style": "pixel-art", "mode": "quality", "count": 3, "suffix": "with a hat"}
    assert (await reply(fake, "settings", options)).startswith(DEFAULTS)
    assert (await reply(fake, "settings", {})).startswith(DEFAULTS)

    await fake.send_slash_command("profile", {}, attachments=selfie_attachment())
    await fake.wait_until(lambda: len(picture_messages(fake)) == 3 or None, timeout=30)
    await core.wait_idle(timeout=30)
    (job,) = await storage.recent_jobs(1)
    assert (job.style, job.mode, job.picture_count, job.prompt) == ("pixel-art", "quality", 3, "with a hat")
    request = GenerateRequest.from_payload(queue.submitted[job.task_id])
    assert (request.style, request.mode, request.count, request.prompt) == ("pixel-art", "quality", 3, "with a hat")

    explicit = {"style": "anime", "mode": "fast", "count": 1, "prompt": "a pirate"}
    await fake.send_slash_command("profile", explicit, attachments=selfie_attachment())
    await fake.wait_until(lambda: len(picture_messages(fake)) == 4 or None, timeout=30)
    await core.wait_idle(timeout=30)
    latest = (await storage.recent_jobs(1))[0]
    assert (latest.style, latest.mode, latest.picture_count, latest.prompt) == (
        "anime",
        "fast",
        1,
        "a pirate, with a hat",
    )

    assert DEFAULTS in await reply(fake, "help", {})

    for bad, code in [
        ({"suffix": "(hat)9"}, "`INVALID_REQUEST`"),
        ({"suffix": "in the nude", "count": 1}, "`PROMPT_BLOCKED`"),
    ]:
        refused = await reply(fake, "settings", bad)
        assert refused.startswith("⚠️ ") and code in refused and "\n" not in refused
    stored = await core.settings_of(Person("discord", str(fake.default_user.id)))
    assert stored is not None and (stored.picture_count, stored.prompt_suffix) == (3, "with a hat")  # unchanged

    assert (await reply(fake, "settings", {"clear": True, "mode": "fast"})).startswith("Your defaults: mode fast.")
    assert (await reply(fake, "settings", {"suffix": "none"})).startswith("Your defaults: mode fast.")
    await fake.wait_for_callback(await fake.send_slash_command("forget"))
    await fake.wait_for_message(lambda item: "deleted everything" in item.get("content", ""))
    assert await storage.count("person_settings") == 0
    assert (await reply(fake, "settings", {})).startswith("You have no defaults")

    unnamed = await reply_or_error(fake)
    assert "`UNKNOWN_STYLE`" in unnamed  # no style and no default one: told to name one


async def reply_or_error(fake: FakeDiscord) -> str:
    callback = await fake.wait_for_callback(
        await fake.send_slash_command("profile", {}, attachments=selfie_attachment())
    )
    assert callback.type == 4 and callback.ephemeral
    return str(callback.data["content"])
