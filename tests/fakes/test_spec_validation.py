"""The fakes refuse what the platforms' own API descriptions refuse, the way the platforms refuse it.

Each deliberately broken request goes through the running fake (raw HTTP, or the real client library where it can
be made to send it) and must come back with the platform's error shape: Discord's 400 ``Invalid Form Body``
(50035) naming the field in its ``errors`` tree, Telegram's ``ok: false`` 400 ``Bad Request: ...``. The requests
chosen are ones the fakes' hand-written rules do not check, so these tests fail when the specification check is
taken out of the fakes. The vendored subsets must also cover every route and method the fakes implement.
"""

from __future__ import annotations

import io
import json
import re
import struct
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import discord
import httpx
import pytest
from telegram.error import BadRequest
from telegram.ext import ApplicationBuilder

from tests.fakes.discord_api import FakeDiscord, running_client
from tests.fakes.spec_validation import SPECS, discord_spec, telegram_spec
from tests.fakes.specs import vendor
from tests.fakes.telegram_api import FakeTelegram, FakeUser

TOKEN = "123456:TEST-spec_token"
ALICE = FakeUser(1001, "Alice", "alice")
SHARED = Path(vendor.DEFAULT_SHARED)


# ------------------------------------------------------------------------------------------------ Discord


@pytest.fixture
async def discord_fake() -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord() as server:
        yield server


async def _raw(method: str, url: str, token: str | None = None, **keywords: Any) -> tuple[int, Any]:
    headers = {"Authorization": f"Bot {token}"} if token else {}
    async with aiohttp.ClientSession() as http, http.request(method, url, headers=headers, **keywords) as response:
        body = await response.json() if response.content_type == "application/json" else None
        return response.status, body


def _form_error(reply: tuple[int, Any], *path: str | int) -> str | None:
    """The first error code Discord's 400 Invalid Form Body gives at ``path`` of its ``errors`` tree."""
    status, body = reply
    if (
        status != 400
        or not isinstance(body, dict)
        or body.get("code") != 50035
        or body["message"] != "Invalid Form Body"
    ):
        return None
    node = body.get("errors", {})
    for key in path:
        node = node.get(str(key)) if isinstance(node, dict) else None
    if not isinstance(node, dict) or not node.get("_errors"):
        return None
    return str(node["_errors"][0]["code"])


async def test_discord_fake_refuses_what_the_openapi_description_refuses(discord_fake: FakeDiscord) -> None:
    channel = f"{discord_fake.api_base}/channels/{discord_fake.channel_id}/messages"
    token = discord_fake.token
    # Unknown field (a misspelling Discord would silently drop).
    assert _form_error(await _raw("POST", channel, token, json={"content": "hi", "contnet": "x"}), "contnet") == (
        "UNKNOWN_FIELD"
    )
    # Wrong type, nested wrong type, nested too-long string, nested missing required field.
    assert _form_error(await _raw("POST", channel, token, json={"content": "hi", "tts": "yes"}), "tts") == (
        "BOOLEAN_TYPE_CONVERT"
    )
    reply = await _raw("POST", channel, token, json={"embeds": [{"title": "t", "color": "red"}]})
    assert _form_error(reply, "embeds", 0, "color") == "NUMBER_TYPE_COERCE"
    reply = await _raw("POST", channel, token, json={"embeds": [{"title": "x" * 257}]})
    assert _form_error(reply, "embeds", 0, "title") == "BASE_TYPE_MAX_LENGTH"
    reply = await _raw("POST", channel, token, json={"content": "c", "message_reference": {"fail_if_not_exists": 1}})
    assert _form_error(reply, "message_reference", "fail_if_not_exists") == "BOOLEAN_TYPE_CONVERT"
    # A component of an unknown type is refused at its discriminator.
    reply = await _raw("POST", channel, token, json={"content": "c", "components": [{"type": 99}]})
    assert _form_error(reply, "components", 0, "type") == "UNION_TYPE_CHOICES"
    # Multipart: payload_json is checked like a JSON body, and a file part must be a declared files[n].
    form = aiohttp.FormData()
    form.add_field("payload_json", json.dumps({"content": "c", "nonce": "n" * 26}), content_type="application/json")
    form.add_field("file", b"png", filename="a.png", content_type="image/png")
    reply = await _raw("POST", channel, token, data=form)
    assert _form_error(reply, "nonce") and _form_error(reply, "file") == "UNKNOWN_FIELD"
    # Query parameters: unknown names and wrong types.
    guild = f"{discord_fake.api_base}/guilds/{discord_fake.guild_id}"
    assert _form_error(await _raw("GET", f"{guild}?with_countz=true", token), "with_countz") == "UNKNOWN_FIELD"
    assert _form_error(await _raw("GET", f"{guild}?with_counts=maybe", token), "with_counts") == (
        "BOOLEAN_TYPE_CONVERT"
    )
    # A route that takes no body refuses one.
    typing = f"{discord_fake.api_base}/channels/{discord_fake.channel_id}/typing"
    assert _form_error(await _raw("POST", typing, token, json={"x": 1})) == "BASE_TYPE_INVALID"
    # Unknown route and method, in Discord's shape.
    assert await _raw("GET", f"{discord_fake.api_base}/no/such/route", token) == (
        404,
        {"message": "404: Not Found", "code": 0},
    )
    assert (await _raw("DELETE", f"{discord_fake.api_base}/users/@me", token))[0] == 405
    # What Discord takes, the fake takes.
    valid = {
        "content": "hi",
        "tts": False,
        "embeds": [{"title": "t" * 256, "color": 0xFF0000}],
        "allowed_mentions": {"parse": [], "users": [discord_fake.default_user.id]},
        "components": [{"type": 1, "components": [{"type": 2, "style": 1, "label": "ok", "custom_id": "ok"}]}],
        "nonce": "n" * 25,
        "enforce_nonce": True,
    }
    status, body = await _raw("POST", channel, token, json=valid)
    assert status == 200, body


async def test_discord_interaction_callback_is_checked_against_its_schema(discord_fake: FakeDiscord) -> None:
    client = discord.Client(intents=discord.Intents.default(), guild_ready_timeout=0.05)
    async with running_client(client, discord_fake):
        missing = await discord_fake.send_slash_command("unknown", {"note": "a"})
        url = f"{discord_fake.api_base}/interactions/{missing.id}/{missing.token}/callback"
        # The callback type is required, and 4 or 5 for a command (CreateMessageInteractionCallbackRequest).
        assert _form_error(await _raw("POST", url, json={"data": {"content": "hi"}}), "type") == ("BASE_TYPE_REQUIRED")
        reply = await _raw("POST", url, json={"type": 4, "data": {"content": "hi", "username": "not here"}})
        assert _form_error(reply, "data", "username") == "UNKNOWN_FIELD"
        assert (await _raw("POST", url, json={"type": 4, "data": {"content": "hi"}}))[0] == 204


async def test_discord_py_requests_pass_and_a_bad_one_from_discord_py_is_refused(discord_fake: FakeDiscord) -> None:
    """The real client's own requests go through the check; one it sends wrongly comes back as HTTPException."""
    client = discord.Client(intents=discord.Intents.default(), guild_ready_timeout=0.05)
    async with running_client(client, discord_fake):
        channel = client.get_channel(discord_fake.channel_id)
        assert isinstance(channel, discord.TextChannel)
        picture = discord.File(io.BytesIO(_png()), "a.png")
        message = await channel.send(
            "hi", embed=discord.Embed(title="t", colour=discord.Colour.blurple()), file=picture
        )
        await message.edit(content="edited")
        await message.add_reaction("👍")
        with pytest.raises(discord.HTTPException) as refused:
            await channel.send(embed=discord.Embed(title="x" * 257))
        assert refused.value.status == 400 and refused.value.code == 50035
        assert "embeds.0.title" in str(refused.value)


def test_discord_path_parameters_routes_and_methods() -> None:
    spec = discord_spec()
    refused = spec.check("GET", "/channels/general")
    assert refused is not None and refused.status == 400
    assert refused.body["errors"]["channel_id"]["_errors"][0]["code"] == "NUMBER_TYPE_COERCE"
    assert spec.check("GET", "/channels/123") is None
    assert spec.check("GET", "/webhooks/1/token/messages/@original") is None  # the literal path, not {message_id}
    assert spec.check("GET", "/nowhere") == discord_spec().check("GET", "/users/1/nowhere")
    not_found = spec.check("GET", "/nowhere")
    assert not_found is not None and (not_found.status, not_found.body) == (
        404,
        {"message": "404: Not Found", "code": 0},
    )
    wrong_method = spec.check("DELETE", "/gateway")
    assert wrong_method is not None and wrong_method.status == 405
    # A body is required where the description says so, and refused where a route takes none.
    assert spec.check("PUT", "/applications/1/commands", content_type="application/json") is not None
    assert spec.check("PUT", "/channels/1/messages/2/reactions/👍/@me", body={"emoji": "x"}) is not None
    # Snowflakes as JSON integers (the documented exception) but not as negative numbers or text.
    create = "/channels/1/messages"
    assert spec.check("POST", create, body={"content": "c", "message_reference": {"message_id": 42}}) is None
    assert spec.check("POST", create, body={"content": "c", "message_reference": {"message_id": -1}}) is not None
    assert spec.check("POST", create, body={"content": "c", "message_reference": {"message_id": "x"}}) is not None
    # Null is taken where the schema is nullable, refused where it is not.
    assert spec.check("POST", create, body={"content": None, "embeds": [{"title": "t"}]}) is None
    button = {"type": 2, "style": None, "custom_id": "b"}
    assert spec.check("POST", create, body={"components": [{"type": 1, "components": [button]}]}) is not None


def test_discord_edits_take_discord_py_tts_false_but_not_true() -> None:
    """discord.py sends ``tts: false`` in every edit (the documented exception); ``true`` would be dropped."""
    spec = discord_spec()
    assert spec.check("PATCH", "/channels/1/messages/2", body={"content": "e", "tts": False}) is None
    assert spec.check("PATCH", "/channels/1/messages/2", body={"content": "e", "tts": True}) is not None


# ------------------------------------------------------------------------------------------------ Telegram


@pytest.fixture
async def telegram_fake() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram(token=TOKEN, max_long_poll=1.0) as server:
        yield server


async def _call(fake: FakeTelegram, method: str, **keywords: Any) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=5) as client:
        response = await client.post(f"{fake.base_url}{fake.token}/{method}", **keywords)
        body: dict[str, Any] = response.json()
        assert response.status_code == body.get("error_code", 200)
        return body


def _refused(body: dict[str, Any], *words: str) -> bool:
    description = str(body.get("description", ""))
    return (
        body.get("ok") is False
        and body.get("error_code") == 400
        and description.startswith("Bad Request: ")
        and all(word in description for word in words)
    )


async def test_telegram_fake_refuses_what_the_bot_api_description_refuses(telegram_fake: FakeTelegram) -> None:
    chat = telegram_fake.private_chat(ALICE)
    send = {"chat_id": chat.id, "text": "hi"}
    # Unknown parameter, at the top and inside a JSON-serialised object.
    assert _refused(await _call(telegram_fake, "sendMessage", json={**send, "parse_mod": "HTML"}), '"parse_mod"')
    button = {"text": "a", "callback_data": "b", "colour": "red"}
    markup = {"inline_keyboard": [[button]]}
    body = await _call(telegram_fake, "sendMessage", json={**send, "reply_markup": markup})
    assert _refused(body, "reply_markup.inline_keyboard[0][0].colour")
    # Missing required parameter (answerCallbackQuery's id) and a required field of an object (BotCommand).
    assert _refused(await _call(telegram_fake, "answerCallbackQuery", json={"text": "x"}), '"callback_query_id"')
    commands = {"commands": [{"command": "start"}]}
    assert _refused(await _call(telegram_fake, "setMyCommands", json=commands), "commands[0].description", "required")
    # Wrong types: a Boolean, an Integer inside an object, an object that is not JSON.
    assert _refused(await _call(telegram_fake, "sendMessage", json={**send, "disable_notification": "maybe"}))
    reply = {"message_id": "first"}
    assert _refused(await _call(telegram_fake, "sendMessage", json={**send, "reply_parameters": reply}), "Integer")
    form = {**send, "reply_markup": "{not json"}
    assert _refused(await _call(telegram_fake, "sendMessage", data=form), "reply_markup", "JSON")
    # Too long: a limit the description states ("1-64 characters").
    force = {"force_reply": True, "input_field_placeholder": "x" * 65}
    assert _refused(await _call(telegram_fake, "sendMessage", json={**send, "reply_markup": force}), "1-64 characters")
    # An uploaded file where the description allows none.
    files = {"text": ("t.txt", b"hi", "text/plain")}
    assert _refused(await _call(telegram_fake, "sendMessage", data={"chat_id": str(chat.id)}, files=files))
    # Unknown method, in Telegram's shape.
    unknown = await _call(telegram_fake, "sendPigeon", json=send)
    assert unknown == {"ok": False, "error_code": 404, "description": "Not Found"}
    # What Telegram takes, the fake takes (form fields as text, JSON objects, numbers as strings).
    valid = {
        **send,
        "disable_notification": True,
        "reply_markup": {"inline_keyboard": [[{"text": "1", "callback_data": "r" * 64}]]},
        "link_preview_options": {"is_disabled": True},
    }
    assert (await _call(telegram_fake, "sendMessage", json=valid))["ok"] is True
    as_form = {"chat_id": str(chat.id), "text": "42", "disable_notification": "true"}
    assert (await _call(telegram_fake, "sendMessage", data=as_form))["ok"] is True


async def test_python_telegram_bot_calls_pass_and_an_unknown_parameter_is_refused(telegram_fake: FakeTelegram) -> None:
    chat = telegram_fake.private_chat(ALICE)
    app = ApplicationBuilder().token(TOKEN).base_url(telegram_fake.base_url).build()
    async with app:
        sent = await app.bot.send_photo(chat.id, _png(), caption="c")
        await app.bot.edit_message_caption(chat.id, sent.message_id, caption="edited")
        await app.bot.set_message_reaction(chat.id, sent.message_id, "👍")
        with pytest.raises(BadRequest, match="bogus"):
            await app.bot.send_message(chat.id, "hi", api_kwargs={"bogus": 1})


def test_telegram_description_limits_and_subtypes() -> None:
    spec = telegram_spec()
    assert spec.check("getUpdates", {"limit": 101}) is not None  # "Values between 1-100 are accepted"
    assert spec.check("getUpdates", {"limit": 100, "timeout": 0, "allowed_updates": ["message"]}) is None
    single = {"chat_id": 1, "media": [{"type": "photo", "media": "attach://a"}]}
    assert spec.check("sendMediaGroup", single, ["a"]) is not None  # "must include 2-10 items"
    pair = {"chat_id": 1, "media": [{"type": "photo", "media": "attach://a"}, {"type": "photo", "media": "id"}]}
    assert spec.check("sendMediaGroup", pair, ["a"]) is None
    mixed = {"chat_id": 1, "media": [{"type": "photo", "media": "a"}, {"type": "document", "media": "b"}]}
    assert spec.check("sendMediaGroup", mixed) is not None  # one array type for all items
    reaction = {"chat_id": 1, "message_id": 2, "reaction": [{"type": "emoji", "emoji": "👍"}]}
    assert spec.check("setMessageReaction", reaction) is None
    reaction["reaction"] = [{"type": "sticker", "emoji": "👍"}]
    assert spec.check("setMessageReaction", reaction) is not None
    emoji = {"chat_id": 1, "message_id": 2, "reaction": [{"type": "emoji", "emoji": "👍", "is_big": True}]}
    assert spec.check("setMessageReaction", emoji) is not None  # is_big is a parameter, not a ReactionType field
    # An upload is a file part: named by the parameter itself or by attach://, and must be in the request.
    assert spec.check("sendPhoto", {"chat_id": 1}, ["photo"]) is None
    assert spec.check("sendPhoto", {"chat_id": 1}) is not None
    assert spec.check("sendPhoto", {"chat_id": 1, "photo": "attach://p"}, ["p"]) is None
    assert spec.check("sendDocument", {"chat_id": 1, "document": "file-id"}) is None
    callback = {"callback_query_id": "1", "text": "é" * 200}
    assert spec.check("answerCallbackQuery", callback) is None
    callback["text"] += "😀"  # 202 UTF-16 code units
    refused = spec.check("answerCallbackQuery", callback)
    assert refused is not None and refused.body["description"] == "Bad Request: MESSAGE_TOO_LONG"


# ------------------------------------------------------------------------------------------------ coverage


async def test_vendored_descriptions_cover_every_route_and_method_the_fakes_implement() -> None:
    spec = discord_spec()
    missing = []
    async with FakeDiscord() as fake:
        for route in fake._routes:
            if not any(
                method == route.method and route.pattern.match(_sample_path(template))
                for method, template in spec.routes()
            ):
                missing.append((route.method, route.pattern.pattern))
    assert not missing, f"Discord routes the fake implements but tests/fakes/specs lacks: {missing}"
    async with FakeTelegram(token=TOKEN) as telegram:
        implemented = {name for name, _ in telegram._methods.values()}
    assert implemented <= telegram_spec().methods(), implemented - telegram_spec().methods()


def _sample_path(template: str) -> str:
    """A concrete path for a template: a token for tokens, an emoji for the emoji name, 1 for every id."""
    path = template.replace("{interaction_token}", "token").replace("{webhook_token}", "token")
    return re.sub(r"\{\w+\}", "1", path.replace("{emoji_name}", "👍"))


@pytest.mark.skipif(not (SHARED / "discord" / "openapi.json").is_file(), reason="../shared/specs is not here")
def test_vendored_subsets_are_what_vendor_py_makes_from_the_full_files() -> None:
    """The committed subsets are regenerated whenever vendor.py's lists change (run vendor.py)."""
    full_discord = json.loads((SHARED / "discord" / "openapi.json").read_text(encoding="utf-8"))
    full_telegram = json.loads((SHARED / "telegram" / "api.json").read_text(encoding="utf-8"))
    assert json.loads((SPECS / "discord_openapi.json").read_text(encoding="utf-8")) == vendor.discord_subset(
        full_discord
    )
    assert json.loads((SPECS / "telegram_api.json").read_text(encoding="utf-8")) == vendor.telegram_subset(
        full_telegram
    )


def _png() -> bytes:
    """A valid 8x8 PNG, built by hand."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + b"\x80\x40\x20" * 8 for _ in range(8))
    header = struct.pack(">IIBBBBB", 8, 8, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
