"""The report folder: ``index.html`` (tables, inline-SVG charts, picture grids), JSON and CSV.

``index.html`` is rendered from ``results.json`` and ``feedback.json``
in the same folder, whichever exist, so a sweep and a later
``mmpp eval --feedback DB --report SAME_DIR`` end up on one page, and the
page never shows a figure that the machine-readable files lack.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from html import escape
from pathlib import Path
from typing import Any

from engine.evaluate.charts import empty_chart, line_chart, scatter_chart
from engine.evaluate.sweep import TINY_LABEL

PICTURE_FIELDS = (
    "picture_id",
    "config_id",
    "family",
    "selfie",
    "style",
    "variant",
    "mode",
    "style_scale",
    "portrait_scale",
    "ip_adapter_scale",
    "steps",
    "guidance",
    "seed",
    "width",
    "height",
    "face_found",
    "faces",
    "identity_distance",
    "same_person",
    "clip_score",
    "seconds_per_picture",
    "denoise_seconds",
    "vae_decode_seconds",
    "image",
)

STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; max-width: 1200px; }
h1 { margin-bottom: 4px; } h2 { margin-top: 32px; border-bottom: 1px solid #ddd; }
.meta { color: #666; }
.warning { background: #fdecea; border: 2px solid #d62728; color: #8a1010; padding: 10px 14px; font-weight: bold; }
table { border-collapse: collapse; margin: 8px 0; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: 3px 7px; text-align: right; }
th { background: #f4f4f4; } td.text, th.text { text-align: left; }
.missing { color: #a00; } .ok { color: #060; }
.charts { display: flex; flex-wrap: wrap; gap: 12px; }
.grid { display: flex; flex-wrap: wrap; gap: 8px; align-items: flex-start; margin-bottom: 8px; }
figure { margin: 0; width: 136px; font-size: 11px; }
figure img { width: 128px; height: 128px; object-fit: contain; background: #eee; image-rendering: pixelated; }
figure.selfie img { outline: 3px solid #1f77b4; }
"""


def _cell(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) >= 1000 else f"{value:.{digits}f}".rstrip("0").rstrip(".") or "0"
    return escape(str(value))


def _table(
    columns: list[tuple[str, str]], rows: list[dict[str, Any]], text_columns: frozenset[str] = frozenset()
) -> str:
    head = "".join(f'<th class="{"text" if key in text_columns else ""}">{escape(name)}</th>' for name, key in columns)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="{"text" if key in text_columns else ""}">{_cell(row.get(key))}</td>' for _, key in columns
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


# --------------------------------------------------------------------------- files


def write_results(results: dict[str, Any], out_dir: Path) -> list[Path]:
    """``results.json`` (everything) and ``results.csv`` (one row per picture)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, csv_path = out_dir / "results.json", out_dir / "results.csv"
    json_path.write_text(json.dumps(results, indent=2), encoding="utf-8")
    with csv_path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=PICTURE_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for row in results["pictures"]:
            writer.writerow({name: "" if row.get(name) is None else row.get(name) for name in PICTURE_FIELDS})
    return [json_path, csv_path]


def _load(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def render_index(out_dir: Path) -> Path:
    """Write ``index.html`` from the JSON files in ``out_dir``; return its path."""
    results = _load(out_dir / "results.json")
    feedback = _load(out_dir / "feedback.json")
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8"><title>MMPP evaluation report</title>',
        f"<style>{STYLE}</style></head><body>",
        "<h1>MMPP evaluation report</h1>",
    ]
    if (results and results.get("test_sized_model")) or (feedback and feedback.get("test_sized_model")):
        parts.append(f'<p class="warning" id="test-sized">{escape(TINY_LABEL)}.</p>')
    if results:
        parts.extend(_sweep_sections(results))
    if feedback:
        parts.extend(_feedback_sections(feedback))
    if not results and not feedback:
        parts.append("<p>Nothing to report yet: no results.json or feedback.json in this folder.</p>")
    parts.append("</body></html>")
    path = out_dir / "index.html"
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- sweep sections


def _grouped(pictures: list[dict[str, Any]], x_key: str, y_of: Any) -> dict[str, list[tuple[float, float]]]:
    """Per style (per family and style when a sweep ran several families): mean of ``y_of(picture)`` at each
    value of ``x_key`` (pictures with y None left out)."""
    buckets: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    several = len({picture.get("family", "") for picture in pictures}) > 1
    for picture in pictures:
        x, y = picture.get(x_key), y_of(picture)
        if x is not None and y is not None:
            line = f"{picture['family']} {picture['style']}" if several else picture["style"]
            buckets[line][float(x)].append(float(y))
    return {style: [(x, sum(v) / len(v)) for x, v in by_x.items()] for style, by_x in buckets.items()}


def _charts(results: dict[str, Any]) -> list[str]:
    pictures, configs, metrics = results["pictures"], results["configurations"], results["metrics"]
    charts = [
        line_chart(
            "Identity vs style scale",
            _grouped(pictures, "style_scale", lambda p: float(p["same_person"])),
            "style LoRA scale",
            "share same person (d < 0.6)",
            (0.0, 1.0),
        ),
        line_chart(
            "Faces found vs style scale",
            _grouped(pictures, "style_scale", lambda p: float(p["face_found"])),
            "style LoRA scale",
            "share with a face",
            (0.0, 1.0),
        ),
    ]
    if len({p["ip_adapter_scale"] for p in pictures}) > 1:
        charts.append(
            line_chart(
                "Identity vs IP-Adapter scale",
                _grouped(pictures, "ip_adapter_scale", lambda p: float(p["same_person"])),
                "IP-Adapter scale",
                "share same person (d < 0.6)",
                (0.0, 1.0),
            )
        )
    if metrics["clip"]["available"]:
        charts.append(
            line_chart(
                "Prompt alignment vs style scale",
                _grouped(pictures, "style_scale", lambda p: p["clip_score"]),
                "style LoRA scale",
                "CLIP score",
            )
        )
    else:
        charts.append(empty_chart("Prompt alignment vs style scale", metrics["clip"]["detail"]))
    timed = [c for c in configs if c["seconds_per_picture"] is not None]
    charts.append(
        scatter_chart(
            "Identity vs speed (one dot per configuration)",
            [(c["seconds_per_picture"], c["same_person_rate"], c["config_id"]) for c in timed],
            "seconds per picture",
            "share same person",
            (0.0, 1.0),
        )
    )
    if metrics["clip"]["available"]:
        charts.append(
            scatter_chart(
                "Prompt alignment vs speed",
                [
                    (c["seconds_per_picture"], c["mean_clip_score"], c["config_id"])
                    for c in timed
                    if c["mean_clip_score"] is not None
                ],
                "seconds per picture",
                "CLIP score",
            )
        )
    if metrics["fid_kid"]["available"]:
        fid_points = [(c["seconds_per_picture"], c["fid"], c["config_id"]) for c in timed if c["fid"] is not None]
        charts.append(
            scatter_chart(
                "FID vs speed (lower FID is closer to the reference)", fid_points, "seconds per picture", "FID"
            )
            if fid_points
            else empty_chart("FID vs speed", "FID needs at least 2 pictures per configuration; see the overall figure")
        )
    else:
        charts.append(empty_chart("FID vs speed", metrics["fid_kid"]["detail"]))
    return charts


def _families_section(families: list[dict[str, Any]]) -> list[str]:
    """The families side by side: the same selfies and combinations, one row each, and what each did not
    sweep (said here, so a missing portrait-scale column on klein never reads as a silent zero)."""
    parts = [
        '<h2 id="families">Families side by side</h2>',
        "<p>Each family made the sweep's combinations on the same selfies, except the settings it lacks "
        "(listed under the table: those were not swept on it).</p>",
        _table(
            [
                ("family", "family"),
                ("model", "model"),
                ("pictures", "pictures"),
                ("failed", "failures"),
                ("face rate", "face_rate"),
                ("same person", "same_person_rate"),
                ("mean distance", "mean_identity_distance"),
                ("CLIP", "mean_clip_score"),
                ("s / picture", "seconds_per_picture"),
            ],
            families,
            frozenset({"family", "model"}),
        ),
    ]
    notes = [
        f"<li><b>{escape(row['family'])}</b>: {escape(setting)} not swept ({escape(reason)})</li>"
        for row in families
        for setting, reason in row.get("not_swept", {}).items()
    ]
    if notes:
        parts.append('<ul id="not-swept">' + "".join(notes) + "</ul>")
    return parts


def _sweep_sections(results: dict[str, Any]) -> list[str]:
    metrics = results["metrics"]
    parts = [
        f'<p class="meta">Sweep made {escape(results.get("created", ""))} with model '
        f"<b>{escape(str(results.get('model', '')))}</b>; {len(results['pictures'])} pictures in "
        f"{results.get('seconds', 0)} s; {len(results['failures'])} failed combinations.</p>",
        "<h2>Metrics</h2><ul>",
    ]
    names = {
        "identity": "Identity",
        "clip": "Prompt alignment (CLIP)",
        "fid_kid": "Distribution (FID/KID)",
        "speed": "Speed",
    }
    for key, name in names.items():
        entry = metrics[key]
        status = '<span class="ok">computed</span>' if entry["available"] else '<span class="missing">missing</span>'
        parts.append(f"<li><b>{name}</b>: {status} — {escape(entry['detail'])}</li>")
    parts.append("</ul>")
    missing = [names[key] for key, entry in metrics.items() if not entry["available"]]
    if missing:
        parts.append(
            '<p class="missing" id="missing-metrics">Missing metric models: ' + escape(", ".join(missing)) + "</p>"
        )
    families = results.get("families", [])
    if len(families) > 1 or any(row.get("not_swept") for row in families):
        parts.extend(_families_section(families))
    overall = results["overall"]
    parts.append("<h2>Overall</h2>")
    parts.append(
        _table(
            [
                ("pictures", "pictures"),
                ("face rate", "face_rate"),
                ("same person", "same_person_rate"),
                ("mean distance", "mean_identity_distance"),
                ("CLIP", "mean_clip_score"),
                ("s / picture", "seconds_per_picture"),
                ("FID", "fid"),
                ("KID", "kid_mean"),
                ("KID std", "kid_std"),
                ("reference images", "reference_images"),
            ],
            [overall],
        )
    )
    parts.append('<h2>Charts</h2><div class="charts">')
    parts.extend(_charts(results))
    parts.append("</div>")
    parts.append("<h2>Configurations</h2>")
    parts.append(
        "<p>face rate: share of pictures where a face is detected; same person: share with dlib distance &lt; 0.6 "
        "(no face counts as not the same person); mean distance: over pictures with a face (lower is closer); "
        "FID and KID need at least 2 pictures of a configuration.</p>"
    )
    parts.append(
        _table(
            [
                ("config", "config_id"),
                ("family", "family"),
                ("style", "style"),
                ("variant", "variant"),
                ("mode", "mode"),
                ("style scale", "style_scale"),
                ("portrait scale", "portrait_scale"),
                ("IP-Adapter scale", "ip_adapter_scale"),
                ("steps", "steps"),
                ("pictures", "pictures"),
                ("face rate", "face_rate"),
                ("same person", "same_person_rate"),
                ("mean distance", "mean_identity_distance"),
                ("CLIP", "mean_clip_score"),
                ("s / picture", "seconds_per_picture"),
                ("FID", "fid"),
                ("KID", "kid_mean"),
            ],
            results["configurations"],
            frozenset({"config_id", "family", "style", "variant", "mode"}),
        )
    )
    parts.append("<h2>Pictures per configuration</h2>")
    selfies = {s["file"]: s for s in results["selfies"]}
    for config in results["configurations"]:
        parts.append(
            f'<h3 id="{escape(config["config_id"])}">{escape(config["config_id"])}: '
            f"{escape(config.get('family') or '')} {escape(config['style'])}, "
            f"{escape(config['mode'])}, style {_cell(config['style_scale'])}, portrait "
            f"{_cell(config['portrait_scale'])}, IP-Adapter {_cell(config['ip_adapter_scale'])}, "
            f"{config['steps']} steps</h3>"
        )
        by_selfie: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for picture in results["pictures"]:
            if picture.get("config_id") == config["config_id"]:
                by_selfie[picture["selfie"]].append(picture)
        for selfie_name, members in by_selfie.items():
            parts.append('<div class="grid">')
            thumb = selfies.get(selfie_name, {}).get("image")
            if thumb:
                parts.append(
                    f'<figure class="selfie"><img src="{escape(thumb)}" alt="selfie {escape(selfie_name)}">'
                    f"<figcaption>selfie {escape(selfie_name)}</figcaption></figure>"
                )
            for picture in members:
                face = f"d={picture['identity_distance']:.2f}" if picture["face_found"] else "no face"
                clip = f" · CLIP {picture['clip_score']:.1f}" if picture["clip_score"] is not None else ""
                parts.append(
                    f'<figure><img src="{escape(picture["image"])}" alt="{escape(picture["picture_id"])}" '
                    f'loading="lazy"><figcaption>seed {picture["seed"]} · {face}{clip} · '
                    f"{picture['seconds_per_picture']:.2f} s</figcaption></figure>"
                )
            parts.append("</div>")
    if results["failures"]:
        parts.append("<h2>Failed combinations</h2>")
        parts.append(
            _table(
                [
                    ("family", "family"),
                    ("selfie", "selfie"),
                    ("style", "style"),
                    ("variant", "variant"),
                    ("mode", "mode"),
                    ("style scale", "style_scale"),
                    ("portrait scale", "portrait_scale"),
                    ("IP-Adapter scale", "ip_adapter_scale"),
                    ("seed", "seed"),
                    ("error", "error"),
                ],
                results["failures"],
                frozenset({"family", "selfie", "style", "mode", "error"}),
            )
        )
    skipped = [s for s in results["selfies"] if s.get("problem")]
    if skipped:
        parts.append("<h2>Skipped selfies</h2>")
        parts.append(_table([("file", "file"), ("reason", "problem")], skipped, frozenset({"file", "problem"})))
    return parts


# --------------------------------------------------------------------------- feedback section


def _feedback_sections(feedback: dict[str, Any]) -> list[str]:
    shared = [
        ("ratings", "ratings"),
        ("pictures rated", "pictures_rated"),
        ("mean score", "mean"),
        ("95 % CI low", "ci95_low"),
        ("95 % CI high", "ci95_high"),
        ("share ≥ 4", "positive_share"),
    ]
    return [
        '<h2 id="feedback">Feedback from the bot</h2>',
        f'<p class="meta">{feedback["ratings"]} ratings (1-5) read {escape(feedback.get("created", ""))} from '
        f"{escape(feedback['database'])}. {escape(feedback['interval'])}.</p>",
        "<h3>Per style</h3>",
        _table([("style", "style"), ("jobs", "jobs"), *shared], feedback["by_style"], frozenset({"style"})),
        "<h3>Per variant (the style's variants tried on live traffic)</h3>",
        _table(
            [("style", "style"), ("variant", "variant"), ("jobs", "jobs"), *shared],
            feedback.get("by_variant", []),
            frozenset({"style", "variant"}),
        ),
        "<h3>Per configuration (mode and scales the jobs ran with)</h3>",
        _table(
            [
                ("style", "style"),
                ("variant", "variant"),
                ("mode", "mode"),
                ("style scale", "style_scale"),
                ("portrait scale", "portrait_scale"),
                ("IP-Adapter scale", "ip_adapter_scale"),
                *shared,
            ],
            feedback["by_configuration"],
            frozenset({"style", "variant", "mode"}),
        ),
    ]
