"""What people thought, computed once for both sides: ratings per style and per configuration.

The bot's ``mmpp feedback`` and the engine's ``mmpp eval --feedback`` must report the same
figures for the same ratings and neither side may import the other, so the statistics live
here, in the torch-free kernel, and work on plain rows (:class:`FeedbackRows`).  The SQL that
reads those rows lives only in ``bot/storage.py``; how each command prints the figures
(rounding, column names, files) stays with the command.

Per style every job counts, rated or not; per configuration only rated pictures appear,
since a configuration is known from a finished job: what its ``result_meta`` recorded about
the mode and the effective scales (style LoRA, portrait LoRA, IP-Adapter).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from mmpp.stats import mean_interval

#: A rating of 4 or 5 counts as positive.
POSITIVE_SCORE = 4
INTERVAL_TEXT = "95 % Student-t interval of the mean score (1-5): mean ± t(n-1)·s/√n; none below 2 ratings"
POSITIVE_TEXT = f"share of ratings >= {POSITIVE_SCORE}"


@dataclass(frozen=True)
class Rating:
    """One rating, with the job and the picture it belongs to, as the database holds them."""

    job_id: int
    style: str
    job_mode: str | None  # the job's own mode; None left it to the style
    result_meta: str | dict[str, Any] | None  # what the finished job recorded (JSON text as stored)
    picture_id: int
    score: int
    #: The variant of the style the job rendered (every picture of a job shares it).
    variant: str = "base"


@dataclass(frozen=True)
class FeedbackRows:
    """Everything the statistics need, read in one go."""

    jobs_per_style: dict[str, int] = field(default_factory=dict)  # every job, rated or not
    pictures_per_style: dict[str, int] = field(default_factory=dict)  # every stored picture
    ratings: tuple[Rating, ...] = ()
    #: The database they were read from, as it may be shown in a report: a file, or a URL without its
    #: password (the engine's report names it, and the engine cannot redact what it does not parse).
    source: str = ""


@dataclass(frozen=True)
class Figures:
    """Ratings count, mean with its 95 % interval, and the share of positive ratings (unrounded)."""

    ratings: int
    mean: float | None
    ci95_low: float | None
    ci95_high: float | None
    positive_share: float | None


@dataclass(frozen=True)
class Configuration:
    style: str
    mode: str
    style_scale: float | None
    portrait_scale: float | None
    ip_adapter_scale: float | None
    variant: str = "base"


@dataclass(frozen=True)
class StyleFeedback:
    style: str
    jobs: int
    pictures: int
    pictures_rated: int
    figures: Figures


@dataclass(frozen=True)
class ConfigurationFeedback:
    configuration: Configuration
    jobs: int  # jobs with at least one rated picture
    pictures_rated: int
    figures: Figures


@dataclass(frozen=True)
class VariantFeedback:
    """One variant of one style: the plain figures of its ratings (the assignment's rater-adjusted means are
    ``mmpp variants``')."""

    style: str
    variant: str
    jobs: int  # jobs with at least one rated picture
    pictures_rated: int
    figures: Figures


@dataclass(frozen=True)
class Feedback:
    ratings: int
    test_sized_model: bool  # some rated pictures came from the tiny test-sized model
    by_style: tuple[StyleFeedback, ...]
    by_configuration: tuple[ConfigurationFeedback, ...]
    by_variant: tuple[VariantFeedback, ...] = ()


def figures_of(scores: Sequence[int]) -> Figures:
    mean, low, high = mean_interval(list(scores))
    positive = sum(score >= POSITIVE_SCORE for score in scores) / len(scores) if scores else None
    return Figures(len(scores), mean, low, high, positive)


def result_meta(value: str | dict[str, Any] | None) -> dict[str, Any]:
    """The job's ``result_meta`` as a dict; anything unreadable reads as nothing recorded."""
    if isinstance(value, str):
        try:
            value = json.loads(value) if value else {}
        except json.JSONDecodeError:
            value = {}
    return value if isinstance(value, dict) else {}


def _scale(meta: dict[str, Any], key: str) -> float | None:
    value = (meta.get("scales") or {}).get(key)
    return float(value) if isinstance(value, int | float) else None


def configuration_of(rating: Rating) -> Configuration:
    meta = result_meta(rating.result_meta)
    return Configuration(
        style=rating.style,
        mode=meta.get("mode") or rating.job_mode or "unknown",
        style_scale=_scale(meta, "style_lora"),
        portrait_scale=_scale(meta, "portrait_lora"),
        ip_adapter_scale=_scale(meta, "ip_adapter"),
        variant=rating.variant,
    )


@dataclass
class _Bucket:
    jobs: set[int] = field(default_factory=set)
    pictures: set[int] = field(default_factory=set)
    scores: list[int] = field(default_factory=list)

    def add(self, rating: Rating) -> None:
        self.jobs.add(rating.job_id)
        self.pictures.add(rating.picture_id)
        self.scores.append(int(rating.score))


def _sort_key(configuration: Configuration) -> tuple[str, ...]:
    values = (
        configuration.style, configuration.variant, configuration.mode, configuration.style_scale,
        configuration.portrait_scale, configuration.ip_adapter_scale,
    )  # fmt: skip
    return tuple("" if value is None else str(value) for value in values)


def summarise(rows: FeedbackRows) -> Feedback:
    """Per style (sorted by name) and per configuration, with means, 95 % intervals and shares >= 4."""
    styles: dict[str, _Bucket] = {style: _Bucket() for style in rows.jobs_per_style}
    configurations: dict[Configuration, _Bucket] = {}
    variants: dict[tuple[str, str], _Bucket] = {}
    test_sized = False
    for rating in rows.ratings:
        test_sized = test_sized or bool(result_meta(rating.result_meta).get("test_sized_model"))
        styles.setdefault(rating.style, _Bucket()).add(rating)
        configurations.setdefault(configuration_of(rating), _Bucket()).add(rating)
        variants.setdefault((rating.style, rating.variant), _Bucket()).add(rating)
    by_style = tuple(
        StyleFeedback(
            style=style,
            jobs=int(rows.jobs_per_style.get(style, len(styles[style].jobs))),
            pictures=int(rows.pictures_per_style.get(style, 0)),
            pictures_rated=len(styles[style].pictures),
            figures=figures_of(styles[style].scores),
        )
        for style in sorted(styles)
    )
    by_configuration = tuple(
        ConfigurationFeedback(
            configuration=configuration,
            jobs=len(configurations[configuration].jobs),
            pictures_rated=len(configurations[configuration].pictures),
            figures=figures_of(configurations[configuration].scores),
        )
        for configuration in sorted(configurations, key=_sort_key)
    )
    by_variant = tuple(
        VariantFeedback(
            style=style,
            variant=variant,
            jobs=len(bucket.jobs),
            pictures_rated=len(bucket.pictures),
            figures=figures_of(bucket.scores),
        )
        for (style, variant), bucket in sorted(variants.items())
    )
    return Feedback(len(rows.ratings), test_sized, by_style, by_configuration, by_variant)
