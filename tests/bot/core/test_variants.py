"""Style variants on live traffic (bot/core/variants.py): each job gets one, the worker is told, ratings steer
the traffic and promote a clearly better variant, operators pause, promote and roll back, and all of it lives in
the database."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from bot import metrics
from bot.core import ChatCore, Person
from bot.storage import Storage
from mmpp.contract import GenerateRequest
from mmpp.errors import ErrorCode, MmppError
from mmpp.variants import Rules
from tests.bot.conftest import RecordingDelivery, ScriptedQueue, bot_settings, order

#: Small thresholds so a test reaches a decision in tens of ratings; the rule is the bot's own.
QUICK_RULES = Rules(exploration_floor=4, min_ratings=12, draws=1000)
#: What the simulated people think of anime's two variants.
STARS = {"base": 2, "more-likeness": 5}


def steer(core: ChatCore, seed: int = 1, rules: Rules = QUICK_RULES) -> None:
    """A seeded random source, quick rules, and every rating read at once (no reuse of a recent read)."""
    core.jobs.variants.rules = rules
    core.jobs.variants.chance = random.Random(seed)
    core.jobs.variants.fresh_seconds = 0.0


async def order_and_rate(core: ChatCore, index: int, style: str = "anime", count: str = "2") -> str:
    """One person orders a job, it is delivered, they rate its pictures by its variant; returns the variant."""
    person = Person("test", f"person-{index}", f"Person {index}")
    job, created = await core.order_profile(order(f"event-{index}", person, style=style, count=count))
    assert created
    await core.wait_idle(timeout=10)
    for position in range(1, int(count) + 1):
        assert await core.rate_message(person, f"message-{job.id}-{position}", STARS.get(job.variant, 3), "reaction")
    return job.variant


async def test_each_job_renders_one_variant_and_the_worker_is_told_which(
    core: ChatCore, storage: Storage, queue: ScriptedQueue
) -> None:
    steer(core)
    served = [await order_and_rate(core, index) for index in range(8)]
    assert set(served) == {"base", "more-likeness"}  # the floor serves both before any is ahead
    jobs = [await storage.job(job_id) for job_id in range(1, 9)]
    by_task = {job.task_id: job for job in jobs if job is not None}
    for task_id, payload in queue.submitted.items():
        assert GenerateRequest.from_payload(payload).variant == by_task[task_id].variant
    # A style without variants always renders as written.
    assert await order_and_rate(core, 100, style="oil-painting") == "base"
    # Every stored picture records its variant through its job, and the history says it.
    history = {await core.history_text(Person("test", f"person-{index}", "")) for index in range(8)}
    assert any(text.startswith("job ") and text.endswith("UTC, variant more-likeness") for text in history)
    assert any(text.startswith("job ") and text.endswith("UTC") for text in history)


async def test_ratings_send_traffic_to_the_better_variant_and_promote_it(core: ChatCore, storage: Storage) -> None:
    steer(core)
    before = metrics.VARIANT_PROMOTIONS.labels("anime", "ratings")._value.get()
    served = []
    for index in range(40):
        served.append(await order_and_rate(core, index))
        if await storage.current_promotion("anime") is not None:
            break
    promotion = await storage.current_promotion("anime")
    assert promotion is not None, served
    assert (promotion.variant, promotion.decided_by) == ("more-likeness", "ratings")
    evidence = promotion.evidence
    assert evidence["probability_best"] >= 0.95 and evidence["ratings"] >= QUICK_RULES.min_ratings
    assert {row["variant"] for row in evidence["variants"]} == {"base", "more-likeness"}
    assert metrics.VARIANT_PROMOTIONS.labels("anime", "ratings")._value.get() == before + 1
    # Past the floor, the better variant got the larger share.
    after_floor = served[2 * QUICK_RULES.exploration_floor // 2 :]
    assert after_floor.count("more-likeness") > after_floor.count("base"), served
    # Promoted, it serves every job; more ratings do not promote again.
    assert {await order_and_rate(core, 100 + index) for index in range(4)} == {"more-likeness"}
    assert len(await storage.promotions("anime")) == 1


async def test_no_promotion_before_the_rule_says(core: ChatCore, storage: Storage) -> None:
    steer(core, rules=Rules(exploration_floor=4, min_ratings=10_000, draws=500))
    for index in range(16):
        await order_and_rate(core, index)
    assert await storage.current_promotion("anime") is None


async def test_operators_pause_promote_and_roll_back(core: ChatCore, storage: Storage) -> None:
    steer(core)
    variants = core.jobs.variants
    await variants.pause("anime", "more-likeness")
    assert {await order_and_rate(core, index) for index in range(4)} == {"base"}
    await variants.pause("anime", "more-likeness", paused=False)
    promotion = await variants.promote("anime", "more-likeness")
    assert promotion.decided_by == "operator" and "variants" in promotion.evidence
    assert {await order_and_rate(core, 10 + index) for index in range(3)} == {"more-likeness"}
    rolled_back = await variants.roll_back("anime")
    assert rolled_back.variant == "more-likeness" and rolled_back.rolled_back_at is not None
    assert await storage.current_promotion("anime") is None
    # Rolled back, it is paused too, so the same ratings cannot promote it again at once.
    assert {await order_and_rate(core, 20 + index) for index in range(3)} == {"base"}
    with pytest.raises(MmppError) as raised:
        await variants.roll_back("anime")
    assert raised.value.code is ErrorCode.NOT_FOUND
    with pytest.raises(MmppError) as raised:
        await variants.promote("anime", "louder")
    assert raised.value.code is ErrorCode.INVALID_REQUEST


async def test_a_variant_below_the_floor_is_neither_served_nor_promoted(core: ChatCore, storage: Storage) -> None:
    steer(core)
    await storage.set_variant_ineligible("anime", "more-likeness", "face found in 80 % of pictures < 95 %")
    assert {await order_and_rate(core, index) for index in range(4)} == {"base"}
    with pytest.raises(MmppError) as raised:
        await core.jobs.variants.promote("anime", "more-likeness")
    assert raised.value.code is ErrorCode.NOT_ALLOWED and "80 %" in raised.value.message


async def test_a_reroll_keeps_its_variant(core: ChatCore, storage: Storage) -> None:
    steer(core)
    person = Person("test", "person-0", "Person 0")
    first, _ = await core.order_profile(order("event-0", person, style="anime"))
    await core.wait_idle(timeout=10)
    for index in range(6):
        again, _ = await core.jobs.reroll(person, first.id, f"reroll-{index}", "chat-1", {"channel": "chat-1"})
        assert again.variant == first.variant
        await core.wait_idle(timeout=10)


async def test_the_state_survives_a_restart(tmp_path: Path) -> None:
    storage = await Storage.open(tmp_path / "mmpp.sqlite3")
    core = ChatCore(storage, ScriptedQueue(), bot_settings(tmp_path))
    await core.jobs.variants.promote("anime", "more-likeness")
    await core.jobs.variants.pause("watercolor", "firmer-face")
    await storage.close()
    storage = await Storage.open(tmp_path / "mmpp.sqlite3")
    try:
        restarted = ChatCore(storage, ScriptedQueue(), bot_settings(tmp_path))
        anime = restarted.catalogue.get("anime")
        assert await restarted.jobs.variants.assign(anime) == "more-likeness"
        assert await restarted.jobs.variants.servable(restarted.catalogue.get("watercolor")) == ["base"]
    finally:
        await storage.close()


async def test_forget_removes_a_persons_assignments_and_ratings_from_the_experiment(
    core: ChatCore, storage: Storage
) -> None:
    steer(core)
    for index in range(4):
        await order_and_rate(core, index)
    before = await storage.variant_observations("anime")
    forgotten = await storage.find_user("test", "person-0")
    assert len(before) == 8 and forgotten in {rater for _, rater, _ in before}
    await core.forget(Person("test", "person-0", ""))
    after = await storage.variant_observations("anime")
    assert len(after) == 6 and forgotten not in {rater for _, rater, _ in after}
    assert await storage.count("jobs", "user_id = ?", (forgotten,)) == 0


async def test_a_recent_read_of_the_ratings_serves_until_it_is_stale(storage: Storage, tmp_path: Path) -> None:
    """Orders within a few seconds of the last read reuse it (no query on the command path); after that, and for
    operators' commands, the ratings are read again, so another process's ratings are seen."""
    clock = [0.0]
    core = ChatCore(storage, ScriptedQueue(), bot_settings(tmp_path))
    variants = core.jobs.variants
    variants._monotonic = lambda: clock[0]
    reads = []
    original = storage.variant_cells

    async def counted(style: str):  # type: ignore[no-untyped-def]
        reads.append(style)
        return await original(style)

    storage.variant_cells = counted  # type: ignore[method-assign]
    anime = core.catalogue.get("anime")
    for _ in range(5):
        await variants.assign(anime)
    assert reads == ["anime"]
    clock[0] += variants.fresh_seconds + 0.1
    await variants.assign(anime)
    assert reads == ["anime", "anime"]
    await variants.status("anime")
    assert reads == ["anime", "anime", "anime"]


async def test_an_upscales_rating_is_not_counted_again_for_its_variant(storage: Storage, tmp_path: Path) -> None:
    """An upscale is of a picture its person chose, and likely rated already: its rating would count one opinion
    twice, and only for liked pictures, so the experiment leaves it out (the ratings report keeps it)."""
    from tests.bot.core.test_jobs_upscale import WorkerLikeQueue

    core = ChatCore(storage, WorkerLikeQueue(), bot_settings(tmp_path))
    delivery = RecordingDelivery()
    core.attach(delivery)
    await core.start()
    steer(core)
    person = Person("test", "person-0", "Person 0")
    first, _ = await core.order_profile(order("event-0", person, style="anime"))
    await core.wait_idle(timeout=10)
    assert await core.rate_message(person, f"message-{first.id}-1", 4, "reaction")
    picture = (await storage.pictures(first.id))[0]
    upscale, created = await core.jobs.upscale(person, picture.id, "chat-1", {"channel": "chat-1"})
    assert created and upscale.variant == first.variant
    await core.wait_idle(timeout=10)
    assert await core.rate_message(person, f"message-{upscale.id}-1", 5, "reaction")
    assert await storage.count("ratings") == 2
    rater = await storage.find_user("test", "person-0")
    assert await storage.variant_observations("anime") == [(first.variant, rater, 4)]
    cells, squares = await storage.variant_cells("anime")
    assert cells == [(str(rater), first.variant, 1, 4)] and squares == 16
    await core.stop()
