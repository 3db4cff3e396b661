"""The bot's settings that need more than a type: ``MMPP_FAMILY_QUEUES``, which sends a variant of another engine
family to that family's workers."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.settings import parse_family_queues
from mmpp.errors import ErrorCode, MmppError
from tests.bot.conftest import bot_settings


def test_family_queues_name_each_served_family_and_its_queue_base(tmp_path: Path) -> None:
    assert parse_family_queues("") == {}
    assert parse_family_queues(" flux2-klein = mmpp-klein , sdxl=mmpp.sdxl_2 ,") == {
        "flux2-klein": "mmpp-klein", "sdxl": "mmpp.sdxl_2"
    }  # fmt: skip
    settings = bot_settings(tmp_path, family_queues="flux2-klein=mmpp-klein")
    assert settings.family_queues_map() == {"flux2-klein": "mmpp-klein"}


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("flux2-klein", "is not family=queue"),
        ("=mmpp-klein", "is not family=queue"),
        ("flux3=mmpp-flux", "unknown family 'flux3'"),
        ("sdxl=a,sdxl=b", "names the family sdxl twice"),
        ("sdxl=mmpp-x.fast", "is not a queue base"),
        ("sdxl=two words", "is not a queue base"),
        ("sdxl=shared,flux2-klein=shared", "two families share the queue shared"),
    ],
)
def test_a_bad_family_queue_setting_is_one_line_naming_the_setting(text: str, complaint: str) -> None:
    with pytest.raises(MmppError) as raised:
        parse_family_queues(text)
    assert raised.value.code is ErrorCode.INVALID_REQUEST
    assert raised.value.message.startswith("MMPP_FAMILY_QUEUES") and complaint in raised.value.message
    assert "\n" not in raised.value.message
