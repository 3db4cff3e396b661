"""``mmpp migrate``, ``feedback`` and ``forget`` as an operator runs them."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

from bot.storage import MIGRATIONS, Storage

REPO = Path(__file__).resolve().parents[2]


def mmpp(*arguments: str, database: Path) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "MMPP_DATABASE": str(database), "MMPP_STATE_DIR": str(database.parent / "state")}
    environment.pop("REDIS_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "mmpp.cli", *arguments], capture_output=True, text=True, cwd=REPO, env=environment,
        timeout=120,
    )  # fmt: skip


async def seed(database: Path) -> None:
    storage = await Storage.open(database)
    owner = await storage.ensure_user("telegram", "1")
    job, _ = await storage.create_job(
        task_id="task-1", user_id=owner, platform="telegram", event_key="u1", chat_id="c", style="anime", prompt="",
        mode="fast", picture_count=2, seed=1, selfie=b"x", reply_context={},
    )  # fmt: skip
    first, _ = await storage.store_pictures(job.id, [(1, b"png1"), (2, b"png2")])
    await storage.update_job(job.id, state="done")
    for index, score in enumerate([5, 4, 2]):
        rater = await storage.ensure_user("telegram", f"r{index}")
        await storage.set_rating(first.id, rater, score, "button")
    await storage.close()


def test_migrate_feedback_and_forget(tmp_path: Path) -> None:
    database = tmp_path / "mmpp.sqlite3"
    migrated = mmpp("migrate", database=database)
    newest = max(int(path.name.split("_")[0]) for path in MIGRATIONS.glob("[0-9]*_*.sql"))
    assert migrated.returncode == 0 and f"schema version {newest}" in migrated.stdout
    asyncio.run(seed(database))

    table = mmpp("feedback", database=database)
    assert table.returncode == 0
    line = next(row for row in table.stdout.splitlines() if row.startswith("anime"))
    # scores 5, 4, 2: mean 3.67, sd 1.528, t(2) = 4.303 → 3.67 ± 3.79
    assert line.split()[1:6] == ["1", "2", "3", "3.67", "[-0.13,7.46]"] and line.endswith("67%")

    figures = json.loads(mmpp("feedback", "--json", database=database).stdout)
    assert figures[0]["ratings"] == 3 and abs(figures[0]["mean"] - 11 / 3) < 1e-9

    rows = list(csv.DictReader(io.StringIO(mmpp("feedback", "--csv", database=database).stdout)))
    assert sorted(int(row["score"]) for row in rows) == [2, 4, 5] and {row["style"] for row in rows} == {"anime"}

    forgotten = mmpp("forget", "--platform", "telegram", "--user", "1", database=database)
    assert forgotten.returncode == 0 and "deleted" in forgotten.stdout
    assert json.loads(mmpp("feedback", "--json", database=database).stdout) == []

    bad = mmpp("forget", "--platform", "myspace", "--user", "1", database=database)
    assert bad.returncode == 2 and bad.stderr.startswith("error[INVALID_REQUEST]") and len(bad.stderr.splitlines()) == 1
