"""What people thought: ratings per style and per configuration, from the bot's database (SQLite or PostgreSQL).

The figures come from ``mmpp.feedback`` (the kernel), the same code the bot's ``mmpp feedback``
uses, so both commands print the same numbers for the same ratings.  The rows come from a
reader handed in by the caller: the SQL lives only in ``bot/storage.py``
(``read_feedback_rows``, which opens the database read-only through the bot's ``Storage``: SQLite
``file:...?mode=ro``, PostgreSQL with read-only transactions, so a report can be made while the bot
runs and never changes its data), and ``engine`` never imports
``bot``; the dispatcher ``mmpp/cli.py`` passes that reader to ``mmpp eval``.  What is left here
is the engine's presentation: rounding to 4 digits, the terminal table, ``feedback.json`` and
``feedback.csv``.

A configuration is what ``result_meta`` recorded about the finished job: its mode and its
effective scales (style LoRA, portrait LoRA, IP-Adapter).
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mmpp.feedback import INTERVAL_TEXT, POSITIVE_TEXT, FeedbackRows, Figures, summarise

#: Reads the bot's database at a location (an SQLite file, a ``postgresql://`` URL, or "" for the bot's own
#: configured database) into plain rows (``bot.storage.read_feedback_rows``, through ``mmpp/cli.py``).
FeedbackReader = Callable[[str], FeedbackRows]
CSV_FIELDS = (
    "group",
    "style",
    "variant",
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


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _figures(figures: Figures) -> dict[str, Any]:
    return {
        "ratings": figures.ratings,
        "mean": _rounded(figures.mean),
        "ci95_low": _rounded(figures.ci95_low),
        "ci95_high": _rounded(figures.ci95_high),
        "positive_share": _rounded(figures.positive_share),
    }


def read_feedback(location: Path | str, read_rows: FeedbackReader) -> dict[str, Any]:
    """Ratings grouped per style and per configuration, with means, 95 % intervals and shares >= 4.

    Per style, every job counts (rated or not); per configuration only rated
    pictures appear, since a configuration is known from a finished job.
    """
    rows = read_rows(str(location))
    feedback = summarise(rows)
    by_style = [
        {"group": "style", "style": row.style, "jobs": row.jobs, "pictures_rated": row.pictures_rated,
         **_figures(row.figures)}
        for row in feedback.by_style
    ]  # fmt: skip
    by_configuration = [
        {
            "group": "configuration",
            "style": row.configuration.style,
            "variant": row.configuration.variant,
            "mode": row.configuration.mode,
            "style_scale": row.configuration.style_scale,
            "portrait_scale": row.configuration.portrait_scale,
            "ip_adapter_scale": row.configuration.ip_adapter_scale,
            "jobs": row.jobs,
            "pictures_rated": row.pictures_rated,
            **_figures(row.figures),
        }
        for row in feedback.by_configuration
    ]
    by_variant = [
        {"group": "variant", "style": row.style, "variant": row.variant, "jobs": row.jobs,
         "pictures_rated": row.pictures_rated, **_figures(row.figures)}
        for row in feedback.by_variant
    ]  # fmt: skip
    return {
        "kind": "mmpp-eval-feedback",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "database": rows.source or str(location),
        "ratings": feedback.ratings,
        "test_sized_model": feedback.test_sized_model,
        "interval": INTERVAL_TEXT,
        "positive": POSITIVE_TEXT,
        "by_style": by_style,
        "by_configuration": by_configuration,
        "by_variant": by_variant,
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
        "per variant", [("style", "style"), ("variant", "variant"), ("jobs", "jobs"), *shared], feedback["by_variant"]
    )
    table(
        "per configuration",
        [
            ("style", "style"),
            ("variant", "variant"),
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
    """``feedback.json`` and ``feedback.csv`` (one row per style, then per variant, then per configuration)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, csv_path = out_dir / "feedback.json", out_dir / "feedback.csv"
    json_path.write_text(json.dumps(feedback, indent=2), encoding="utf-8")
    with csv_path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for row in [*feedback["by_style"], *feedback["by_variant"], *feedback["by_configuration"]]:
            writer.writerow({name: "" if row.get(name) is None else row.get(name) for name in CSV_FIELDS})
    return [json_path, csv_path]
