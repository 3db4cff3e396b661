"""Photos waiting for a style (bot/core/choices.py): bounded in number and age, chosen only by their sender."""

from __future__ import annotations

import pytest

from bot.core.choices import PendingChoices
from mmpp.errors import ErrorCode, MmppError
from tests.bot.conftest import ALICE, BOB


def test_a_choice_is_taken_once_with_its_options() -> None:
    pending = PendingChoices()
    token = pending.put(ALICE, ("file-id", 1000, None), {"prompt": "a pirate"})
    assert 1 <= len(token.encode()) <= 10  # fits a 64-byte button beside the longest style name
    choice = pending.take(token, ALICE)
    assert (choice.photo, choice.options) == (("file-id", 1000, None), {"prompt": "a pirate"})
    with pytest.raises(MmppError) as again:
        pending.take(token, ALICE)
    assert again.value.code is ErrorCode.NOT_FOUND and "send it again" in again.value.message


def test_only_the_sender_picks_the_style_of_their_photo() -> None:
    pending = PendingChoices()
    token = pending.put(ALICE, "alice's selfie", {})
    with pytest.raises(MmppError) as stranger:
        pending.take(token, BOB)
    assert stranger.value.code is ErrorCode.NOT_ALLOWED
    assert pending.take(token, ALICE).photo == "alice's selfie"  # still there for her


def test_the_oldest_choices_are_dropped_beyond_the_limit() -> None:
    pending = PendingChoices(limit=3)
    tokens = [pending.put(ALICE, index, {}) for index in range(5)]
    assert len(pending) == 3
    for token in tokens[:2]:
        with pytest.raises(MmppError):
            pending.take(token, ALICE)
    assert [pending.take(token, ALICE).photo for token in tokens[2:]] == [2, 3, 4]


def test_choices_expire() -> None:
    now = [0.0]
    pending = PendingChoices(max_age=60.0, clock=lambda: now[0])
    old = pending.put(ALICE, "old", {})
    now[0] = 30.0
    recent = pending.put(ALICE, "recent", {})
    now[0] = 61.0
    with pytest.raises(MmppError):
        pending.take(old, ALICE)
    assert pending.take(recent, ALICE).photo == "recent" and len(pending) == 0
