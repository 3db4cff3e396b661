"""What people thought: ratings per style and per configuration, from the bot's SQLite database.

Why plain ``sqlite3`` and SQL here, when ``bot/storage.py`` owns the
queries: ``engine`` must never import ``bot`` (a test enforces it), and this
report runs where the worker runs, without the bot's async stack.  The
database is opened read-only (``file:...?mode=ro``), so a report can be made
while the bot is running and can never change its data.  Only columns of
``migrations/0001_init.sql`` are read.

A configuration is what ``result_meta`` recorded about the finished job:
its mode and its effective scales (style LoRA, portrait LoRA, IP-Adapter).
"""

from __future__ import annotations

import csv
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from mmpp.errors import ErrorCode, MmppError
from mmpp.stats import mean_interval

#: A rating of 4 or 5 counts as positive (the bot's POSITIVE_SCORE).
POSITIVE_SCORE = 4
CSV_FIELDS = (
    "group",
    "style",
    "mode",
    "style_scale",
    "portrait_scale",
    "ip_adapter_scale",
    "jobs",
    "pictures_rated",
    "ratings",
    "mean",
    "ci95_low",
    "ci95_high",
    "positive_share",
)


def _open_read_only(path: Path) -> sqlite3.Connection:
    if not path.is_file():
        raise MmppError(ErrorCode.INVALID_REQUEST, f"the feedback database {path} does not exist")
    try:
        connection = sqlite3.connect(f"file:{path.resolve().as_posix()}?mode=ro", uri=True)
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as error:
        raise MmppError(ErrorCode.INVALID_REQUEST, f"{path} is not an SQLite database ({error})") from None
    missing = {"jobs", "pictures", "ratings"} - tables
    if missing:
        connection.close()
        raise MmppError(
            ErrorCode.INVALID_REQUEST,
            f"{path} is not the bot's database: it has no {', '.join(sorted(missing))} table (run 'mmpp migrate')",
        )
    return connection


def _scale(meta: dict[str, Any], key: str) -> float | None:
    value = (meta.get("scales") or {}).get(key)
    return float(value) if isinstance(value, int | float) else None


def _figures(group: str, key: dict[str, Any], jobs: set[int], pictures: set[int], scores: list[int]) -> dict[str, Any]:
    mean, low, high = mean_interval(scores)
    return {
        "group": group,
        **key,
        "jobs": len(jobs),
        "pictures_rated": len(pictures),
        "ratings": len(scores),
        "mean": None if mean is None else round(mean, 4),
        "ci95_low": None if low is None else round(low, 4),
        "ci95_high": None if high is None else round(high, 4),
        "positive_share": round(sum(s >= POSITIVE_SCORE for s in scores) / len(scores), 4) if scores else None,
    }


def read_feedback(path: Path) -> dict[str, Any]:
    """Ratings grouped per style and per configuration, with means, 95 % intervals and shares >= 4.

    Per style, every job counts (rated or not); per configuration only rated
    pictures appear, since a configuration is known from a finished job.
    """
    connection = _open_read_only(path)
    try:
        job_counts = dict(connection.execute("SELECT style, COUNT(*) FROM jobs GROUP BY style").fetchall())
        rows = connection.execute(
            "SELECT jobs.id, jobs.style, jobs.mode, jobs.result_meta, pictures.id, ratings.score "
            "FROM ratings JOIN pictures ON pictures.id = ratings.picture_id JOIN jobs ON jobs.id = pictures.job_id "
            "ORDER BY jobs.style, jobs.id, pictures.id"
        ).fetchall()
    except sqlite3.DatabaseError as error:
        raise MmppError(ErrorCode.INVALID_REQUEST, f"{path}: the ratings cannot be read ({error})") from None
    finally:
        connection.close()

    styles: dict[str, tuple[set[int], set[int], list[int]]] = {style: (set(), set(), []) for style in job_counts}
    configs: dict[tuple[Any, ...], tuple[set[int], set[int], list[int]]] = {}
    test_sized = False
    for job_id, style, job_mode, meta_text, picture_id, score in rows:
        try:
            meta = json.loads(meta_text) if meta_text else {}
        except json.JSONDecodeError:
            meta = {}
        meta = meta if isinstance(meta, dict) else {}
        test_sized = test_sized or bool(meta.get("test_sized_model"))
        mode = meta.get("mode") or job_mode or "unknown"
        key = (style, mode, _scale(meta, "style_lora"), _scale(meta, "portrait_lora"), _scale(meta, "ip_adapter"))
        for bucket in (styles.setdefault(style, (set(), set(), [])), configs.setdefault(key, (set(), set(), []))):
            bucket[0].add(job_id)
            bucket[1].add(picture_id)
            bucket[2].append(int(score))
    by_style = []
    for style in sorted(styles):
        rated_jobs, pictures, scores = styles[style]
        row = _figures("style", {"style": style}, rated_jobs, pictures, scores)
        row["jobs"] = int(job_counts.get(style, len(rated_jobs)))
        by_style.append(row)
    by_configuration = [
        _figures(
            "configuration",
            {"style": k[0], "mode": k[1], "style_scale": k[2], "portrait_scale": k[3], "ip_adapter_scale": k[4]},
            *configs[k],
        )
        for k in sorted(configs, key=lambda k: tuple("" if v is None else str(v) for v in k))
    ]
    return {
        "kind": "mmpp-eval-feedback",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "database": str(path),
        "ratings": len(rows),
        "test_sized_model": test_sized,
        "interval": "95 % Student-t interval of the mean score (1-5): mean ± t(n-1)·s/√n; none below 2 ratings",
        "positive": f"share of ratings >= {POSITIVE_SCORE}",
        "by_style": by_style,
        "by_configuration": by_configuration,
    }


def _cell(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def format_table(feedback: dict[str, Any]) -> str:
    """The figures as aligned plain-text tables for the terminal."""
    lines = [f"ratings in {feedback['database']}: {feedback['ratings']}"]
    if feedback.get("test_sized_model"):
        lines.append("note: some rated pictures came from the tiny test-sized model (noise).")

    def table(title: str, columns: list[tuple[str, str]], rows: list[dict[str, Any]]) -> None:
        header = [name for name, _ in columns]
        body = [[_cell(row[key]) for _, key in columns] for row in rows]
        widths = [max(len(text) for text in [head, *(line[i] for line in body)]) for i, head in enumerate(header)]
        lines.extend(["", title, "  ".join(head.ljust(widths[i]) for i, head in enumerate(header))])
        lines.extend("  ".join(text.ljust(widths[i]) for i, text in enumerate(line)).rstrip() for line in body)

    shared = [
        ("ratings", "ratings"),
        ("mean", "mean"),
        ("ci95 low", "ci95_low"),
        ("ci95 high", "ci95_high"),
        ("share>=4", "positive_share"),
    ]
    table("per style", [("style", "style"), ("jobs", "jobs"), *shared], feedback["by_style"])
    table(
        "per configuration",
        [
            ("style", "style"),
            ("mode", "mode"),
            ("style scale", "style_scale"),
            ("portrait", "portrait_scale"),
            ("ip-adapter", "ip_adapter_scale"),
            *shared,
        ],
        feedback["by_configuration"],
    )
    return "\n".join(lines)


def write_feedback(feedback: dict[str, Any], out_dir: Path) -> list[Path]:
    """``feedback.json`` and ``feedback.csv`` (one row per style, then per configuration)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, csv_path = out_dir / "feedback.json", out_dir / "feedback.csv"
    json_path.write_text(json.dumps(feedback, indent=2), encoding="utf-8")
    with csv_path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for row in [*feedback["by_style"], *feedback["by_configuration"]]:
            writer.writerow({name: "" if row.get(name) is None else row.get(name) for name in CSV_FIELDS})
    return [json_path, csv_path]
