"""Discord end to end: the real discord.py against the loopback gateway and REST API,
the real core and database, and a real Celery worker on Redis (tiny weights)."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import discord
import pytest
from PIL import Image

import bot.core.status as status_rule
import bot.discord_app as discord_app
from bot.core import ChatCore
from bot.queue import CeleryJobQueue, JobQueue, make_client
from bot.settings import BotSettings
from bot.storage import Storage
from mmpp.errors import ErrorCode, MmppError
from tests.bot.conftest import PREVIEW_JOB, ScriptedQueue
from tests.conftest import REDIS_URL, SAMPLE_SELFIE
from tests.fakes.discord_api import FakeDiscord, RecordedRequest

MESSAGE_CONTENT_INTENT = 1 << 15


@dataclass
class RunningBot:
    fake: FakeDiscord
    core: ChatCore
    storage: Storage
    adapter: discord_app.DiscordAdapter


@pytest.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    # No patching of discord.py's class attributes: the adapter's client must reach the fake through the
    # addresses in its settings alone (bot/discord_app/endpoints.py).
    async with FakeDiscord(auto_patch=False) as server:
        yield server


async def start_bot(
    fake: FakeDiscord, tmp_path: Path, queue: str, job_queue: JobQueue | None = None, **overrides: object
) -> RunningBot:
    values: dict[str, object] = {
        "redis_url": REDIS_URL,
        "queue": queue,
        "database": tmp_path / "mmpp.sqlite3",
        "state_dir": tmp_path / "state",
        "discord_api_base": fake.api_base,
        "discord_gateway_url": fake.gateway_url,
        "discord_guild_ready_timeout": 0.05,
        "poll_interval_seconds": 0.1,
    }
    values.update(overrides)
    settings = BotSettings(_env_file=None, **values)
    storage = await Storage.open(settings.database)
    queue_client = job_queue or CeleryJobQueue(make_client(settings.redis_url, settings.state_dir))
    core = ChatCore(storage, queue_client, settings)
    adapter = discord_app.DiscordAdapter(core, settings, fake.token)
    await asyncio.wait_for(adapter.open(), 30)
    await core.start()
    return RunningBot(fake, core, storage, adapter)


async def stop_bot(running: RunningBot) -> None:
    await running.core.stop()
    await running.adapter.close()
    await running.storage.close()


@pytest.fixture
async def running(fake: FakeDiscord, tmp_path: Path, redis_worker: str) -> AsyncIterator[RunningBot]:
    bot = await start_bot(fake, tmp_path, redis_worker)
    yield bot
    await stop_bot(bot)


def selfie_attachment() -> dict[str, tuple[str, bytes, str]]:
    return {"photo": ("selfie.jpg", SAMPLE_SELFIE.read_bytes(), "image/jpeg")}


def picture_messages(fake: FakeDiscord) -> list[dict]:
    return [
        message
        for message in fake.messages.values()
        if any(attachment["filename"].startswith("mmpp-") for attachment in message.get("attachments", []))
    ]


async def test_commands_are_registered_without_privileged_intents(running: RunningBot) -> None:
    fake = running.fake
    assert not fake.intents & MESSAGE_CONTENT_INTENT
    profile = fake.command("profile")
    assert profile is not None
    options = {option["name"]: option for option in profile["options"]}
    assert options["style"]["autocomplete"] and not options["style"].get("required")  # a default may fill it
    assert options["photo"]["type"] == 11 and options["photo"]["required"]
    assert (options["count"]["min_value"], options["count"]["max_value"]) == (1, 4)
    assert {choice["value"] for choice in options["mode"]["choices"]} == {"fast", "quality"}
    for name in ("styles", "history", "forget", "help"):
        assert fake.command(name) is not None
    typed = await fake.send_autocomplete("profile", {"style": "pix"}, "style")
    suggestions = (await fake.wait_for_callback(typed)).data["choices"]
    assert [choice["value"] for choice in suggestions] == ["pixel-art"]


def custom_ids(message: dict) -> list[list[str]]:
    """The custom ids of a message's components, row by row."""
    return [[item["custom_id"] for item in row["components"]] for row in message.get("components", [])]


async def test_profile_is_deferred_at_once_and_the_pictures_arrive_with_rating_buttons(running: RunningBot) -> None:
    """Each picture carries a row of 1-5 rating buttons (the bot adds no reactions); the last one also re-roll
    and another style.  A button rates through the core (the last choice wins) with a private one-line answer,
    and people's own keycap reactions still count."""
    fake, storage = running.fake, running.storage
    interaction = await fake.send_slash_command(
        "profile", {"style": "anime", "count": 2}, attachments=selfie_attachment()
    )
    callback = await fake.wait_for_callback(interaction)
    assert callback.type == 5 and callback.elapsed < 3.0 and not callback.ephemeral
    await fake.wait_until(lambda: len(picture_messages(fake)) == 2 or None, timeout=120)
    await running.core.wait_idle(timeout=30)
    pictures = picture_messages(fake)
    files = [fake.message_files(message)[0] for message in pictures]
    assert all(Image.open(io.BytesIO(file.data)).format == "PNG" for file in files)
    assert "Anime" in pictures[0]["content"] and "noise" in pictures[0]["content"]
    assert fake.bot_reactions == [] and not [request for request in fake.requests if "/reactions/" in request.path]
    job = (await storage.recent_jobs(1))[0]
    stored = await storage.pictures(job.id)
    for message, picture in zip(pictures, stored, strict=True):
        assert custom_ids(message)[0] == [f"mmpp:rate:{picture.id}:{score}" for score in range(1, 6)]
        assert [item["label"] for item in message["components"][0]["components"]] == ["1", "2", "3", "4", "5"]
    assert custom_ids(pictures[0])[1:] == [[f"mmpp:upscale:{stored[0].id}"]]
    assert custom_ids(pictures[-1])[1:] == [
        [f"mmpp:upscale:{stored[-1].id}", f"mmpp:reroll:{job.id}"],
        [f"mmpp:restyle:{job.id}"],
    ]

    rater = fake.add_user("carol")
    first = int(pictures[0]["id"])
    picture = stored[0]
    three = await fake.click_button(first, f"mmpp:rate:{picture.id}:3", user=rater)
    answer = await fake.wait_for_callback(three)
    assert answer.type == 4 and answer.ephemeral and answer.data["content"] == "Thanks: 3★"
    carol = await wait_for_user(storage, str(rater.id))
    await wait_until(lambda: storage.rating(picture.id, carol), 3)
    await fake.wait_for_callback(await fake.click_button(first, f"mmpp:rate:{picture.id}:2", user=rater))
    await wait_until(lambda: storage.rating(picture.id, carol), 2)  # the last choice wins, one rating
    await fake.add_reaction(first, "4️⃣", rater)
    await wait_until(lambda: storage.rating(picture.id, carol), 4)
    await fake.add_reaction(first, "5️⃣", rater)
    await wait_until(lambda: storage.rating(picture.id, carol), 5)
    await fake.remove_reaction(first, "4️⃣", rater)  # not the rating in force: it stays 5
    await asyncio.sleep(0.3)
    assert await storage.rating(picture.id, carol) == 5
    await fake.remove_reaction(first, "5️⃣", rater)
    await wait_until(lambda: storage.rating(picture.id, carol), None)


async def wait_for_user(storage: Storage, user_id: str) -> int:
    for _ in range(200):
        found = await storage.find_user("discord", user_id)
        if found is not None:
            return found
        await asyncio.sleep(0.05)
    raise AssertionError(f"user {user_id} never stored")


async def wait_until(read: object, expected: object, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    value = None
    while loop.time() < deadline:
        value = await read()  # type: ignore[operator]
        if value == expected:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"expected {expected!r}, last saw {value!r}")


async def test_reroll_button_and_another_style_menu(running: RunningBot) -> None:
    fake, storage = running.fake, running.storage
    await fake.send_slash_command("profile", {"style": "anime"}, attachments=selfie_attachment())
    await fake.wait_until(lambda: picture_messages(fake) or None, timeout=120)
    await running.core.wait_idle(timeout=30)
    job = (await storage.recent_jobs(1))[0]
    message_id = int(picture_messages(fake)[-1]["id"])
    click = await fake.click_button(message_id, f"mmpp:reroll:{job.id}")
    assert (await fake.wait_for_callback(click)).type == 5
    await fake.wait_until(lambda: len(picture_messages(fake)) == 2 or None, timeout=120)
    await running.core.wait_idle(timeout=30)
    choose = await fake.choose_select(message_id, f"mmpp:restyle:{job.id}", ["watercolor"])
    await fake.wait_for_callback(choose)
    await fake.wait_until(lambda: len(picture_messages(fake)) == 3 or None, timeout=120)
    await running.core.wait_idle(timeout=30)
    jobs = await storage.recent_jobs(1)
    assert [item.style for item in jobs] == ["watercolor", "anime", "anime"]
    assert jobs[0].parent_job_id == jobs[1].parent_job_id == job.id


async def test_errors_are_ephemeral_one_liners(running: RunningBot) -> None:
    fake = running.fake
    unknown = await fake.send_slash_command("profile", {"style": "building"}, attachments=selfie_attachment())
    callback = await fake.wait_for_callback(unknown)
    assert callback.type == 4 and callback.ephemeral and "`UNKNOWN_STYLE`" in callback.data["content"]
    text = await fake.send_slash_command(
        "profile", {"style": "anime"}, attachments={"photo": ("notes.txt", b"hello", "text/plain")}
    )
    assert "`NOT_AN_IMAGE`" in (await fake.wait_for_callback(text)).data["content"]

    wall = io.BytesIO()
    Image.new("RGB", (300, 300), (80, 120, 160)).save(wall, "PNG")
    no_face = await fake.send_slash_command(
        "profile", {"style": "anime"}, attachments={"photo": ("wall.png", wall.getvalue(), "image/png")}
    )
    assert (await fake.wait_for_callback(no_face)).type == 5
    message = await fake.wait_for_message(lambda item: "`NO_FACE`" in item.get("content", ""), timeout=120)
    assert message["flags"] & 64 and "\n" not in message["content"]


async def test_the_same_interaction_twice_makes_one_job(running: RunningBot) -> None:
    fake, storage = running.fake, running.storage
    interaction = await fake.send_slash_command("profile", {"style": "anime"}, attachments=selfie_attachment())
    await fake.wait_for_callback(interaction)
    await fake.dispatch("INTERACTION_CREATE", interaction.payload)
    await fake.wait_until(lambda: picture_messages(fake) or None, timeout=120)
    await running.core.wait_idle(timeout=30)
    await asyncio.sleep(0.5)
    assert await storage.count("jobs") == 1 and len(picture_messages(fake)) == 1


async def test_after_the_token_expires_pictures_go_through_the_channel(
    fake: FakeDiscord, tmp_path: Path, redis_worker: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(discord_app, "TOKEN_LIFETIME_SECONDS", -1)
    running = await start_bot(fake, tmp_path, redis_worker)
    try:
        await fake.send_slash_command("profile", {"style": "anime"}, attachments=selfie_attachment())
        await fake.wait_until(lambda: picture_messages(fake) or None, timeout=120)
        await running.core.wait_idle(timeout=30)
        posted = [request for request in fake.requests if request.method == "POST" and "/channels/" in request.path]
        assert posted and posted[0].json.get("nonce") and posted[0].json.get("enforce_nonce")
        assert picture_messages(fake)[0]["content"].startswith(f"<@{fake.default_user.id}>")
    finally:
        await stop_bot(running)


async def test_a_rate_limited_follow_up_is_retried_once(running: RunningBot) -> None:
    fake = running.fake
    fake.fail_next("POST", r"^/webhooks/\d+/[^/]+$", status=429, retry_after=0.3)
    await fake.send_slash_command("profile", {"style": "anime"}, attachments=selfie_attachment())
    await fake.wait_until(lambda: picture_messages(fake) or None, timeout=120)
    await running.core.wait_idle(timeout=30)
    statuses = [
        request.status
        for request in fake.requests
        if request.method == "POST" and request.path.startswith("/webhooks/")
    ]
    assert 429 in statuses and len(picture_messages(fake)) == 1


async def test_styles_history_forget_and_help(running: RunningBot) -> None:
    fake = running.fake
    styles = await fake.send_slash_command("styles")
    embed = (await fake.wait_for_callback(styles)).data["embeds"][0]
    assert len(embed["fields"]) >= 10
    history = await fake.send_slash_command("history")
    assert "no jobs" in (await fake.wait_for_callback(history)).data["content"]
    help_reply = await fake.send_slash_command("help")
    assert "/profile" in (await fake.wait_for_callback(help_reply)).data["content"]
    forget = await fake.send_slash_command("forget")
    await fake.wait_for_callback(forget)
    message = await fake.wait_for_message(lambda item: "nothing stored" in item.get("content", ""))
    assert message["flags"] & 64
    assert ErrorCode.NO_FACE and discord.__version__


async def test_a_heic_photo_is_refused_before_anything_is_enqueued(fake: FakeDiscord, tmp_path: Path) -> None:
    """HEIC is not among the kernel's accepted photo types: the core refuses it in the first reply, as one
    ephemeral line, before the photo is downloaded and before any job row or queue message exists."""
    queue = ScriptedQueue()
    running = await start_bot(fake, tmp_path, "unused", job_queue=queue)
    try:
        heic = await fake.send_slash_command(
            "profile", {"style": "anime"}, attachments={"photo": ("me.heic", b"\x00\x00\x00\x18ftypheic", "image/heic")}
        )
        callback = await fake.wait_for_callback(heic)
        assert callback.type == 4 and callback.ephemeral and "`NOT_AN_IMAGE`" in callback.data["content"]
        assert "HEIC" in callback.data["content"] and "\n" not in callback.data["content"]
        assert await running.storage.count("jobs") == 0 and not queue.submitted
        assert not [request for request in fake.requests if "/attachments/" in request.path]  # never downloaded
    finally:
        await stop_bot(running)


async def test_the_client_reaches_the_fake_without_changing_discord_py_for_the_process(
    fake: FakeDiscord, tmp_path: Path
) -> None:
    """The adapter's own client talks to the loopback fake (REST, webhooks, gateway) while discord.py's class
    attributes keep Discord's addresses: another client in this process would still reach Discord."""
    library = (discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY)
    assert library[0] == "https://discord.com/api/v10"
    queue = ScriptedQueue()
    running = await start_bot(fake, tmp_path, "unused", job_queue=queue)
    try:
        await fake.send_slash_command("profile", {"style": "anime"}, attachments=selfie_attachment())
        await fake.wait_until(lambda: picture_messages(fake) or None, timeout=60)
        await running.core.wait_idle(timeout=30)
        assert library == (discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY)
        assert any(request.path.startswith("/webhooks/") for request in fake.requests)  # follow-ups reached it
        assert any(request.path.startswith("/applications/") for request in fake.requests)  # REST reached it
    finally:
        await stop_bot(running)
    assert library == (discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY)


# --------------------------------------------------------------------------- live previews


def has_preview(request: RecordedRequest) -> bool:
    return any(file.filename.startswith("preview-") for file in request.files)


def preview_edits(fake: FakeDiscord, message_id: int) -> list[RecordedRequest]:
    return [request for request in fake.message_edits(message_id) if has_preview(request)]


def picture_posts(fake: FakeDiscord) -> list[RecordedRequest]:
    return [
        request
        for request in fake.requests
        if request.method == "POST" and any(file.filename.startswith("mmpp-") for file in request.files)
    ]


def most_in_a_window(times: list[float], window: float) -> int:
    ordered = sorted(times)
    return max((sum(1 for other in ordered if start <= other < start + window) for start in ordered), default=0)


@pytest.fixture
async def previewing(fake: FakeDiscord, tmp_path: Path, preview_worker: str) -> AsyncIterator[RunningBot]:
    bot = await start_bot(fake, tmp_path, preview_worker)
    yield bot
    await stop_bot(bot)


async def order_with_previews(running: RunningBot) -> tuple[int, int]:
    """A job on the preview worker (see PREVIEW_JOB): ``(status message id, job id)`` once delivered."""
    fake = running.fake
    options = {"style": "anime", "mode": PREVIEW_JOB["mode"], "count": int(PREVIEW_JOB["count"])}
    interaction = await fake.send_slash_command("profile", options, attachments=selfie_attachment())
    await fake.wait_until(lambda: len(picture_messages(fake)) == options["count"] or None, timeout=400)
    await running.core.wait_idle(timeout=60)
    assert interaction.original_message_id is not None
    job = (await running.storage.recent_jobs(1))[0]
    assert job.state == "done" and job.delivered_at
    return interaction.original_message_id, job.id


async def assert_delivered_once(running: RunningBot, status_id: int, job_id: int) -> None:
    fake = running.fake
    count = int(PREVIEW_JOB["count"])
    assert len(picture_messages(fake)) == count and len(picture_posts(fake)) == count  # each posted once
    assert len(await running.storage.pictures(job_id)) == count
    status = fake.messages[status_id]
    assert status["content"].startswith("Done") and status["attachments"] == []  # the last preview is gone
    edit_times = [request.time for request in fake.message_edits(status_id)]
    assert most_in_a_window(edit_times, 5.0) <= 5  # Discord: about 5 edits per 5 s per message


async def test_live_previews_replace_each_other_on_the_status_message_before_the_pictures(
    previewing: RunningBot,
) -> None:
    running = previewing
    fake = running.fake
    status_id, job_id = await order_with_previews(running)
    shown = [request for request in preview_edits(fake, status_id) if request.status == 200]
    assert shown and shown[0].time < picture_posts(fake)[0].time
    for request in shown:
        preview = Image.open(io.BytesIO(request.files[0].data))
        assert preview.format == "JPEG" and max(preview.size) <= 256
        assert "painting" in request.json["content"] and "%" in request.json["content"]
        assert len(request.json["attachments"]) == 1  # the new preview only: it replaces the one before
    previews = [request.files[0].data for request in shown]
    assert len(previews) == len(set(previews))  # a preview is sent once
    await assert_delivered_once(running, status_id, job_id)


async def test_refused_preview_edits_change_nothing_about_delivery(
    fake: FakeDiscord, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Discord answers the first preview edits 400, 429 and 500: each is tried once (discord.py alone would
    wait out the 429 and retry the 500 for seconds), the text edits go on, the picture arrives once.

    A scripted queue stands in for the worker: a job painting for some seconds with a new preview at
    every poll, whatever the machine's speed (this is about Discord's answers, not the engine)."""
    monkeypatch.setattr(status_rule, "PREVIEW_REFUSALS_TO_STOP", 3)
    for refusal in (400, 429, 500):
        fake.fail_next("PATCH", r"/messages/", status=refusal, retry_after=5.0, where=has_preview)
    running = await start_bot(fake, tmp_path, "unused", job_queue=ScriptedQueue(progress_polls=80, previews_every=1))
    try:
        interaction = await fake.send_slash_command("profile", {"style": "anime"}, attachments=selfie_attachment())
        await fake.wait_until(lambda: picture_messages(fake) or None, timeout=60)
        await running.core.wait_idle(timeout=30)
        status_id = interaction.original_message_id
        assert status_id is not None
        attempts = preview_edits(fake, status_id)
        assert [request.status for request in attempts] == [400, 429, 500]  # then previews stop for this job
        sent = [request.files[0].data for request in attempts]
        assert len(sent) == len(set(sent))  # none sent again
        assert attempts[2].time - attempts[1].time < 5.0  # the 429's retry_after was not waited out
        after = [request for request in fake.message_edits(status_id) if request.time > attempts[-1].time]
        assert any("%" in (request.json or {}).get("content", "") for request in after)  # the text went on
        job = (await running.storage.recent_jobs(1))[0]
        assert len(picture_messages(fake)) == 1 and len(picture_posts(fake)) == 1
        assert len(await running.storage.pictures(job.id)) == 1 and job.delivered_at
        status = fake.messages[status_id]
        assert status["content"].startswith("Done") and status["attachments"] == []
        assert most_in_a_window([request.time for request in fake.message_edits(status_id)], 5.0) <= 5
    finally:
        await stop_bot(running)


async def test_past_the_token_previews_edit_the_status_as_a_channel_message(
    previewing: RunningBot, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(discord_app, "TOKEN_LIFETIME_SECONDS", 3)
    running = previewing
    fake = running.fake
    status_id, job_id = await order_with_previews(running)
    through_channel = [request for request in preview_edits(fake, status_id) if request.path.startswith("/channels/")]
    assert through_channel and all(request.status == 200 for request in through_channel)
    assert through_channel[0].headers.get("Authorization") == f"Bot {fake.token}"
    assert through_channel[0].time < picture_posts(fake)[0].time
    await assert_delivered_once(running, status_id, job_id)


async def test_a_job_failing_past_the_token_leaves_no_status_behind(
    fake: FakeDiscord, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(discord_app, "TOKEN_LIFETIME_SECONDS", 2)
    queue = ScriptedQueue(progress_polls=50, previews_every=1, error=MmppError(ErrorCode.OUTPUT_BLOCKED, "Not shown."))
    running = await start_bot(fake, tmp_path, "unused", job_queue=queue)
    try:
        interaction = await fake.send_slash_command("profile", {"style": "anime"}, attachments=selfie_attachment())
        failure = await fake.wait_for_message(lambda item: "`OUTPUT_BLOCKED`" in item.get("content", ""), timeout=60)
        await running.core.wait_idle(timeout=30)
        status_id = interaction.original_message_id
        assert status_id is not None and preview_edits(fake, status_id)  # it showed previews meanwhile
        assert failure["content"].startswith(f"<@{fake.default_user.id}>")
        assert status_id in fake.deleted_message_ids and status_id not in fake.messages
    finally:
        await stop_bot(running)


# --------------------------------------------------------------------------- Discord's limits, respected


def many_styles_catalogue(folder: Path, count: int) -> Path:
    """A catalogue of ``count`` styles with the longest names the catalogue allows (40-character display names)."""
    lines = ["[defaults]", "fast_steps = 4", "fast_guidance = 1.0", "quality_steps = 25", "quality_guidance = 6.0", ""]
    for index in range(count):
        lines += [
            f"[styles.style-{index:02d}]",
            f'display_name = "{("Style number " + str(index)).ljust(40, "x")}"',
            'emoji = "🎨"',
            f'description = "{"A long description of the style. " * 3}"',
            'prompt = "portrait of {subject}"',
            "style_scale = 0.5",
            "portrait_scale = 0.5",
            "ip_adapter_scale = 0.6",
            'mode = "fast"',
            "",
        ]
    path = folder / "styles.toml"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


async def test_a_catalogue_over_discords_limits_is_cut_to_fit(fake: FakeDiscord, tmp_path: Path) -> None:
    """30 styles: the autocomplete answers 25 choices, /styles and the another-style menu stay within Discord's
    limits (the fake refuses more with 400), and the pictures still come."""
    styles_file = many_styles_catalogue(tmp_path, 30)
    running = await start_bot(fake, tmp_path, "unused", job_queue=ScriptedQueue(), styles_file=styles_file)
    try:
        typed = await fake.send_autocomplete("profile", {"style": ""}, "style")
        answer = await fake.wait_for_callback(typed)
        assert answer.accepted and len(answer.data["choices"]) == 25
        assert all(len(choice["name"]) <= 100 for choice in answer.data["choices"])
        listing = await fake.wait_for_callback(await fake.send_slash_command("styles"))
        assert listing.accepted and [len(embed["fields"]) for embed in listing.data["embeds"]] == [25, 5]
        await fake.send_slash_command("profile", {"style": "style-29"}, attachments=selfie_attachment())
        await fake.wait_until(lambda: picture_messages(fake) or None, timeout=60)
        await running.core.wait_idle(timeout=30)
        menu = picture_messages(fake)[-1]["components"][-1]["components"][0]
        assert menu["type"] == 3 and len(menu["options"]) == 25
    finally:
        await stop_bot(running)


async def test_an_overlong_failure_is_cut_to_one_message_with_its_code(fake: FakeDiscord, tmp_path: Path) -> None:
    """A worker's failure text longer than a Discord message: the person gets one line of at most 2000
    characters, still ending with the code (the fake refuses a longer message, as Discord does)."""
    queue = ScriptedQueue(error=MmppError(ErrorCode.INTERNAL, "the worker said " + "very " * 800 + "much"))
    running = await start_bot(fake, tmp_path, "unused", job_queue=queue)
    try:
        await fake.send_slash_command("profile", {"style": "anime"}, attachments=selfie_attachment())
        failure = await fake.wait_for_message(lambda item: "`INTERNAL`" in item.get("content", ""), timeout=60)
        await running.core.wait_idle(timeout=30)
        assert len(failure["content"]) <= 2000 and failure["content"].endswith("(`INTERNAL`)")
        assert "\n" not in failure["content"] and failure["flags"] & 64
        job = (await running.storage.recent_jobs(1))[0]
        assert job.error_code == "INTERNAL" and job.delivered_at
    finally:
        await stop_bot(running)


async def test_a_rating_button_that_cannot_rate_answers_one_private_line(
    fake: FakeDiscord, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A picture deleted meanwhile (/forget) answers NOT_FOUND; a failure of ours answers INTERNAL: each as one
    ephemeral line with its code, never an unanswered interaction."""
    running = await start_bot(fake, tmp_path, "unused", job_queue=ScriptedQueue())
    try:
        await fake.send_slash_command("profile", {"style": "anime"}, attachments=selfie_attachment())
        await fake.wait_until(lambda: picture_messages(fake) or None, timeout=60)
        await running.core.wait_idle(timeout=30)
        message = picture_messages(fake)[0]
        button = custom_ids(message)[0][4]

        async def broken(*arguments: object) -> None:
            raise RuntimeError("database is locked")

        with monkeypatch.context() as patch:
            patch.setattr(running.core, "rate", broken)
            failed = await fake.wait_for_callback(await fake.click_button(int(message["id"]), button))
        assert failed.ephemeral and failed.data["content"].endswith("(`INTERNAL`)")
        await fake.wait_for_callback(await fake.send_slash_command("forget"))
        await wait_until(lambda: running.storage.count("pictures"), 0)
        gone = await fake.wait_for_callback(await fake.click_button(int(message["id"]), button))
        assert gone.ephemeral and gone.data["content"].endswith("(`NOT_FOUND`)") and "\n" not in gone.data["content"]
    finally:
        await stop_bot(running)


async def test_a_variant_goes_through_the_real_worker_and_its_ratings_count_for_it(running: RunningBot) -> None:
    """As on Telegram: the core's variant reaches the worker, which renders it, and a button rating counts for it."""
    fake, storage = running.fake, running.storage
    await running.core.jobs.variants.promote("anime", "more-likeness")
    await fake.send_slash_command("profile", {"style": "anime"}, attachments=selfie_attachment())
    await fake.wait_until(lambda: picture_messages(fake) or None, timeout=120)
    await running.core.wait_idle(timeout=30)
    job = (await storage.recent_jobs(1))[0]
    assert job.variant == "more-likeness" and job.result_meta is not None
    assert job.result_meta["variant"] == "more-likeness" and job.result_meta["scales"]["style_lora"] == 0.7
    picture = (await storage.pictures(job.id))[0]
    message = picture_messages(fake)[0]
    await fake.wait_for_callback(await fake.click_button(int(message["id"]), f"mmpp:rate:{picture.id}:4"))
    rater = await wait_for_user(storage, str(fake.default_user.id))
    await wait_until(lambda: storage.variant_observations("anime"), [("more-likeness", rater, 4)])


async def test_a_slow_check_does_not_hold_the_first_reply_back_and_its_refusal_stays_private(
    fake: FakeDiscord, tmp_path: Path
) -> None:
    """/profile's checks read the person's defaults from the database; when that read is slow (a busy shared
    PostgreSQL), the command is deferred within CHECK_BEFORE_DEFER_SECONDS anyway.  A refusal found afterwards
    replaces the public "thinking" reply with a private line; an order that passes is made as usual."""
    bot = await start_bot(fake, tmp_path, "unused", ScriptedQueue())
    check_order = bot.core.check_order

    async def slow_check_order(*arguments: Any) -> Any:
        await asyncio.sleep(1.0)
        return await check_order(*arguments)

    bot.core.check_order = slow_check_order  # type: ignore[method-assign]
    try:
        refused = await fake.send_slash_command("profile", {"style": "building"}, attachments=selfie_attachment())
        callback = await fake.wait_for_callback(refused)
        assert callback.type == 5 and callback.elapsed < 0.8  # deferred before the slow check answered
        await fake.wait_until(lambda: fake.followups(refused) or None, timeout=10)
        (line,) = fake.followups(refused)  # the public "thinking" reply is gone, the private line stays
        assert line["flags"] & 64 and "`UNKNOWN_STYLE`" in line["content"] and "\n" not in line["content"]
        assert await bot.storage.count("jobs") == 0

        ordered = await fake.send_slash_command("profile", {"style": "anime"}, attachments=selfie_attachment())
        callback = await fake.wait_for_callback(ordered)
        assert callback.type == 5 and callback.elapsed < 0.8
        await fake.wait_until(lambda: len(picture_messages(fake)) == 1 or None, timeout=30)
        assert await bot.storage.count("jobs") == 1
    finally:
        await stop_bot(bot)
