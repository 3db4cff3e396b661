"""Ratings (bot/core/ratings.py): one per rater and picture, withdrawn, last reaction wins; the report."""

from __future__ import annotations

import pytest

from bot.core import ChatCore
from bot.core.ratings import feedback_report, rating_of_reactions
from bot.storage import Storage
from mmpp.errors import MmppError
from mmpp.stats import mean_interval
from tests.bot.conftest import ALICE, BOB, RecordingDelivery, order


async def test_ratings_one_per_rater_and_picture_updated_and_withdrawn(
    core: ChatCore, storage: Storage, delivery: RecordingDelivery
) -> None:
    job, _ = await core.order_profile(order(count="2"))
    await core.wait_idle(timeout=5)
    first_ref = f"message-{job.id}-1"
    assert await core.rate_message(BOB, first_ref, 4, "reaction")
    assert await core.rate_message(ALICE, first_ref, 5, "reaction")
    assert await core.rate_message(BOB, first_ref, 2, "reaction")  # a changed reaction
    picture = (await storage.pictures(job.id))[0]
    bob = await storage.find_user("test", "bob")
    assert await storage.rating(picture.id, bob) == 2
    assert await storage.count("ratings") == 2
    assert await core.rate_message(BOB, first_ref, None, "reaction")  # removed
    assert await storage.rating(picture.id, bob) is None
    assert not await core.rate_message(BOB, "some-other-message", 3, "reaction")
    with pytest.raises(MmppError):
        await core.rate(BOB, picture.id, 7, "button")


def test_mean_interval_matches_a_hand_computation() -> None:
    mean, low, high = mean_interval([4, 5, 3, 4])
    # mean 4, sd 0.8165, t(3) = 3.182: half width 3.182 * 0.8165 / 2 = 1.299
    assert mean == 4 and low == pytest.approx(2.701, abs=1e-3) and high == pytest.approx(5.299, abs=1e-3)
    assert mean_interval([5]) == (5, None, None)
    assert mean_interval([]) == (None, None, None)


async def test_feedback_report_per_style(core: ChatCore, storage: Storage) -> None:
    job, _ = await core.order_profile(order(count="2"))
    await core.wait_idle(timeout=5)
    for rater, stars in ((ALICE, 5), (BOB, 3)):
        await core.rate_message(rater, f"message-{job.id}-1", stars, "reaction")
    report = {row["style"]: row for row in await feedback_report(storage)}
    anime = report["anime"]
    assert (anime["jobs"], anime["pictures"], anime["ratings"], anime["mean"]) == (1, 2, 2, 4.0)
    assert anime["positive_share"] == 0.5 and anime["ci95_low"] < 4 < anime["ci95_high"]


@pytest.mark.parametrize(
    ("emojis", "stars"),
    [
        (["🔥"], 5),
        (["👎"], 2),
        (["🔥", "👎"], 2),  # the last rating among someone's reactions is the one that counts
        (["👎", "🔥"], 5),
        (["👎", "🐳"], 2),  # a reaction that is no rating changes nothing
        (["🐳"], None),
        ([], None),  # all removed: the rating is withdrawn
        (["4️⃣", "5️⃣"], 5),
    ],
)
def test_the_last_rating_reaction_wins(emojis: list[str], stars: int | None) -> None:
    assert rating_of_reactions(emojis) == stars


async def test_reactions_as_each_platform_reports_them(core: ChatCore, storage: Storage) -> None:
    job, _ = await core.order_profile(order())
    await core.wait_idle(timeout=5)
    ref = f"message-{job.id}-1"
    picture = (await storage.pictures(job.id))[0]
    # Telegram: the whole set of the person's reactions on every change.
    assert await core.reactions_now(BOB, ref, ["🔥"])
    bob = await storage.find_user("test", "bob")
    assert await storage.rating(picture.id, bob) == 5
    assert await core.reactions_now(BOB, ref, ["🔥", "👎"])
    assert await storage.rating(picture.id, bob) == 2
    assert await core.reactions_now(BOB, ref, [])
    assert await storage.rating(picture.id, bob) is None
    # Discord: one reaction added or removed at a time; removing one not in force changes nothing.
    assert await core.reaction_added(ALICE, ref, "4️⃣") and await core.reaction_added(ALICE, ref, "5️⃣")
    alice = await storage.find_user("test", "alice")
    assert await storage.rating(picture.id, alice) == 5
    assert await core.reaction_removed(ALICE, ref, "4️⃣")
    assert await storage.rating(picture.id, alice) == 5
    assert await core.reaction_removed(ALICE, ref, "5️⃣")
    assert await storage.rating(picture.id, alice) is None
    assert not await core.reaction_added(ALICE, ref, "🐳")  # not a rating
    assert not await core.reaction_added(ALICE, "some-other-message", "5️⃣")


async def test_reactions_go_through_rate_message(core: ChatCore, delivery: RecordingDelivery) -> None:
    """Adapters' reactions reach ``ChatCore.rate_message``, so whoever wraps it (the fault tests) sees them all."""
    job, _ = await core.order_profile(order())
    await core.wait_idle(timeout=5)
    seen = []
    original = core.rate_message

    async def recording(*arguments, **keywords):
        seen.append(arguments[2])
        return await original(*arguments, **keywords)

    core.rate_message = recording  # type: ignore[method-assign]
    await core.reactions_now(BOB, f"message-{job.id}-1", ["👍"])
    await core.reaction_added(ALICE, f"message-{job.id}-1", "3️⃣")
    assert seen == [4, 3]
