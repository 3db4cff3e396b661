"""What the variant assignment adds to the command path: orders of a style with variants (and thousands of
ratings to weigh) against orders of a style without, through the real ``ChatCore.order_profile`` on a real
SQLite database, interleaved in one process so the machine's drift falls on both alike.

Part of ``mmpp bench feedback`` (its ``command_path`` figures); the target is that the assignment costs
nothing measurable: the orders of the style with variants take at most 5 % longer at the median.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

#: The style whose variants are weighed, and the one without variants that is the baseline.
STYLE_WITH_VARIANTS = "anime"
STYLE_WITHOUT = "oil-painting"
#: Median order time with variants over without; above this the assignment is measurable.
COST_TARGET = 1.05


async def _seed_ratings(storage: Any, ratings: int, raters: int) -> None:
    """``ratings`` ratings of the style's two variants by ``raters`` people (one picture each), written through
    the storage's own methods as the bot writes them."""
    chance = random.Random(5)
    people = [await storage.ensure_user("bench", f"rater-{rater}") for rater in range(raters)]
    for index in range(ratings):
        rater = people[index % raters]
        job, _ = await storage.create_job(
            task_id=f"seed-{index}", user_id=rater, platform="bench", event_key=f"seed-{index}", chat_id="chat",
            style=STYLE_WITH_VARIANTS, prompt="", mode=None, picture_count=1, seed=1, selfie=b"-", reply_context={},
            variant="more-likeness" if index % 2 else "base",
        )  # fmt: skip
        (picture,) = await storage.store_pictures(job.id, [(1, b"-")])
        await storage.set_rating(picture.id, rater, chance.randint(2, 5), "bench")


async def _variants_of_orders(storage: Any, orders: int) -> dict[str, int]:
    """How many of the timed orders of the style with variants got each variant (so the timing is of real work)."""
    served: dict[str, int] = {}
    for index in range(orders):
        job = await storage.job_by_event("bench", f"order-{index}-{STYLE_WITH_VARIANTS}")
        if job is not None:
            served[job.variant] = served.get(job.variant, 0) + 1
    return served


async def measure(ratings: int = 5000, orders: int = 40) -> dict[str, Any]:
    """Order times with and without variants, and the assignment's own time, at ``ratings`` stored ratings."""
    from bench.bots import InstantWorkerQueue, bench_settings, sample_selfie
    from bot.core import ChatCore, Person, ProfileOrder
    from bot.core.variants import RATINGS_FRESH_SECONDS
    from bot.storage import Storage

    selfie = sample_selfie()
    with tempfile.TemporaryDirectory(prefix="mmpp-bench-assignment-") as folder:
        workdir = Path(folder)
        storage = await Storage.open(workdir / "bench.sqlite3")
        core = None
        try:
            await _seed_ratings(storage, ratings, raters=max(1, ratings // 10))
            settings = bench_settings(workdir, poll_interval_seconds=0.01)
            core = ChatCore(storage, InstantWorkerQueue(), settings)
            await core.start()
            times: dict[str, list[float]] = {STYLE_WITH_VARIANTS: [], STYLE_WITHOUT: []}
            for index in range(orders):
                for style in (
                    (STYLE_WITH_VARIANTS, STYLE_WITHOUT) if index % 2 else (STYLE_WITHOUT, STYLE_WITH_VARIANTS)
                ):
                    person = Person("bench", f"orderer-{index}-{style}", "")
                    order = ProfileOrder(person, f"order-{index}-{style}", "chat", {}, {"style": style}, selfie)
                    started = time.perf_counter()
                    await core.order_profile(order)
                    times[style].append(time.perf_counter() - started)
                    await core.wait_idle(timeout=30)
            served = await _variants_of_orders(storage, orders)
            anime = core.catalogue.get(STYLE_WITH_VARIANTS)
            assign_times, read_times = [], []
            for _ in range(orders):
                started = time.perf_counter()
                await core.jobs.variants.assign(anime)
                assign_times.append(time.perf_counter() - started)
                # What the first order after the ratings went stale pays (every few seconds, per style).
                started = time.perf_counter()
                await core.jobs.variants._state(anime, fresh=True)
                read_times.append(time.perf_counter() - started)
        finally:
            if core is not None:
                await core.stop()
            await storage.close()
    with_variants = statistics.median(times[STYLE_WITH_VARIANTS])
    without = statistics.median(times[STYLE_WITHOUT])
    ratio = with_variants / without
    assign_sorted = sorted(assign_times)
    return {
        "stored_ratings": ratings,
        "orders_per_style": orders,
        "order_ms_with_variants_p50": round(with_variants * 1000, 2),
        "order_ms_without_variants_p50": round(without * 1000, 2),
        "ratio": round(ratio, 3),
        "assignment_ms_p50": round(statistics.median(assign_sorted) * 1000, 2),
        "assignment_ms_max": round(assign_sorted[-1] * 1000, 2),
        "ratings_read_ms_p50": round(statistics.median(read_times) * 1000, 2),
        "ratings_fresh_seconds": RATINGS_FRESH_SECONDS,
        "variants_served": served,
        "target": f"order with variants / without <= {COST_TARGET}",
        "passed": ratio <= COST_TARGET,
    }


def measure_blocking(ratings: int = 5000, orders: int = 40) -> dict[str, Any]:
    return asyncio.run(measure(ratings, orders))
