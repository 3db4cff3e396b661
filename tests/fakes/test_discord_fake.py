"""The Discord fake, driven by the real discord.py client with a tiny bot defined here.

These tests pin both sides: that discord.py 2.7 accepts what the fake sends (READY, GUILD_CREATE, interactions,
reaction events, 429s, RESUME) and that the fake records what the bot did in the shapes later adapter tests
assert on. The bot here is deliberately minimal; the product's bot has its own tests.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import os

import aiohttp
import discord
import pytest
from discord import app_commands
from discord.ext import commands

from tests.fakes.discord_api import (
    BOT_PERMISSIONS,
    INTENT_GUILD_MEMBERS,
    INTENT_GUILD_MESSAGE_REACTIONS,
    INTENT_MESSAGE_CONTENT,
    PERMISSION_ADD_REACTIONS,
    PERMISSION_ADMINISTRATOR,
    PERMISSION_ATTACH_FILES,
    PERMISSION_READ_MESSAGE_HISTORY,
    PERMISSION_SEND_MESSAGES,
    PERMISSION_VIEW_CHANNEL,
    FakeDiscord,
    running_client,
)

STYLES = ["anime", "oil painting", "pixel art"]


class RateView(discord.ui.View):
    """Rating controls like the product's: a button and a style select."""

    def __init__(self, bot: TinyBot) -> None:
        super().__init__(timeout=60)
        self.bot = bot

    @discord.ui.button(label="Like", emoji="👍", custom_id="rate:up", style=discord.ButtonStyle.success)
    async def up(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        self.bot.clicks.append((interaction.user.id, button.custom_id))
        await interaction.response.send_message("thanks", ephemeral=True)

    @discord.ui.select(
        custom_id="style",
        options=[discord.SelectOption(label=s.title(), value=s) for s in STYLES],
    )
    async def style(self, interaction: discord.Interaction, select: discord.ui.Select) -> None:
        self.bot.selections.append(list(select.values))
        await interaction.response.edit_message(content=f"style {select.values[0]}")


class TinyBot(commands.Bot):
    """A commands.Bot with an app-command tree, recording what reached it."""

    def __init__(self, fake: FakeDiscord, intents: discord.Intents | None = None) -> None:
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=intents or discord.Intents.default(),
            guild_ready_timeout=0.05,
            help_command=None,
        )
        self.fake = fake
        self.clicks: list[tuple[int, str | None]] = []
        self.selections: list[list[str]] = []
        self.raw_reactions: list[tuple[str, discord.RawReactionActionEvent]] = []
        self.resumed_count = 0
        self.errors: list[BaseException] = []
        self.downloads: list[bytes] = []

    async def setup_hook(self) -> None:
        guild = discord.Object(id=self.fake.guild_id)

        @self.tree.command(name="echo", description="Send the attached file back")
        @app_commands.describe(file="The file to echo", note="A note to add")
        async def echo(interaction: discord.Interaction, file: discord.Attachment, note: str = "") -> None:
            await interaction.response.defer()
            data = await file.read()
            self.downloads.append(data)
            await interaction.followup.send(
                content=f"echo {note}".strip(),
                file=discord.File(io.BytesIO(data), filename=file.filename),
                view=RateView(self),
                wait=True,
            )

        @self.tree.command(name="style", description="Pick a style")
        @app_commands.describe(name="Style name")
        async def style(interaction: discord.Interaction, name: str) -> None:
            await interaction.response.send_message(f"style {name}", ephemeral=True)

        @style.autocomplete("name")
        async def style_autocomplete(interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
            return [app_commands.Choice(name=s, value=s) for s in STYLES if current in s]

        @self.tree.command(name="ping", description="Guild-only ping", guild=guild)
        async def ping(interaction: discord.Interaction) -> None:
            await interaction.response.send_message("pong")

        @self.tree.command(name="slow", description="Answers too late", guild=guild)
        async def slow(interaction: discord.Interaction) -> None:
            await asyncio.sleep(0.3)
            await interaction.response.send_message("late")

        @self.tree.error
        async def on_tree_error(interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
            self.errors.append(getattr(error, "original", error))

        await self.tree.sync()
        await self.tree.sync(guild=guild)

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        """The fake's identify window, not discord.py's fixed 5 s: the fixture's fake shortens it (Discord allows
        one IDENTIFY per 5 s per bucket, and the fake refuses one sooner with op 9)."""
        if not initial:
            await asyncio.sleep(self.fake.identify_interval)

    async def on_raw_reaction_add(self, payload: discord.RawReactionActionEvent) -> None:
        self.raw_reactions.append(("add", payload))

    async def on_raw_reaction_remove(self, payload: discord.RawReactionActionEvent) -> None:
        self.raw_reactions.append(("remove", payload))

    async def on_resumed(self) -> None:
        self.resumed_count += 1


@pytest.fixture
async def fake():
    async with FakeDiscord(identify_interval=0.1) as server:
        yield server


@pytest.fixture
async def bot(fake: FakeDiscord):
    tiny = TinyBot(fake)
    async with running_client(tiny, fake):
        yield tiny


async def _echo(fake: FakeDiscord, payload: bytes, note: str = "hi"):
    it = await fake.send_slash_command(
        "echo", {"note": note}, attachments={"file": ("selfie.png", payload, "image/png")}
    )
    message = await fake.wait_for_followup(it)
    return it, message


async def test_login_ready_and_command_registration(fake: FakeDiscord, bot: TinyBot) -> None:
    assert bot.user is not None and bot.user.id == fake.application_id
    assert bot.application_id == fake.application_id
    guild = bot.get_guild(fake.guild_id)
    assert guild is not None and guild.name == fake.guild_name
    channel = bot.get_channel(fake.channel_id)
    assert isinstance(channel, discord.TextChannel) and channel.guild == guild
    assert guild.me is not None and channel.permissions_for(guild.me).attach_files

    echo = fake.command("echo")
    assert echo is not None
    assert {o["name"]: o["type"] for o in echo["options"]} == {"file": 11, "note": 3}
    assert fake.command("style")["options"][0]["autocomplete"] is True
    assert [c["name"] for c in fake.guild_commands[fake.guild_id]] == ["ping", "slow"]

    login = await fake.wait_for(lambda r: r.path == "/users/@me")
    assert login.headers["Authorization"] == f"Bot {fake.token}"
    # A plain Client connects to DEFAULT_GATEWAY (patched), asking for zlib-stream; the fake sends text frames.
    assert fake.connections[0].query == {"v": "10", "encoding": "json", "compress": "zlib-stream"}


async def test_identify_does_not_request_message_content(fake: FakeDiscord, bot: TinyBot) -> None:
    assert fake.intents == discord.Intents.default().value
    assert not fake.intents & INTENT_MESSAGE_CONTENT
    assert fake.intents & INTENT_GUILD_MESSAGE_REACTIONS
    assert fake.identifies[0]["properties"]["browser"] == "discord.py"


async def test_privileged_intent_is_refused_like_discord(fake: FakeDiscord) -> None:
    greedy = TinyBot(fake, intents=discord.Intents.default() | discord.Intents(message_content=True))
    with pytest.raises(discord.PrivilegedIntentsRequired):
        async with running_client(greedy, fake, timeout=3):
            pass
    assert fake.connections[-1].close_code == 4014


async def test_slash_command_defers_downloads_and_follows_up_with_file(fake: FakeDiscord, bot: TinyBot) -> None:
    payload = os.urandom(50_000)
    it, message = await _echo(fake, payload)

    callback = it.callback
    assert callback is not None and callback.type == 5 and not callback.ephemeral
    assert callback.elapsed < fake.ack_deadline
    download = await fake.wait_for(lambda r: r.is_cdn)
    callback_request = await fake.wait_for(lambda r: r.path.endswith("/callback"))
    assert callback_request.time <= download.time  # deferred first, then downloaded
    assert bot.downloads == [payload]

    # The first follow-up after a deferral fills the "thinking" message.
    assert int(message["id"]) == it.original_message_id
    assert message["content"] == "echo hi" and message["flags"] == 0
    assert [f.data for f in fake.message_files(message)] == [payload]
    assert fake.message_files(message)[0].filename == "selfie.png"
    followup = await fake.wait_for(lambda r: r.method == "POST" and r.path.startswith("/webhooks/"))
    assert followup.files[0].field == "files[0]" and followup.json["attachments"][0]["id"] == 0
    custom_ids = [c.get("custom_id") for row in message["components"] for c in row["components"]]
    assert custom_ids == ["rate:up", "style"]


async def test_button_click_and_select_reach_the_view(fake: FakeDiscord, bot: TinyBot) -> None:
    _, message = await _echo(fake, b"png bytes")
    bob = fake.add_user("bob")

    click = await fake.click_button(int(message["id"]), "rate:up", user=bob)
    callback = await fake.wait_for_callback(click)
    assert callback.type == 4 and callback.ephemeral and callback.data["content"] == "thanks"
    assert bot.clicks == [(bob.id, "rate:up")]

    choice = await fake.choose_select(int(message["id"]), "style", ["oil painting"])
    callback = await fake.wait_for_callback(choice)
    assert callback.type == 7
    assert bot.selections == [["oil painting"]]
    assert fake.messages[int(message["id"])]["content"] == "style oil painting"

    with pytest.raises(ValueError, match="no component"):
        await fake.click_button(int(message["id"]), "rate:down")


async def test_autocomplete_and_ephemeral_reply(fake: FakeDiscord, bot: TinyBot) -> None:
    ac = await fake.send_autocomplete("style", {"name": "an"}, focused="name")
    callback = await fake.wait_for_callback(ac)
    assert callback.type == 8
    assert callback.data["choices"] == [{"name": "anime", "value": "anime"}]

    it = await fake.send_slash_command("style", {"name": "anime"})
    callback = await fake.wait_for_callback(it)
    assert callback.type == 4 and callback.ephemeral
    assert fake.messages[it.original_message_id]["flags"] & 64


async def test_reactions_reach_raw_events_and_bot_reacts(fake: FakeDiscord, bot: TinyBot) -> None:
    channel = bot.get_channel(fake.channel_id)
    assert isinstance(channel, discord.TextChannel)
    sent = await channel.send("rate me")
    await sent.add_reaction("⭐")
    assert fake.bot_reactions == [(sent.id, "⭐")]

    user = fake.default_user
    assert await fake.add_reaction(sent.id, "👍", user.id)
    assert await fake.remove_reaction(sent.id, "👍", user.id)
    await fake.wait_until(lambda: len(bot.raw_reactions) == 2, 3, "two reaction events")
    (kind_add, add), (kind_remove, remove) = bot.raw_reactions
    assert (kind_add, kind_remove) == ("add", "remove")
    assert add.message_id == sent.id and add.user_id == user.id and add.guild_id == fake.guild_id
    assert str(add.emoji) == "👍" and add.member is not None and add.member.name == "alice"
    assert remove.member is None and remove.event_type == "REACTION_REMOVE"


async def test_rate_limited_followup_is_retried_once(fake: FakeDiscord, bot: TinyBot) -> None:
    fault = fake.fail_next("POST", r"^/webhooks/\d+/[^/]+$", status=429, retry_after=0.2)
    it, _ = await _echo(fake, b"abc")

    posts = [r for r in fake.requests if r.method == "POST" and r.path.startswith("/webhooks/")]
    assert [r.status for r in posts] == [429, 200]
    assert posts[1].time - posts[0].time >= 0.2
    assert fault.hits == 1
    assert len(it.followup_ids) == 1
    assert len(fake.channel_messages()) == 1


async def test_lost_response_retry_with_nonce_creates_one_message(fake: FakeDiscord, bot: TinyBot) -> None:
    channel = bot.get_channel(fake.channel_id)
    assert isinstance(channel, discord.TextChannel)
    fake.fail_next("POST", r"^/channels/\d+/messages$", status=500, when="after")
    sent = await channel.send("hello", nonce=12345)  # discord.py retries a 500 after 1 s

    posts = [r for r in fake.requests if r.method == "POST" and r.path.endswith("/messages")]
    assert [r.status for r in posts] == [500, 200]
    assert [m["content"] for m in fake.channel_messages()] == ["hello"]
    assert sent.id == int(fake.channel_messages()[0]["id"])


@pytest.mark.parametrize("code", [4000, None], ids=["close-frame", "tcp-abort"])
async def test_dropped_gateway_is_resumed_and_events_replayed(
    fake: FakeDiscord, bot: TinyBot, code: int | None
) -> None:
    session_id = await fake.wait_for_session()
    fake.kill_connection(code)
    # Dispatched while the connection is down: kept and replayed after RESUME.
    await fake.add_reaction(123456789, "🔥", fake.default_user.id)

    await fake.wait_until(lambda: bot.raw_reactions, 5, "the replayed reaction")
    assert fake.resumes and fake.resumes[-1]["session_id"] == session_id
    assert len(fake.identifies) == 1 and fake.connections[-1].resumed
    await fake.wait_until(lambda: bot.resumed_count, 3, "on_resumed")

    it = await fake.send_slash_command("ping")
    callback = await fake.wait_for_callback(it)
    assert callback.type == 4 and callback.data["content"] == "pong"


async def test_late_acknowledgement_is_refused(bot: TinyBot, fake: FakeDiscord) -> None:
    fake.ack_deadline = 0.1
    it = await fake.send_slash_command("slow")
    callback = await fake.wait_for_callback(it)
    assert callback.status == 404 and callback.elapsed > 0.1
    await fake.wait_until(lambda: bot.errors, 3, "the bot's error handler")
    assert isinstance(bot.errors[0], discord.NotFound) and bot.errors[0].code == 10062


async def test_upload_limit_and_expired_attachment_urls() -> None:
    async with FakeDiscord(upload_limit=1_000, attachment_ttl=-5) as fake:
        tiny = TinyBot(fake)
        async with running_client(tiny, fake):
            it = await fake.send_slash_command("echo", attachments={"file": ("big.bin", b"x" * 2_000, None)})
            await fake.wait_until(lambda: tiny.errors, 3, "the failed download")
            assert isinstance(tiny.errors[0], discord.NotFound)  # the CDN link had expired
            assert it.followup_ids == []

        attachment = fake.store_attachment(fake.channel_id, "a.txt", b"hello")
        async with aiohttp.ClientSession() as session, session.get(attachment["url"]) as resp:
            assert resp.status == 404

    async with FakeDiscord(upload_limit=1_000) as fake:
        tiny = TinyBot(fake)
        async with running_client(tiny, fake):
            await fake.send_slash_command("echo", attachments={"file": ("big.bin", b"x" * 2_000, None)})
            await fake.wait_until(lambda: tiny.errors, 3, "the refused upload")
            assert isinstance(tiny.errors[0], discord.HTTPException) and tiny.errors[0].status == 413


async def test_patch_client_restores_discord_addresses() -> None:
    before = discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    async with FakeDiscord() as fake:
        assert fake.api_base == discord.http.Route.BASE
        assert str(discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY) == fake.gateway_url
    assert before == (discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY)


class EditingBot(TinyBot):
    """Exercises the other reply paths: original response edits, more follow-ups, files on the callback."""

    async def setup_hook(self) -> None:
        @self.tree.command(name="multi", description="Defer privately, then edit and follow up")
        async def multi(interaction: discord.Interaction) -> None:
            await interaction.response.defer(ephemeral=True, thinking=True)
            original = await interaction.original_response()
            self.log.append(("loading", original.flags.loading))
            await interaction.edit_original_response(content="edited")
            second = await interaction.followup.send("second", wait=True)
            third = await interaction.followup.send("third", file=discord.File(io.BytesIO(b"3"), "3.txt"), wait=True)
            await third.edit(content="third, edited")
            self.log.append(("done", second.id))

        @self.tree.command(name="reply", description="Reply with a file in the callback itself")
        async def reply(interaction: discord.Interaction) -> None:
            await interaction.response.send_message("here", file=discord.File(io.BytesIO(b"RR"), "r.txt"))
            message = await interaction.original_response()
            fetched = await interaction.channel.fetch_message(message.id)
            self.log.append(("fetched", fetched.content, fetched.attachments[0].filename))

        await self.tree.sync()

    @property
    def log(self) -> list[tuple]:
        return self.__dict__.setdefault("_log", [])


async def test_original_response_edits_and_more_followups(fake: FakeDiscord) -> None:
    editing = EditingBot(fake)
    async with running_client(editing, fake):
        it = await fake.send_slash_command("multi")
        await fake.wait_until(lambda: any(entry[0] == "done" for entry in editing.log), 5, "the command to finish")
        assert editing.log[0] == ("loading", True)
        original = fake.messages[it.original_message_id]
        assert original["content"] == "edited" and original["flags"] == 64  # ephemeral kept from the defer
        # The original was filled by the edit, so both follow-ups are new, public messages.
        assert [(m["content"], m["flags"]) for m in fake.followups(it)] == [("second", 0), ("third, edited", 0)]
        assert [f.data for f in fake.message_files(fake.followups(it)[1])] == [b"3"]

        it = await fake.send_slash_command("reply")
        await fake.wait_until(lambda: editing.log[-1][0] == "fetched", 5, "the fetched reply")
        assert editing.log[-1] == ("fetched", "here", "r.txt")
        assert it.callback is not None and it.callback.files[0].data == b"RR"


async def test_reconnect_opcode_and_invalid_session(fake: FakeDiscord, bot: TinyBot) -> None:
    await fake.request_reconnect()  # op 7: the client closes and RESUMEs
    await fake.wait_until(lambda: fake.resumes, 5, "a RESUME")
    assert len(fake.identifies) == 1

    await fake.invalidate_session(resumable=False)  # op 9 false: the client must IDENTIFY again
    await fake.wait_until(lambda: len(fake.identifies) == 2, 10, "a second IDENTIFY")
    it = await fake.send_slash_command("ping")
    assert (await fake.wait_for_callback(it)).data["content"] == "pong"
    assert fake.identify_too_soon == 0  # paced by the hook: no Invalid Session for coming too soon


async def test_auto_sharded_bot_uses_gateway_bot_and_chunks_members() -> None:
    async with FakeDiscord(allowed_privileged_intents=INTENT_GUILD_MEMBERS) as fake:
        sharded = commands.AutoShardedBot(
            command_prefix=commands.when_mentioned,
            intents=discord.Intents.default() | discord.Intents(members=True),
            guild_ready_timeout=0.05,
        )
        async with running_client(sharded, fake):
            assert any(r.path == "/gateway/bot" for r in fake.requests)
            assert fake.identifies[0]["shard"] == [0, 1]
            assert any(frame.op == 8 for frame in fake.gateway_received)  # REQUEST_GUILD_MEMBERS
            guild = sharded.get_guild(fake.guild_id)
            assert guild is not None and guild.get_member(fake.default_user.id) is not None


async def _patch(url: str, payload: dict, files: dict[str, bytes] | None = None, token: str | None = None) -> tuple:
    """A raw PATCH as discord.py sends one: JSON, or multipart with payload_json and files[n]."""
    headers = {"Authorization": f"Bot {token}"} if token else {}
    async with aiohttp.ClientSession() as http:
        if files is None:
            response = await http.patch(url, json=payload, headers=headers)
        else:
            form = aiohttp.FormData()
            form.add_field("payload_json", json.dumps(payload), content_type="application/json")
            for field, data in files.items():
                form.add_field(field, data, filename=f"{field[6:-1]}.jpg", content_type="image/jpeg")
            response = await http.patch(url, data=form, headers=headers)
        async with response:
            return response.status, await response.json()


async def test_message_edits_replace_attachments_and_are_checked_like_discord(fake: FakeDiscord, bot: TinyBot) -> None:
    """PATCH on an interaction's original response (webhook) and on a channel message, with the limits of
    Discord's OpenAPI schemas; every edit request of a message is listed with its time."""
    it, message = await _echo(fake, b"first")
    original = int(message["id"])
    webhook = discord.Webhook.from_state({"id": fake.application_id, "type": 3, "token": it.token}, bot._connection)
    # discord.py's own edit: a new file in place of the old one (attachments lists what stays).
    edited = await webhook.edit_message(
        original, content="painting 40%", attachments=[discord.File(io.BytesIO(b"\xff\xd8\xffpreview"), "p-1.jpg")]
    )
    assert [a.filename for a in edited.attachments] == ["p-1.jpg"]
    assert [f.data for f in fake.message_files(original)] == [b"\xff\xd8\xffpreview"]
    kept = await webhook.edit_message(original, content="painting 60%")  # no attachments given: kept
    assert [a.filename for a in kept.attachments] == ["p-1.jpg"]

    at_original = f"{fake.api_base}/webhooks/{fake.application_id}/{it.token}/messages/@original"
    at_channel = f"{fake.api_base}/channels/{fake.channel_id}/messages/{original}"
    refused = [
        (at_original, {"content": "x" * 2001}, None, "content"),
        (at_original, {"attachments": [{"id": 3}]}, {"files[0]": b"a"}, "attachments"),  # no files[3]
        (at_original, {"attachments": [{"filename": "a.jpg"}]}, {"files[0]": b"a"}, "attachments"),  # no id
        (at_original, {"attachments": [{"id": 0, "filename": ""}]}, {"files[0]": b"a"}, "attachments"),
        (at_original, {"attachments": [{"id": n} for n in range(11)]}, {f"files[{n}]": b"a" for n in range(11)}, ""),
        (at_original, {"embeds": [{"title": str(n)} for n in range(11)]}, None, "embeds"),
        (at_channel, {"content": "x" * 2001}, None, "content"),  # a bot's message: 2000, as on webhooks
    ]
    for url, payload, files, field in refused:
        token = fake.token if url == at_channel else None
        status, body = await _patch(url, payload, files, token)
        assert (status, body["code"]) == (400, 50035) and (not field or field in body["errors"]), (payload, body)
    assert await _patch(at_original, {"content": "", "attachments": [], "components": []}) == (
        400, {"message": "Cannot send an empty message", "code": 50006},
    )  # fmt: skip
    assert fake.messages[original]["content"] == "painting 60%"  # nothing refused changed the message

    status, body = await _patch(at_channel, {"content": "y" * 2000, "attachments": []}, token=fake.token)
    assert status == 200 and body["attachments"] == [] and len(body["content"]) == 2000
    assert (await _patch(at_channel, {"content": "z"}))[0] == 401  # the channel route needs the bot token

    edits = fake.message_edits(original)
    assert len(edits) == 2 + len(refused) + 3 and all(r.method == "PATCH" for r in edits)
    assert [r.status for r in edits][:2] == [200, 200] and edits[0].files[0].data == b"\xff\xd8\xffpreview"
    assert all(earlier.time <= later.time for earlier, later in itertools.pairwise(edits))


# ---------------------------------------------------------------------------------------------- permissions


async def test_permissions_the_bot_lacks_are_refused_like_discord(fake: FakeDiscord, bot: TinyBot) -> None:
    """Each permission the fake hands out is enforced on the route that needs it, with Discord's 403 bodies;
    interaction follow-ups (webhooks) need none."""
    channel = bot.get_channel(fake.channel_id)
    assert isinstance(channel, discord.TextChannel)
    sent = await channel.send("rate me", file=discord.File(io.BytesIO(b"png"), "a.png"))

    async def refusal(action) -> tuple[int, int] | None:
        try:
            await action()
        except discord.HTTPException as error:
            return error.status, error.code
        return None

    def react() -> object:
        return sent.add_reaction("⭐")

    def send_file() -> object:
        return channel.send("x", file=discord.File(io.BytesIO(b"png"), "b.png"))

    def send_text() -> object:
        return channel.send("plain")

    cases = [
        (PERMISSION_ADD_REACTIONS, react, (403, 50013)),
        (PERMISSION_READ_MESSAGE_HISTORY, react, (403, 50001)),
        (PERMISSION_ATTACH_FILES, send_file, (403, 50013)),
        (PERMISSION_SEND_MESSAGES, send_text, (403, 50013)),
        (PERMISSION_VIEW_CHANNEL, send_text, (403, 50001)),
    ]
    for taken, action, expected in cases:
        fake.app_permissions = BOT_PERMISSIONS & ~taken
        assert await refusal(action) == expected, taken
        fake.app_permissions = BOT_PERMISSIONS
        assert await refusal(action) is None, taken  # the same request passes with the permission back
    fake.app_permissions = BOT_PERMISSIONS & ~PERMISSION_ATTACH_FILES
    assert await refusal(send_text) is None  # text needs no ATTACH_FILES
    fake.app_permissions = PERMISSION_ADMINISTRATOR
    assert await refusal(send_file) is None and await refusal(react) is None

    fake.app_permissions = 0
    _, message = await _echo(fake, b"through the interaction")  # webhook follow-ups need no permission
    assert fake.message_files(message)[0].data == b"through the interaction"
    assert [r.response["message"] for r in fake.requests if r.status == 403] == [
        "Missing Permissions", "Missing Access", "Missing Permissions", "Missing Permissions", "Missing Access",
    ]  # fmt: skip


async def test_direct_messages_open_and_can_be_refused(fake: FakeDiscord, bot: TinyBot) -> None:
    alice, bob = fake.default_user, fake.add_user("bob")
    fake.app_permissions = 0  # a DM needs no guild permission
    first = await bot.create_dm(discord.Object(id=alice.id))
    await first.send("your job failed")
    opened = await fake.wait_for(lambda r: r.path == "/users/@me/channels")
    assert opened.json == {"recipient_id": alice.id} and opened.status == 200
    assert [m["content"] for m in fake.dm_messages(alice)] == ["your job failed"]
    assert not [m for m in fake.channel_messages() if m["content"] == "your job failed"]  # not in the guild

    fake.closed_dms.add(bob.id)
    closed = await bot.create_dm(discord.Object(id=bob.id))
    with pytest.raises(discord.Forbidden) as refused:
        await closed.send("hello")
    assert refused.value.code == 50007 and fake.dm_messages(bob) == []
    with pytest.raises(discord.HTTPException) as unknown:
        await bot.http.start_private_message(424242)
    assert (unknown.value.status, unknown.value.code) == (400, 50033)


# ---------------------------------------------------------------------------------------------- reaction rate limit


async def _raw(method: str, url: str, token: str | None = None, **keywords) -> tuple[int, object, dict[str, str]]:
    headers = {"Authorization": f"Bot {token}"} if token else {}
    async with aiohttp.ClientSession() as http, http.request(method, url, headers=headers, **keywords) as response:
        body = await response.json() if response.content_type == "application/json" else None
        return response.status, body, dict(response.headers)


async def test_reactions_are_limited_to_one_per_quarter_second_per_channel(fake: FakeDiscord, bot: TinyBot) -> None:
    channel = bot.get_channel(fake.channel_id)
    assert isinstance(channel, discord.TextChannel)
    first = await channel.send("one")
    direct = await (await bot.create_dm(discord.Object(id=fake.default_user.id))).send("two")
    base = f"{fake.api_base}/channels/{fake.channel_id}/messages/{first.id}/reactions"
    status, _, headers = await _raw("PUT", f"{base}/%E2%AD%90/@me", fake.token)
    assert status == 204 and headers["X-RateLimit-Limit"] == "1" and headers["X-RateLimit-Remaining"] == "0"
    status, body, headers = await _raw("PUT", f"{base}/%F0%9F%94%A5/@me", fake.token)
    assert status == 429 and body["message"] == "You are being rate limited." and body["global"] is False
    assert 0 < body["retry_after"] <= 0.25 and headers["Retry-After"] == "1" and headers["Via"]
    assert headers["X-RateLimit-Scope"] == "user" and float(headers["X-RateLimit-Reset-After"]) <= 0.25
    other = f"{fake.api_base}/channels/{direct.channel.id}/messages/{direct.id}/reactions/%E2%AD%90/@me"
    assert (await _raw("PUT", other, fake.token))[0] == 204  # another channel has its own bucket
    await asyncio.sleep(body["retry_after"])
    assert (await _raw("PUT", f"{base}/%F0%9F%94%A5/@me", fake.token))[0] == 204
    assert fake.bot_reactions == [(first.id, "⭐"), (direct.id, "⭐"), (first.id, "🔥")]

    # discord.py reads the headers and paces itself: five reactions in a row all land, none refused.
    for emoji in ["1️⃣", "2️⃣", "3️⃣", "4️⃣", "5️⃣"]:
        await first.add_reaction(emoji)
    puts = [r for r in fake.requests if r.method == "PUT" and f"/{first.id}/reactions/" in r.path]
    assert [r.status for r in puts[-5:]] == [204] * 5
    assert all(later.time - earlier.time >= 0.2 for earlier, later in itertools.pairwise(puts[-5:]))


# ---------------------------------------------------------------------------------------------- Discord's limits


def _form_error(reply: tuple[int, object, dict[str, str]], *path: str | int) -> bool:
    """Whether Discord's 400 Invalid Form Body names the field at ``path`` in its ``errors`` tree."""
    status, body, _ = reply
    if status != 400 or not isinstance(body, dict) or body.get("code") != 50035:
        return False
    node = body.get("errors", {})
    for key in path:
        node = node.get(str(key)) if isinstance(node, dict) else None
    return isinstance(node, dict) and bool(node.get("_errors"))


def _button(custom_id: str, label: str = "b") -> dict:
    return {"type": 2, "style": 2, "label": label, "custom_id": custom_id}


def _select(options: int, label: str = "o") -> dict:
    return {"type": 3, "custom_id": "pick", "options": [{"label": label, "value": f"v{n}"} for n in range(options)]}


def _multipart(payload: dict, files: dict[str, bytes]) -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field("payload_json", json.dumps(payload), content_type="application/json")
    for n, (name, data) in enumerate(files.items()):
        form.add_field(f"files[{n}]", data, filename=name, content_type="image/png")
    return form


async def test_message_limits_are_refused_like_discord(fake: FakeDiscord, bot: TinyBot) -> None:
    """Each limit broken once, on a channel send and on an interaction follow-up: 400 with the field named in the
    ``errors`` tree (50035), or 413 (40005) for sizes; the message just inside each limit is taken."""
    it, _ = await _echo(fake, b"png")
    channel = f"{fake.api_base}/channels/{fake.channel_id}/messages"
    webhook = f"{fake.api_base}/webhooks/{fake.application_id}/{it.token}?wait=true"
    row = [_button(f"b{n}") for n in range(5)]
    broken = [
        ({"content": "x" * 2001}, ("content",)),
        ({"embeds": [{"title": str(n)} for n in range(11)]}, ("embeds",)),
        ({"content": "c", "components": [{"type": 1, "components": [_button(f"r{n}")]} for n in range(6)]},
         ("components",)),
        ({"content": "c", "components": [{"type": 1, "components": [*row, _button("sixth")]}]},
         ("components", 0, "components")),
        ({"content": "c", "components": [{"type": 1, "components": [_button("x" * 101)]}]},
         ("components", 0, "components", 0, "custom_id")),
        ({"content": "c", "components": [{"type": 1, "components": [_select(26)]}]},
         ("components", 0, "components", 0, "options")),
        ({"content": "c", "components": [{"type": 1, "components": [_select(2, label="l" * 101)]}]},
         ("components", 0, "components", 0, "options", 0, "label")),
        ({"content": "c", "components": [{"type": 1, "components": [_select(2), _button("beside")]}]},
         ("components", 0, "components")),
        ({"content": "c", "components": [{"type": 1, "components": [_button("same")]},
                                         {"type": 1, "components": [_button("other"), _button("same")]}]},
         ("components", 1, "components", 1, "custom_id")),
    ]  # fmt: skip
    for payload, path in broken:
        for url, token in ((channel, fake.token), (webhook, None)):
            reply = await _raw("POST", url, token, json=payload)
            assert _form_error(reply, *path), (url, payload, reply[:2])
    within = {
        "content": "x" * 2000,
        "embeds": [{"title": str(n)} for n in range(10)],
        "components": [{"type": 1, "components": row} for _ in range(4)]
        + [{"type": 1, "components": [_select(25, label="l" * 100)]}],
    }
    within["components"] = [
        {"type": 1, "components": [_button(f"{r}-{n}-" + "i" * 90) for n in range(5)]} for r in range(4)
    ] + within["components"][4:]
    for url, token in ((channel, fake.token), (webhook, None)):
        assert (await _raw("POST", url, token, json=within))[0] == 200

    eleven = {f"f{n}.png": b"p" for n in range(11)}
    mib = 1024 * 1024
    for url, token in ((channel, fake.token), (webhook, None)):
        reply = await _raw("POST", url, token, data=_multipart({"content": "c"}, eleven))
        assert _form_error(reply, "attachments"), reply[:2]
        big = await _raw("POST", url, token, data=_multipart({}, {"big.png": b"b" * (10 * mib + 1)}))
        assert big[0] == 413 and big[1]["code"] == 40005  # one file over 10 MiB
        heavy = await _raw("POST", url, token, data=_multipart({}, {f"{n}.png": b"h" * (9 * mib) for n in range(3)}))
        assert heavy[0] == 413 and heavy[1]["code"] == 40005  # 27 MiB in one request, each file under 10 MiB
        fits = await _raw("POST", url, token, data=_multipart({}, {f"{n}.png": b"h" * (8 * mib) for n in range(3)}))
        assert fits[0] == 200


async def test_autocomplete_answers_are_held_to_discords_limits(fake: FakeDiscord, bot: TinyBot) -> None:
    """An autocomplete answer with 26 choices, or a choice name over 100 characters, is refused (50035)."""

    async def answer(choices: list[dict]) -> tuple[int, object, dict[str, str]]:
        # A command the bot does not know: discord.py leaves the interaction to us.
        it = await fake.send_autocomplete("unknown", {"name": "a"}, focused="name")
        url = f"{fake.api_base}/interactions/{it.id}/{it.token}/callback"
        return await _raw("POST", url, json={"type": 8, "data": {"choices": choices}})

    assert _form_error(await answer([{"name": f"s{n}", "value": f"s{n}"} for n in range(26)]), "data", "choices")
    assert _form_error(await answer([{"name": "n" * 101, "value": "v"}]), "data", "choices", 0, "name")
    assert _form_error(await answer([{"name": "", "value": "v"}]), "data", "choices", 0, "name")
    assert (await answer([{"name": "n" * 100, "value": f"s{n}"} for n in range(25)]))[0] == 204


# ---------------------------------------------------------------------------------------------- reading a channel back


async def test_channel_messages_are_listed_newest_first_with_followups_as_on_discord(
    fake: FakeDiscord, bot: TinyBot
) -> None:
    """GET /channels/{id}/messages: interaction follow-ups are the application's messages in the channel; limit,
    before and after as Discord documents them; refused or empty where the bot's permissions say so."""
    channel = bot.get_channel(fake.channel_id)
    assert isinstance(channel, discord.TextChannel)
    _, followup = await _echo(fake, b"through the interaction")
    sent = [await channel.send(f"message {index}") for index in range(3)]

    listed = [message async for message in channel.history(limit=10)]
    assert [message.id for message in listed] == [*(m.id for m in reversed(sent)), int(followup["id"])]
    assert listed[-1].author.id == fake.application_id and listed[-1].attachments[0].filename == "selfie.png"
    after = [message async for message in channel.history(limit=2, after=discord.Object(id=int(followup["id"])))]
    assert [message.id for message in after] == [sent[0].id, sent[1].id]  # the oldest two after it
    before = [message async for message in channel.history(limit=2, before=sent[2])]
    assert [message.id for message in before] == [sent[1].id, sent[0].id]  # the newest two before it

    url = f"{fake.api_base}/channels/{fake.channel_id}/messages"
    for index in range(60):
        fake._message(channel_id=fake.channel_id, payload={"content": f"bulk {index}"}, files=[])
    status, body, _ = await _raw("GET", url, fake.token)
    assert status == 200 and isinstance(body, list) and len(body) == 50  # Discord's default limit
    assert body[0]["content"] == "bulk 59" and [int(m["id"]) for m in body] == sorted(
        (int(m["id"]) for m in body), reverse=True
    )
    for limit in ("0", "101"):
        assert _form_error(await _raw("GET", url, fake.token, params={"limit": limit}), "limit"), limit
    both = await _raw("GET", url, fake.token, params={"before": str(sent[2].id), "after": str(sent[0].id)})
    assert both[0] == 400 and both[1]["code"] == 50035  # mutually exclusive
    unknown = await _raw("GET", f"{fake.api_base}/channels/424242/messages", fake.token)
    assert unknown[0] == 404 and unknown[1]["code"] == 10003

    fake.app_permissions = BOT_PERMISSIONS & ~PERMISSION_VIEW_CHANNEL
    with pytest.raises(discord.Forbidden) as refused:
        [message async for message in channel.history(limit=5)]
    assert refused.value.code == 50001
    fake.app_permissions = BOT_PERMISSIONS & ~PERMISSION_READ_MESSAGE_HISTORY
    assert [message async for message in channel.history(limit=5)] == []  # "no messages will be returned"


async def test_a_held_answer_comes_after_the_message_exists(fake: FakeDiscord, bot: TinyBot) -> None:
    """when="held": the follow-up is created at once, its answer waits: a bot killed meanwhile never hears of it."""
    held = fake.fail_next("POST", r"^/webhooks/\d+/[^/]+$", when="held", retry_after=1.0)
    echo = asyncio.ensure_future(_echo(fake, b"held back"))
    await fake.wait_until(lambda: held.hits, 5, "the held follow-up")
    post = next(r for r in fake.requests if r.fault is held)
    assert post.status is None  # not answered yet
    assert [fake.message_files(m)[0].data for m in fake.channel_messages() if m.get("attachments")] == [b"held back"]
    await asyncio.wait_for(echo, 5)  # the bot's view of the message came when it existed, not when answered
    await fake.wait_until(lambda: post.status, 5, "the held answer")
    assert post.status == 200 and fake._loop_time() - post.time >= 1.0 and len(fake.channel_messages()) == 1
