"""Variants painted by another engine family (bot/core/variants.py, ``family`` in the catalogue): where the
deployment serves that family (``MMPP_FAMILY_QUEUES``) the variant's jobs go to its workers and compete on live
traffic like any variant; where it does not, the variant is neither served nor promoted, and says why."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bot.core import ChatCore, Person, texts
from bot.storage import Storage
from mmpp.catalogue import default_catalogue_path
from mmpp.contract import GenerateRequest
from mmpp.errors import ErrorCode, MmppError
from tests.bot.conftest import RecordingDelivery, ScriptedQueue, bot_settings, order
from tests.bot.core.test_variants import QUICK_RULES, steer

#: The shipped catalogue's headshot has a FLUX.2 [klein] variant; the test deployment's klein workers.
KLEIN_QUEUES = "flux2-klein=mmpp-klein"
WEIGHTED = "a pirate (hat)1.2"


@pytest.fixture
async def served(
    storage: Storage, queue: ScriptedQueue, delivery: RecordingDelivery, tmp_path: Path
) -> AsyncIterator[ChatCore]:
    """A core of a deployment that serves klein beside the SD workers of its own queue."""
    chat_core = ChatCore(storage, queue, bot_settings(tmp_path, family_queues=KLEIN_QUEUES))
    chat_core.attach(delivery)
    await chat_core.start()
    steer(chat_core)
    yield chat_core
    await chat_core.stop()


async def order_headshots(core: ChatCore, count: int, first: int = 0, **options: str) -> list[Any]:
    jobs = []
    for index in range(first, first + count):
        person = Person("test", f"person-{index}", f"Person {index}")
        job, created = await core.order_profile(order(f"event-{index}", person, style="headshot", **options))
        assert created
        jobs.append(job)
    await core.wait_idle(timeout=10)
    return jobs


async def test_a_served_family_variant_goes_to_its_familys_workers(
    served: ChatCore, storage: Storage, queue: ScriptedQueue
) -> None:
    jobs = await order_headshots(served, 2 * QUICK_RULES.exploration_floor + 2)
    assert {job.variant for job in jobs} == {"base", "photo-edit"}  # the floor serves both
    for job in jobs:
        stored = await storage.job(job.id)
        assert stored is not None
        payload = GenerateRequest.from_payload(queue.submitted[job.task_id])
        if job.variant == "photo-edit":
            assert (stored.family, payload.family, queue.queues[job.task_id]) == (
                "flux2-klein", "flux2-klein", "mmpp-klein.quality"
            )  # fmt: skip
        else:
            assert (stored.family, payload.family, queue.queues[job.task_id]) == ("", "", "mmpp.quality")
    klein_job = next(job for job in jobs if job.variant == "photo-edit")
    person = Person("test", f"person-{jobs.index(klein_job)}", "")
    history = await served.history_text(person)
    assert history.endswith("UTC, variant photo-edit on flux2-klein"), history
    # The same again is the same model: a re-roll keeps the variant and with it the family's queue.
    again, _ = await served.jobs.reroll(person, klein_job.id, "reroll-1", "chat-1", {"channel": "chat-1"})
    await served.wait_idle(timeout=10)
    assert again.variant == "photo-edit" and queue.queues[again.task_id] == "mmpp-klein.quality"


async def test_a_family_this_bot_does_not_serve_is_neither_assigned_nor_promoted(
    core: ChatCore, storage: Storage, queue: ScriptedQueue
) -> None:
    steer(core)
    jobs = await order_headshots(core, 12)
    assert {job.variant for job in jobs} == {"base"}
    assert set(queue.queues.values()) == {"mmpp.quality"}
    with pytest.raises(MmppError) as raised:
        await core.jobs.variants.promote("headshot", "photo-edit")
    assert raised.value.code is ErrorCode.NOT_ALLOWED
    assert "flux2-klein is not served here" in raised.value.message
    rows = {row.variant: row for row in await core.jobs.variants.status("headshot")}
    assert rows["photo-edit"].family == "flux2-klein" and "MMPP_FAMILY_QUEUES" in (
        rows["photo-edit"].unserved_reason or ""
    )
    assert rows["base"].unserved_reason is None


async def test_a_promotion_stands_but_a_bot_without_the_family_serves_the_others(
    storage: Storage, tmp_path: Path
) -> None:
    """A promotion is the experiment's record, kept in the database; a bot started without the family's workers
    cannot serve it, so it serves the style's other variants instead of sending jobs nobody paints."""
    with_klein = ChatCore(storage, ScriptedQueue(), bot_settings(tmp_path, family_queues=KLEIN_QUEUES))
    await with_klein.jobs.variants.promote("headshot", "photo-edit")
    headshot = with_klein.catalogue.get("headshot")
    assert await with_klein.jobs.variants.assign(headshot) == "photo-edit"
    without = ChatCore(storage, ScriptedQueue(), bot_settings(tmp_path))
    assert await without.jobs.variants.assign(headshot) == "base"
    assert (await storage.current_promotion("headshot")).variant == "photo-edit"  # type: ignore[union-attr]


async def test_a_weighted_prompt_is_never_a_draw_against_a_family_that_cannot_read_it(
    served: ChatCore, storage: Storage, delivery: RecordingDelivery
) -> None:
    """Klein reads plain words and its workers refuse Compel's weighting: a weighted order is served by the
    variants that read it, so whether it is painted never depends on which variant it drew; once the klein variant
    is the default, the order is refused in one line before a job exists."""
    jobs = await order_headshots(served, 12, prompt=WEIGHTED)
    assert {job.variant for job in jobs} == {"base"}
    await served.jobs.variants.promote("headshot", "photo-edit")
    person = Person("test", "late", "Late")
    with pytest.raises(MmppError) as raised:
        await served.order_profile(order("event-late", person, style="headshot", prompt=WEIGHTED))
    assert raised.value.code is ErrorCode.INVALID_REQUEST and "plain words" in raised.value.message
    assert "\n" not in raised.value.message
    assert await storage.job_by_event("test", "event-late") is None
    plain, _ = await served.order_profile(order("event-plain", person, style="headshot", prompt="a pirate"))
    assert plain.variant == "photo-edit"


async def test_a_picture_painted_by_klein_is_not_offered_an_upscale(served: ChatCore, storage: Storage) -> None:
    await served.jobs.variants.promote("headshot", "photo-edit")
    (job,) = await order_headshots(served, 1)
    picture = (await storage.pictures(job.id))[0]
    jobs_before = await storage.count("jobs")
    with pytest.raises(MmppError) as raised:
        await served.jobs.upscale(Person("test", "person-0", ""), picture.id, "chat-1", {"channel": "chat-1"})
    assert raised.value.code is ErrorCode.MODEL_UNAVAILABLE and "flux2-klein" in raised.value.message
    assert await storage.count("jobs") == jobs_before


async def test_a_picture_of_a_family_no_longer_served_cannot_be_upscaled(storage: Storage, tmp_path: Path) -> None:
    styles_file = tmp_path / "styles.toml"
    shipped = default_catalogue_path().read_text(encoding="utf-8")
    styles_file.write_text(shipped + '\n[styles.watercolor.variants.xl]\nfamily = "sdxl"\n', encoding="utf-8")
    from tests.bot.core.test_jobs_upscale import WorkerLikeQueue

    queue = WorkerLikeQueue()  # pictures of a worker's sizes, which an upscale takes
    with_xl = ChatCore(storage, queue, bot_settings(tmp_path, styles_file=styles_file, family_queues="sdxl=mmpp-xl"))
    with_xl.attach(RecordingDelivery())
    await with_xl.start()
    await with_xl.jobs.variants.promote("watercolor", "xl")
    person = Person("test", "person-0", "Person 0")
    job, _ = await with_xl.order_profile(order("event-0", person, style="watercolor"))
    await with_xl.wait_idle(timeout=10)
    assert queue.queues[job.task_id].startswith("mmpp-xl.")
    picture = (await storage.pictures(job.id))[0]
    # While sdxl is served its picture may be upscaled (by the sdxl workers: same model, same seed).
    upscale, created = await with_xl.jobs.upscale(person, picture.id, "chat-1", {"channel": "chat-1"})
    assert created and queue.queues[upscale.task_id] == "mmpp-xl.quality" and upscale.family == "sdxl"
    await with_xl.wait_idle(timeout=10)
    await with_xl.stop()
    without = ChatCore(storage, ScriptedQueue(), bot_settings(tmp_path, styles_file=styles_file))
    second = (await storage.pictures(job.id))[1] if job.picture_count > 1 else picture
    with pytest.raises(MmppError) as raised:
        await without.jobs.check_upscale(person, second.id)
    assert (
        raised.value.code is ErrorCode.MODEL_UNAVAILABLE
        and "sdxl, which this bot does not serve now" in raised.value.message
    )


async def test_a_job_refused_by_the_wrong_familys_worker_fails_in_one_line_on_our_side(
    core: ChatCore, queue: ScriptedQueue, delivery: RecordingDelivery, caplog: pytest.LogCaptureFixture
) -> None:
    worker_words = "This job needs a flux2-klein worker and reached a sd15 worker; it was not painted"
    queue.error = MmppError(ErrorCode.WRONG_FAMILY, worker_words)
    job, _ = await core.order_profile(order("event-1", style="anime"))
    await core.wait_idle(timeout=10)
    assert delivery.failures == [(job.id, ErrorCode.WRONG_FAMILY, texts.WRONG_WORKER)]
    assert worker_words in caplog.text  # the operator reads the worker's words in the log, the person does not
