"""A variant painted by another engine family, on the console end to end: ``mmpp chat`` with the session's SD
worker on its own queue and the session's klein worker named in ``MMPP_FAMILY_QUEUES``; the operator promotes the
headshot's klein variant, the klein worker paints it, the person rates it, history and ``mmpp variants`` say which
model it was; rolled back, the SD worker paints the style again.  A deployment that sends the klein variant to SD
workers gets one line with its code for the person, not an SD picture filed under the klein variant."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from tests.bot.console_app import chat_environment
from tests.bot.console_app.test_variants import mmpp
from tests.conftest import SAMPLE_SELFIE


def jobs_table(database: Path) -> list[tuple[str, str, str, dict]]:
    with sqlite3.connect(database) as connection:
        rows = connection.execute("SELECT variant, family, queue, result_meta FROM jobs ORDER BY id").fetchall()
    return [(variant, family, queue, json.loads(meta or "{}")) for variant, family, queue, meta in rows]


def test_a_klein_variant_is_painted_by_the_klein_workers_and_rated_as_such(
    redis_worker: str, klein_worker: str, tmp_path: Path
) -> None:
    env = {**chat_environment(tmp_path, redis_worker), "MMPP_FAMILY_QUEUES": f"flux2-klein={klein_worker}"}
    listed = {row["variant"]: row for row in json.loads(mmpp(["variants", "headshot", "--json"], env).stdout)}
    assert listed["photo-edit"]["state"] == "active" and listed["photo-edit"]["family"] == "flux2-klein"
    promoted = mmpp(["variants", "promote", "headshot", "photo-edit"], env)
    assert promoted.returncode == 0, promoted.stderr
    order = f"/profile style:headshot photo:{SAMPLE_SELFIE} mode:fast"
    painted = mmpp(["chat"], env, [order])
    assert painted.returncode == 0 and "job 1: " in painted.stdout, painted.stderr[-3000:]
    first = mmpp(["chat"], env, ["/rate 1 1 4", "/history"])
    assert first.returncode == 0, first.stderr[-3000:]
    assert "rated job 1 picture 1: 4 stars" in first.stdout
    assert any(line.startswith("job 1: headshot, 1 pictures") and line.endswith("variant photo-edit on flux2-klein")
               for line in first.stdout.splitlines()), first.stdout  # fmt: skip
    rolled_back = mmpp(["variants", "rollback", "headshot"], env)
    assert rolled_back.returncode == 0, rolled_back.stderr
    second = mmpp(["chat"], env, [order])
    assert second.returncode == 0 and "job 2: " in second.stdout, second.stderr[-3000:]
    (klein_variant, klein_family, klein_queue, klein_meta), (base, family, queue, meta) = jobs_table(
        tmp_path / "mmpp.sqlite3"
    )
    assert (klein_variant, klein_family, klein_queue) == ("photo-edit", "flux2-klein", f"{klein_worker}.fast")
    assert klein_meta["family"] == "flux2-klein" and klein_meta["model"].startswith("tiny-flux2-klein")
    assert (base, family, queue) == ("base", "", f"{redis_worker}.fast") and meta["family"] == "sd15"
    report = json.loads(mmpp(["feedback", "--json"], env).stdout)
    headshot = next(row for row in report if row["style"] == "headshot")
    assert [(row["variant"], row["ratings"]) for row in headshot["variants"]] == [("photo-edit", 1)]


def test_a_klein_variant_sent_to_sd_workers_is_refused_in_one_line(redis_worker: str, tmp_path: Path) -> None:
    # A misconfiguration: the klein variant's queue is consumed by the SD worker.
    env = {**chat_environment(tmp_path, redis_worker), "MMPP_FAMILY_QUEUES": f"flux2-klein={redis_worker}"}
    assert mmpp(["variants", "promote", "headshot", "photo-edit"], env).returncode == 0
    chat = mmpp(["chat"], env, [f"/profile style:headshot photo:{SAMPLE_SELFIE} mode:fast", "/history"])
    assert chat.returncode == 0, chat.stderr[-3000:]
    refusals = [line for line in chat.stdout.splitlines() if line.startswith("error[WRONG_FAMILY]: job 1: ")]
    assert len(refusals) == 1 and "wrong kind of worker" in refusals[0], chat.stdout
    assert "Traceback" not in chat.stdout + chat.stderr
    ((variant, family, _, meta),) = jobs_table(tmp_path / "mmpp.sqlite3")
    assert (variant, family, meta) == ("photo-edit", "flux2-klein", {})
