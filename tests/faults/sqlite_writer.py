"""A stand-in for a second bot process: writes ratings in a tight loop through two Storage connections.

    python -m tests.faults.sqlite_writer DATABASE PICTURE_ID PLATFORM PREFIX

Each connection rates the picture as a new person per step (``PREFIX-a-0``, ``PREFIX-a-1``, ...) and prints
``a N`` once its N-th rating is committed, so whoever kills this process knows what must be in the database.
"""

from __future__ import annotations

import asyncio
import sys

from bot.storage import Storage


async def rate_forever(storage: Storage, name: str, picture_id: int, platform: str, prefix: str) -> None:
    done = 0
    while True:
        rater = await storage.ensure_user(platform, f"{prefix}-{name}-{done}")
        await storage.set_rating(picture_id, rater, 1 + done % 5, "reaction")
        done += 1
        print(name, done, flush=True)


async def main(database: str, picture_id: int, platform: str, prefix: str) -> None:
    first = await Storage.open(database)
    second = await Storage.open(database)
    print("ready", flush=True)
    await asyncio.gather(
        rate_forever(first, "a", picture_id, platform, prefix), rate_forever(second, "b", picture_id, platform, prefix)
    )


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]))
