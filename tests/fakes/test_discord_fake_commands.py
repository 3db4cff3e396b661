"""The Discord fake's command rules: what Discord refuses in a command registration (a bulk overwrite), and the
invocations no Discord client could send (a value outside an option's choices, range or length, an option the
command does not have, a required one missing), so that a bot's command is tested as Discord would take it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.fakes.discord_api import FakeDiscord

STRING, INTEGER, BOOLEAN = 3, 4, 5


@pytest.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord() as server:
        yield server


async def register(fake: FakeDiscord, options: list[dict[str, Any]]) -> tuple[int, Any]:
    url = f"{fake.api_base}/applications/{fake.application_id}/commands"
    command = {"name": "settings", "description": "defaults", "type": 1, "options": options}
    headers = {"Authorization": f"Bot {fake.token}"}
    async with aiohttp.ClientSession() as http, http.put(url, json=[command], headers=headers) as response:
        return response.status, await response.json()


def option(name: str, kind: int, **extra: Any) -> dict[str, Any]:
    return {"name": name, "description": f"the {name}", "type": kind, **extra}


SETTINGS = [
    option("style", STRING, choices=[{"name": "Anime", "value": "anime"}, {"name": "Comic", "value": "comic"}]),
    option("count", INTEGER, min_value=1, max_value=4),
    option("suffix", STRING, min_length=1, max_length=200),
    option("clear", BOOLEAN),
]


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ([option("count", INTEGER), option("count", STRING)], "option names must be unique"),
        ([option("count", INTEGER, min_value=5, max_value=1)], "min_value must be less than or equal to max_value"),
        ([option("suffix", STRING, min_length=9, max_length=2)], "min_length must be less than or equal"),
        (
            [option("style", STRING, choices=[{"name": "A", "value": "a"}, {"name": "B", "value": "a"}])],
            "choice values must be unique",
        ),
        ([option("clear", BOOLEAN), option("style", STRING, required=True)], "required options must be placed"),
    ],
)
async def test_a_registration_discord_refuses_is_refused(
    fake: FakeDiscord, options: list[dict[str, Any]], problem: str
) -> None:
    status, body = await register(fake, options)
    assert status == 400 and body["code"] == 50035 and problem in body["errors"]["_errors"][0]["message"]
    assert fake.command("settings") is None


async def test_invocations_no_client_could_send_are_refused(fake: FakeDiscord) -> None:
    status, _ = await register(fake, SETTINGS)
    assert status == 200 and fake.command("settings") is not None
    for options, problem in [
        ({"style": "building"}, "not one of the choices"),
        ({"count": 5}, "outside 1..4"),
        ({"count": 0}, "outside 1..4"),
        ({"suffix": "x" * 201}, "outside 1..200"),
        ({"colour": "red"}, "has no option 'colour'"),
    ]:
        with pytest.raises(ValueError, match=problem):
            fake._command_data("settings", options, None, fake.channel_id)
    data = fake._command_data("settings", {"style": "comic", "count": 4, "clear": True}, None, fake.channel_id)
    assert [(item["name"], item["value"]) for item in data["options"]] == [("style", "comic"), ("count", 4),
                                                                            ("clear", True)]  # fmt: skip


async def test_a_required_option_must_be_given(fake: FakeDiscord) -> None:
    status, _ = await register(fake, [option("style", STRING, required=True), option("count", INTEGER)])
    assert status == 200
    with pytest.raises(ValueError, match="required option 'style' is missing"):
        fake._command_data("settings", {"count": 2}, None, fake.channel_id)
