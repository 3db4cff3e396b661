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


def mmpp(*arguments: str, database: Path, **settings: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "MMPP_DATABASE": str(database), "MMPP_STATE_DIR": str(database.parent / "state")}
    environment.pop("REDIS_URL", None)
    environment.pop("MMPP_DATABASE_URL", None)
    environment.update(settings)
    return subprocess.run(
        [sys.executable, "-m", "mmpp.cli", *arguments], capture_output=True, text=True, cwd=REPO, env=environment,
        timeout=120,
    )  # fmt: skip


async def seed(database: Path | str) -> None:
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


async def seed_variants(database: Path) -> None:
    """Anime jobs of both variants, each rated by its owner: base 2 stars, more-likeness 5."""
    storage = await Storage.open(database)
    for index in range(6):
        variant = "more-likeness" if index % 2 else "base"
        owner = await storage.ensure_user("console", f"p{index}")
        job, _ = await storage.create_job(
            task_id=f"task-{index}", user_id=owner, platform="console", event_key=f"e{index}", chat_id="c",
            style="anime", prompt="", mode="fast", picture_count=1, seed=1, selfie=b"x", reply_context={},
            variant=variant,
        )  # fmt: skip
        (picture,) = await storage.store_pictures(job.id, [(1, b"png")])
        await storage.update_job(job.id, state="done")
        await storage.set_rating(picture.id, owner, 5 if variant != "base" else 2, "button")
    await storage.close()


def test_variants_are_listed_steered_and_floored_from_the_command_line(tmp_path: Path) -> None:
    database = tmp_path / "mmpp.sqlite3"
    assert mmpp("migrate", database=database).returncode == 0
    asyncio.run(seed_variants(database))

    rows = {
        (row["style"], row["variant"]): row for row in json.loads(mmpp("variants", "--json", database=database).stdout)
    }
    assert set(rows) == {("anime", "base"), ("anime", "more-likeness"), ("watercolor", "base"),
                         ("watercolor", "firmer-face"), ("headshot", "base"), ("headshot", "photo-edit")}  # fmt: skip
    # The klein variant is not served by a bot without klein workers (no MMPP_FAMILY_QUEUES), and says why.
    assert (
        rows["headshot", "photo-edit"]["state"] == "unserved"
        and rows["headshot", "photo-edit"]["family"] == "flux2-klein"
    )
    assert "MMPP_FAMILY_QUEUES" in rows["headshot", "photo-edit"]["unserved_reason"]
    assert "(its family flux2-klein is not served here" in mmpp("variants", "headshot", database=database).stdout
    assert rows["anime", "more-likeness"]["ratings"] == 3 and rows["anime", "more-likeness"]["raw_mean"] == 5.0
    assert rows["anime", "base"]["state"] == "active"
    table = mmpp("variants", "anime", database=database).stdout
    assert "more-likeness" in table and "watercolor" not in table

    promoted = mmpp("variants", "promote", "anime", "more-likeness", database=database)
    assert promoted.returncode == 0 and "now the default" in promoted.stdout
    feedback = mmpp("feedback", database=database).stdout
    assert "more-likeness (default)" in feedback and "by an operator" in feedback
    report = json.loads(mmpp("feedback", "--json", database=database).stdout)
    anime = next(row for row in report if row["style"] == "anime")
    assert anime["promoted_variant"] == "more-likeness"
    assert {v["variant"]: v["mean"] for v in anime["variants"]} == {"base": 2.0, "more-likeness": 5.0}

    rolled_back = mmpp("variants", "rollback", "anime", database=database)
    assert rolled_back.returncode == 0 and "rolled back" in rolled_back.stdout
    states = {
        row["variant"]: row["state"]
        for row in json.loads(mmpp("variants", "anime", "--json", database=database).stdout)
    }
    assert states == {"base": "active", "more-likeness": "paused"}
    assert mmpp("variants", "resume", "anime", "more-likeness", database=database).returncode == 0

    results = tmp_path / "results.json"
    results.write_text(json.dumps({"kind": "mmpp-eval-sweep", "pictures": [
        {"style": "anime", "variant": "base", "face_found": True, "identity_distance": 0.4},
        {"style": "anime", "variant": "more-likeness", "face_found": False, "identity_distance": None},
    ]}))  # fmt: skip
    floored = mmpp("variants", "floor", str(results), "--min-face-found-rate", "0.95", database=database)
    assert floored.returncode == 0 and "more-likeness: ineligible: face found in 0%" in floored.stdout
    states = {
        row["variant"]: row["state"]
        for row in json.loads(mmpp("variants", "anime", "--json", database=database).stdout)
    }
    assert states == {"base": "active", "more-likeness": "ineligible"}
    refused = mmpp("variants", "promote", "anime", "more-likeness", database=database)
    assert refused.returncode == 2 and refused.stderr.startswith("error[NOT_ALLOWED]")

    for arguments, code in [
        (("variants", "promote", "anime"), "INVALID_REQUEST"),
        (("variants", "promote", "anime", "louder"), "INVALID_REQUEST"),
        (("variants", "rollback", "anime"), "NOT_FOUND"),
        (("variants", "pause", "building", "x"), "UNKNOWN_STYLE"),
        (("variants", "floor", str(results)), "INVALID_REQUEST"),
    ]:
        bad = mmpp(*arguments, database=database)
        assert bad.returncode == 2 and bad.stderr.startswith(f"error[{code}]"), (arguments, bad.stderr)
        assert len(bad.stderr.splitlines()) == 1


def test_the_database_url_alone_points_the_commands_at_postgresql(tmp_path: Path, postgres_url: str) -> None:
    """``MMPP_DATABASE_URL`` set: every command uses that database, and the SQLite file is never made."""
    database = tmp_path / "unused.sqlite3"
    environment = {"MMPP_DATABASE_URL": postgres_url}
    migrated = mmpp("migrate", database=database, **environment)
    newest = max(int(path.name.split("_")[0]) for path in MIGRATIONS.glob("[0-9]*_*.sql"))
    assert migrated.returncode == 0, migrated.stderr
    assert f"schema version {newest}" in migrated.stdout and postgres_url in migrated.stdout
    asyncio.run(seed(postgres_url))
    figures = json.loads(mmpp("feedback", "--json", database=database, **environment).stdout)
    assert figures[0]["style"] == "anime" and figures[0]["ratings"] == 3
    assert not database.exists()

    refused = mmpp("migrate", database=database, MMPP_DATABASE_URL="mysql://db/mmpp")
    assert refused.returncode != 0 and "error[INVALID_REQUEST]: MMPP_DATABASE_URL must be a postgresql://" in (
        refused.stderr
    )
    unreachable = mmpp("migrate", database=database, MMPP_DATABASE_URL="postgresql://nobody:secret@127.0.0.1:1/x")
    assert unreachable.returncode != 0 and "error[INVALID_REQUEST]: the PostgreSQL database" in unreachable.stderr
    assert "secret" not in unreachable.stderr and "Traceback" not in unreachable.stderr
