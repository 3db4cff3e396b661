"""PostgreSQL restarted under load: no lost job, no lost or doubled rating, no crash, nothing but pictures.

A private PostgreSQL (initdb in a temporary folder, its own port) that the test restarts with
``pg_ctl restart -m fast`` while people order and rate: every connection of the bot's pool is closed under it
and every open transaction rolled back.  The storage driver waits for the server to come back (within
``RECONNECT_SECONDS``) and runs again what surely did not commit; see ``bot.database``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest

from bot.storage import Storage
from tests.bot.conftest import ScriptedQueue
from tests.conftest import SAMPLE_SELFIE
from tests.fakes.telegram_api import FakeTelegram, FakeUser
from tests.faults.conftest import ALICE, BOT_USERNAME, PrivatePostgres, replies_in, telegram_bot, wait_until
from tests.faults.test_sqlite_faults import REACTIONS, make_picture


async def test_writes_through_a_postgres_restart_all_commit_and_none_fails(private_postgres: PrivatePostgres) -> None:
    """20 writers rate in a loop (a new person and a rating per step) while the server restarts: not one call
    fails, and every rating a call returned from is in the database, once."""
    storage = await Storage.open(private_postgres.url)
    try:
        picture_id = await make_picture(storage)
        stop, failures = asyncio.Event(), []
        done = [0] * 20

        async def writer(index: int) -> None:
            while not stop.is_set():
                try:
                    rater = await storage.ensure_user("telegram", f"writer-{index}-{done[index]}")
                    await storage.set_rating(picture_id, rater, 1 + done[index] % 5, "reaction")
                except Exception as error:  # noqa: BLE001 - counted: the test asserts there are none
                    failures.append(repr(error))
                    return
                done[index] += 1

        writers = [asyncio.create_task(writer(index)) for index in range(len(done))]
        await wait_until(lambda: sum(done) >= 100, 30, "the writers to get going")
        before = sum(done)
        await asyncio.to_thread(private_postgres.restart)
        await wait_until(lambda: sum(done) >= before + 200 or failures, 30, "writes after the restart")
        stop.set()
        await asyncio.gather(*writers)
        assert failures == []
        assert await storage.count("ratings") == sum(done) == await storage.count("users") - 1
    finally:
        await storage.close()


async def test_orders_and_ratings_through_a_postgres_restart_are_all_delivered_and_stored_once(
    fake_telegram: FakeTelegram, private_postgres: PrivatePostgres, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Through the chat path (FakeTelegram → python-telegram-bot → ChatCore → PostgreSQL): people send photos and
    react to a picture in a group, three orders and twenty reactions every 0.1 s, and the server restarts in
    the middle.  Every order gets its one picture and no error line; every reaction ends as its one rating;
    the bot logged no error and is still answering afterwards."""
    caplog.set_level(logging.WARNING)
    fake = fake_telegram
    group = fake.group(bot_is_admin=True)
    selfie = SAMPLE_SELFIE.read_bytes()
    async with telegram_bot(fake, tmp_path, job_queue=ScriptedQueue(), database_url=private_postgres.url) as bot:
        await fake.send_photo(group, ALICE, selfie, caption=f"/profile@{BOT_USERNAME} anime")
        await wait_until(lambda: replies_in(fake, group.id), 30, "the picture to rate")
        await bot.core.wait_idle(timeout=10)
        message_id = fake.calls("sendPhoto")[0].result["message_id"]
        (picture,) = await bot.storage.pictures(1)

        customers: list[FakeUser] = []
        raters: list[FakeUser] = []
        restarted_at: list[float] = []

        async def load(rounds: int) -> None:
            for round_number in range(rounds):
                for _ in range(3):
                    customer = FakeUser(20_000 + len(customers), f"Customer {len(customers)}")
                    customers.append(customer)
                    await fake.send_photo(None, customer, selfie, caption="anime")
                for _ in range(20):
                    rater = FakeUser(60_000 + len(raters), f"Rater {len(raters)}")
                    await fake.react(group, message_id, rater, new=[REACTIONS[len(raters) % len(REACTIONS)][0]])
                    raters.append(rater)
                if round_number == rounds // 3:
                    started = time.monotonic()
                    restart = asyncio.create_task(asyncio.to_thread(private_postgres.restart))
                    restart.add_done_callback(lambda _, began=started: restarted_at.append(time.monotonic() - began))
                await asyncio.sleep(0.1)

        await load(rounds=15)
        await wait_until(lambda: restarted_at, 60, "the restart to finish")

        def all_answered() -> bool:
            return all(replies_in(fake, customer.id) for customer in customers)

        await wait_until(all_answered, 60, "an answer to every order")
        await bot.core.wait_idle(timeout=30)

        async def ratings_stored() -> bool:
            return await bot.storage.count("ratings", "picture_id = ?", (picture.id,)) >= len(raters)

        await wait_until(ratings_stored, 60, f"{len(raters)} ratings")
        await asyncio.sleep(0.5)  # room for a duplicate to show up

        for customer in customers:
            assert replies_in(fake, customer.id) == ["pictures"], customer
        assert await bot.storage.count("jobs") == len(customers) + 1
        assert await bot.storage.count("jobs", "delivered_at IS NOT NULL AND state = 'done'") == len(customers) + 1
        assert await bot.storage.count("pictures") == len(customers) + 1
        assert len(fake.calls("sendPhoto")) == len(customers) + 1
        assert await bot.storage.count("ratings", "picture_id = ?", (picture.id,)) == len(raters)
        for index, rater in enumerate(raters):
            rater_id = await bot.storage.find_user("telegram", str(rater.id))
            assert rater_id is not None
            assert await bot.storage.rating(picture.id, rater_id) == REACTIONS[index % len(REACTIONS)][1]

        # Still answering after it all.
        late = FakeUser(29_999, "Late")
        await fake.send_photo(None, late, selfie, caption="anime")
        await wait_until(lambda: replies_in(fake, late.id), 30, "the late order")
        assert replies_in(fake, late.id) == ["pictures"]

    sent = [str(call.params.get("text", "")) for call in fake.calls("sendMessage")]
    assert not [text for text in sent if text.startswith("⚠️") or "Traceback" in text], sent
    errors = [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]
    assert errors == []
