"""Parameter sweeps: every combination of styles, scales, modes and seeds, for every selfie.

Why one :class:`~engine.pipeline.Engine` for the whole sweep: switching style
or scale only changes adapter weights (``set_adapters``), so a sweep costs
one model load plus the pictures, exactly as in the worker; the scales go in
through :class:`~engine.pipeline.ScaleOverrides`, the same door tests use.

Each picture is scored as soon as it is made (identity, CLIP, Inception
features), so a large sweep never holds all its pictures in memory; only
thumbnails are written to disk.
"""

from __future__ import annotations

import gc
import io
import itertools
import logging
import math
import time
import tomllib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from engine.evaluate.scorers import (
    ClipScorer,
    IdentityScorer,
    MetricUnavailableError,
    fid_from_features,
    kernel_inception_distance,
)
from engine.faces import SAME_PERSON_DISTANCE, decode_image
from mmpp.catalogue import SCALE_BOUNDS, STEP_BOUNDS, Catalogue
from mmpp.contract import MAX_PICTURES, MIN_PICTURES, GenerateRequest, Mode
from mmpp.errors import ErrorCode, MmppError

if TYPE_CHECKING:
    from engine.evaluate.inception import InceptionFeatures
    from engine.pipeline import Engine

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
THUMBNAIL_SIDE = 256
#: The sweep file's keys; anything else is a typo and is refused by name.
SWEEP_FIELDS = (
    "styles", "variants", "style_scale", "portrait_scale", "ip_adapter_scale", "modes", "seeds", "steps", "count",
    "prompt", "families", "base_models",
)  # fmt: skip
TINY_LABEL = "test-sized model: pictures are noise, figures are meaningless"
#: The engine families a sweep can name (``families = [...]``), as ``--family`` names them.
SWEEP_FAMILIES = ("sd15", "sdxl", "flux2-klein")
#: Sweep settings a family has no part for, and why.  On that family they are not swept (one combination
#: instead of one per value) and the results say so per family; a file that sweeps such a setting on no
#: family that has it is refused at load.  The klein engine refuses the same overrides itself
#: (``KleinEngine.plan``), so nothing reaches it silently.
SETTINGS_FAMILY_LACKS: dict[str, dict[str, str]] = {
    "flux2-klein": {
        "portrait_scale": "flux2-klein has no portrait LoRA: the reference photo carries the person",
        "ip_adapter_scale": "flux2-klein has no IP-Adapter: the reference photo carries the person",
    },
}


def _bad(path: Path, name: str, problem: str) -> MmppError:
    return MmppError(ErrorCode.INVALID_REQUEST, f"sweep file {path}: field '{name}' {problem}")


@dataclass(frozen=True)
class SweepConfig:
    """A parsed sweep file.  ``None`` in a scale or mode list means "the style's own value"."""

    styles: list[str]
    style_scales: list[float | None]
    portrait_scales: list[float | None]
    ip_adapter_scales: list[float | None]
    modes: list[Mode | None]
    seeds: list[int]
    steps: dict[Mode, int] = field(default_factory=dict)
    count: int = 1
    prompt: str = ""
    #: Per style, the variants to render (``["base"]``: the style as written; the file's ``variants = "all"``
    #: renders every variant, so ``mmpp variants floor`` can judge them all on the same selfies).
    variants: dict[str, list[str]] = field(default_factory=dict)
    #: The families to run side by side on the same selfies (``[]``: the one engine ``--weights`` chooses).
    families: list[str] = field(default_factory=list)
    #: With real weights, each family's base model (its ``MMPP_BASE_MODEL``); a family not named here uses
    #: ``MMPP_BASE_MODEL`` itself, and must be the family that model is.
    base_models: dict[str, str] = field(default_factory=dict)

    def not_swept(self, family: str) -> dict[str, str]:
        """The settings this file sweeps that ``family`` has no part for, each with the reason."""
        swept = {"portrait_scale": self.portrait_scales, "ip_adapter_scale": self.ip_adapter_scales}
        lacks = SETTINGS_FAMILY_LACKS.get(family, {})
        return {name: reason for name, reason in lacks.items() if swept[name] != [None]}

    def combinations(
        self, family: str = ""
    ) -> list[tuple[str, str, float | None, float | None, float | None, Mode | None, int]]:
        """styles x their variants x style scale x portrait scale x IP-Adapter scale x mode x seed, in that order.

        On a family without a portrait LoRA or IP-Adapter those scales are left at ``None`` (not swept, see
        :meth:`not_swept`) instead of being handed to an engine that would refuse every combination."""
        lacks = SETTINGS_FAMILY_LACKS.get(family, {})
        portrait_scales = [None] if "portrait_scale" in lacks else self.portrait_scales
        ip_adapter_scales = [None] if "ip_adapter_scale" in lacks else self.ip_adapter_scales
        return [
            (style, variant, *rest)
            for style in self.styles
            for variant in self.variants.get(style, ["base"])
            for rest in itertools.product(self.style_scales, portrait_scales, ip_adapter_scales, self.modes, self.seeds)
        ]


def load_sweep(path: Path, catalogue: Catalogue, default_family: str = "") -> SweepConfig:
    """Read and check a sweep file, naming the field at fault in a one-line error.

    ``default_family`` is the family the sweep runs on when the file names no ``families`` (``--weights
    tiny --family ...``; empty when only loading the real weights will tell).

    Everything is checked before any model loads, so a typo costs
    milliseconds, not a model load.  Keys::

        styles = ["anime", "watercolor"]      # required
        variants = "all"                      # optional: "all", or a list of names; omitted = ["base"]
        style_scale = [0.5, 1.0]              # optional lists; omitted = each style's own value
        portrait_scale = [0.4]
        ip_adapter_scale = [0.6]
        modes = ["fast"]                      # omitted = each style's default mode
        seeds = [1, 2]                        # default [0]
        steps = 4                             # or {fast = 4, quality = 20}; omitted = style default
        count = 1                             # pictures per seed (1-4; seeds seed, seed+1, ...)
        prompt = ""                           # the subject, as a user would type it
        families = ["sd15", "flux2-klein"]    # optional: run each family on the same selfies, side by side
        base_models = {flux2-klein = "black-forest-labs/FLUX.2-klein-4B"}   # real weights: a family's model
    """
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MmppError(ErrorCode.INVALID_REQUEST, f"sweep file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as error:
        raise MmppError(
            ErrorCode.INVALID_REQUEST, f"sweep file {path} cannot be read ({type(error).__name__})"
        ) from None
    except tomllib.TOMLDecodeError as error:
        raise MmppError(ErrorCode.INVALID_REQUEST, f"sweep file {path} is not valid TOML: {error}") from None
    for key in document:
        if key not in SWEEP_FIELDS:
            raise _bad(path, key, f"is not a sweep field; use: {', '.join(SWEEP_FIELDS)}")

    styles = document.get("styles")
    if not isinstance(styles, list) or not styles or not all(isinstance(item, str) for item in styles):
        raise _bad(path, "styles", "must be a non-empty list of style names")
    for name in styles:
        if name not in catalogue:
            raise _bad(path, "styles", f"names '{name}', which is not in the catalogue ({', '.join(catalogue.names)})")
    styles = [catalogue.get(name).name for name in styles]
    variants: dict[str, list[str]] = {}
    if "variants" in document:
        wanted = document["variants"]
        if wanted == "all":
            variants = {name: list(catalogue.get(name).variant_names) for name in styles}
        elif isinstance(wanted, list) and wanted and all(isinstance(item, str) for item in wanted):
            for name in styles:
                known = catalogue.get(name).variant_names
                variants[name] = [variant for variant in wanted if variant in known]
                if not variants[name]:
                    raise _bad(path, "variants", f"names none of the variants of '{name}' ({', '.join(known)})")
            for variant in wanted:
                if not any(variant in names for names in variants.values()):
                    raise _bad(path, "variants", f"names '{variant}', which no style of the sweep has")
        else:
            raise _bad(path, "variants", 'must be "all" or a non-empty list of variant names')

    def scales(name: str) -> list[float | None]:
        if name not in document:
            return [None]
        values = document[name]
        low, high = SCALE_BOUNDS[name]
        if (
            not isinstance(values, list)
            or not values
            or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
        ):
            raise _bad(path, name, f"must be a non-empty list of numbers between {low:g} and {high:g}")
        for value in values:
            if not (math.isfinite(value) and low <= value <= high):
                raise _bad(path, name, f"has {value!r}; values must lie between {low:g} and {high:g}")
        return [float(value) for value in values]

    modes: list[Mode | None] = [None]
    if "modes" in document:
        values = document["modes"]
        if not isinstance(values, list) or not values:
            raise _bad(path, "modes", "must be a non-empty list of 'fast' and/or 'quality'")
        try:
            modes = [Mode(value) for value in values]
        except ValueError:
            raise _bad(path, "modes", f"has {values!r}; use 'fast' and/or 'quality'") from None

    seeds = document.get("seeds", [0])
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed < 2**32 for seed in seeds)
    ):
        raise _bad(path, "seeds", "must be a non-empty list of integers from 0 to 4294967295")

    steps: dict[Mode, int] = {}
    if "steps" in document:
        value = document["steps"]
        if isinstance(value, int) and not isinstance(value, bool):
            # One number for every mode the sweep runs (a style's default mode where none is named).
            used = {mode or catalogue.get(name).mode for mode in modes for name in styles}
            steps = dict.fromkeys(sorted(used), value)
        elif isinstance(value, dict):
            for key, number in value.items():
                try:
                    steps[Mode(key)] = number
                except ValueError:
                    raise _bad(path, "steps", f"has a table key '{key}'; use 'fast' and 'quality'") from None
        else:
            raise _bad(path, "steps", "must be an integer or a table {fast = N, quality = N}")
        for mode, number in steps.items():
            low, high = STEP_BOUNDS[mode]
            if not isinstance(number, int) or isinstance(number, bool) or not low <= number <= high:
                raise _bad(path, "steps", f"has {number!r} for {mode.value} mode, which takes {low} to {high} steps")

    count = document.get("count", 1)
    if not isinstance(count, int) or isinstance(count, bool) or not MIN_PICTURES <= count <= MAX_PICTURES:
        raise _bad(path, "count", f"must be an integer from {MIN_PICTURES} to {MAX_PICTURES}")
    prompt = document.get("prompt", "")
    if not isinstance(prompt, str):
        raise _bad(path, "prompt", "must be a string")
    families = _families(path, document)
    base_models = document.get("base_models", {})
    if not isinstance(base_models, dict) or not all(
        isinstance(name, str) and isinstance(model, str) and model.strip() for name, model in base_models.items()
    ):
        raise _bad(path, "base_models", 'must be a table {family = "Hub id or folder"}')
    for name in base_models:
        if name not in families:
            raise _bad(path, "base_models", f"names '{name}', which is not one of the sweep's families")
    # A setting swept on no family that has it would sweep nothing: refused, not run as a no-op.
    running = families or ([default_family] if default_family else [])
    for setting in ("portrait_scale", "ip_adapter_scale"):
        reasons = [SETTINGS_FAMILY_LACKS.get(family, {}).get(setting) for family in running]
        if setting in document and running and all(reasons):
            raise _bad(path, setting, f"is swept, but no family of the sweep has it ({'; '.join(map(str, reasons))})")
    return SweepConfig(
        styles=styles,
        style_scales=scales("style_scale"),
        portrait_scales=scales("portrait_scale"),
        ip_adapter_scales=scales("ip_adapter_scale"),
        modes=modes,
        seeds=[int(seed) for seed in seeds],
        steps=steps,
        count=count,
        prompt=prompt,
        variants=variants,
        families=families,
        base_models={name: model.strip() for name, model in base_models.items()},
    )


def _families(path: Path, document: dict[str, Any]) -> list[str]:
    if "families" not in document:
        return []
    families = document["families"]
    if not isinstance(families, list) or not families or not all(isinstance(item, str) for item in families):
        raise _bad(path, "families", f"must be a non-empty list of families ({', '.join(SWEEP_FAMILIES)})")
    for name in families:
        if name not in SWEEP_FAMILIES:
            raise _bad(path, "families", f"names '{name}', which is not a family ({', '.join(SWEEP_FAMILIES)})")
    if len(set(families)) != len(families):
        raise _bad(path, "families", "names a family twice")
    return list(families)


def list_images(folder: Path, what: str) -> list[Path]:
    """The picture files directly in ``folder``, sorted; a one-line error if there are none."""
    if not folder.is_dir():
        raise MmppError(ErrorCode.INVALID_REQUEST, f"the {what} folder {folder} does not exist or is not a folder")
    files = sorted(path for path in folder.iterdir() if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise MmppError(
            ErrorCode.INVALID_REQUEST, f"the {what} folder {folder} holds no {'/'.join(IMAGE_SUFFIXES)} files"
        )
    return files


# --------------------------------------------------------------------------- running


@dataclass
class Scorers:
    """The metric models the sweep could load, and the reasons for those it could not."""

    identity: IdentityScorer
    clip: ClipScorer | None = None
    clip_reason: str = ""
    inception: InceptionFeatures | None = None
    inception_reason: str = ""


@dataclass
class SweepSelfie:
    """One selfie file of a sweep: decoded, with its identity embedding, or the one-line reason it cannot be used."""

    index: int
    path: Path
    image: Image.Image
    data: bytes
    embedding: np.ndarray | None = None
    problem: str = ""
    thumbnail: str | None = None


def _thumbnail(image: Image.Image, path: Path) -> None:
    thumb = image.convert("RGB")
    thumb.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE), Image.Resampling.LANCZOS)
    path.parent.mkdir(parents=True, exist_ok=True)
    thumb.save(path, format="PNG")


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(float(value), digits)


def _mean(values: Iterable[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return sum(present) / len(present) if present else None


def config_key(row: dict[str, Any]) -> tuple[Any, ...]:
    """Pictures with equal key were made the same way (seed aside)."""
    return (
        row.get("family", ""), row["style"], row.get("variant", "base"), row["mode"], row["style_scale"],
        row["portrait_scale"], row["ip_adapter_scale"], row["steps"],
    )  # fmt: skip


@dataclass(frozen=True)
class FamilyEngine:
    """One family of a side-by-side sweep, loaded when its turn comes and let go after it, so a sweep of two
    real models needs the memory of the larger one, not of both."""

    family: str
    load: Callable[[], Engine]


def run_sweep(
    engines: Engine | Sequence[FamilyEngine],
    selfie_files: list[Path],
    config: SweepConfig,
    out_dir: Path,
    scorers: Scorers,
    reference_files: list[Path] | None = None,
    on_progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Generate and score every picture; return everything the report shows (JSON-ready).

    A combination the engine refuses (say, fast mode on a worker without
    the LCM-LoRA) becomes a failure entry and the sweep goes on; a selfie
    without a usable face is skipped with its reason.  ``engines`` is one
    engine, or the families to run side by side: each makes every combination
    on the same selfies (less the settings it lacks, see
    :meth:`SweepConfig.combinations`), and the results hold a row per family.
    """
    if isinstance(engines, Sequence):
        runs = list(engines)
    else:
        single = engines
        runs = [FamilyEngine(str(getattr(single, "family", "")), lambda: single)]
    images_dir = out_dir / "images"
    selfies: list[SweepSelfie] = []
    for index, path in enumerate(selfie_files):
        data = path.read_bytes()
        try:
            image = decode_image(data)
        except MmppError as error:
            selfies.append(SweepSelfie(index, path, Image.new("RGB", (1, 1)), data, problem=error.as_line()))
            continue
        selfie = SweepSelfie(index, path, image, data)
        try:
            selfie.embedding = scorers.identity.reference(image)
        except MmppError as error:
            selfie.problem = error.as_line()
        selfie.thumbnail = f"images/selfie-{index:03d}.png"
        _thumbnail(image, out_dir / selfie.thumbnail)
        selfies.append(selfie)
    usable = [selfie for selfie in selfies if not selfie.problem]
    if not usable:
        raise MmppError(
            ErrorCode.NO_FACE,
            "no selfie in the folder can be used: " + "; ".join(f"{s.path.name}: {s.problem}" for s in selfies),
        )

    total = sum(len(usable) * len(config.combinations(run.family)) * config.count for run in runs)
    pictures: list[dict[str, Any]] = []
    failures: list[dict[str, Any]] = []
    features: list[np.ndarray] = []
    started = time.perf_counter()
    test_sized = False
    models: dict[str, str] = {}
    from engine.pipeline import ScaleOverrides

    for run in runs:
        engine = run.load()
        family = run.family or str(getattr(engine, "family", ""))
        models[family] = engine.sources.label or engine.sources.base
        test_sized = test_sized or bool(engine.sources.test_sized)
        for selfie in usable:
            for style, variant, style_scale, portrait_scale, ip_scale, mode, seed in config.combinations(family):
                declared = engine.catalogue.get(style).with_variant(variant).family
                if declared and declared != family:
                    continue  # a variant of another family (its `family`) is judged on that family's run only
                request = GenerateRequest(
                    variant=variant,
                    selfie=selfie.data,
                    style=style,
                    prompt=config.prompt,
                    mode=mode,
                    count=config.count,
                    seed=seed,
                    steps=config.steps.get(mode or engine.catalogue.get(style).mode),
                )
                overrides = ScaleOverrides(
                    style_scale=style_scale, portrait_scale=portrait_scale, ip_adapter_scale=ip_scale
                )
                wanted = {
                    "family": family, "selfie": selfie.path.name, "style": style, "variant": variant,
                    "mode": mode.value if mode else "(style default)",
                    "style_scale": style_scale, "portrait_scale": portrait_scale, "ip_adapter_scale": ip_scale,
                    "seed": seed,
                }  # fmt: skip
                try:
                    result = engine.generate(request, overrides=overrides)
                except MmppError as error:
                    failures.append({**wanted, "error": error.as_line()})
                    logger.info("sweep: %s failed: %s", wanted, error.as_line())
                    continue
                test_sized = test_sized or result.test_sized_model
                per_picture = result.timings.get("total", 0.0) / max(1, len(result.pictures))
                prompt = engine.catalogue.get(style).with_variant(variant).render_prompt(config.prompt)
                images = [Image.open(io.BytesIO(picture.png)).convert("RGB") for picture in result.pictures]
                clip_scores: list[float | None] = [None] * len(images)
                if scorers.clip is not None:
                    clip_scores = list(scorers.clip.score(images, [prompt] * len(images)))
                if scorers.inception is not None and reference_files:
                    features.append(scorers.inception.features(images))
                for picture, image, clip_score in zip(result.pictures, images, clip_scores, strict=True):
                    assert selfie.embedding is not None
                    identity = scorers.identity.score(selfie.embedding, image)
                    picture_id = f"p{len(pictures) + 1:05d}"
                    _thumbnail(image, images_dir / f"{picture_id}.png")
                    pictures.append(
                        {
                            "picture_id": picture_id,
                            "family": family,
                            "selfie": selfie.path.name,
                            "selfie_index": selfie.index,
                            "style": result.style,
                            "variant": result.variant,
                            "mode": result.mode,
                            "style_scale": result.scales.get("style_lora"),
                            "portrait_scale": result.scales.get("portrait_lora"),
                            "ip_adapter_scale": result.scales.get("ip_adapter"),
                            "steps": result.steps,
                            "guidance": result.guidance,
                            "seed": picture.seed,
                            "width": image.width,
                            "height": image.height,
                            "face_found": identity.face_found,
                            "faces": identity.faces,
                            "identity_distance": _round(identity.distance),
                            "same_person": identity.same_person,
                            "clip_score": _round(clip_score),
                            "seconds_per_picture": _round(per_picture),
                            "denoise_seconds": _round(result.timings.get("denoise", 0.0) / max(1, len(images))),
                            "vae_decode_seconds": _round(result.timings.get("vae_decode", 0.0) / max(1, len(images))),
                            "image": f"images/{picture_id}.png",
                        }
                    )
                if on_progress is not None:
                    on_progress(f"{len(pictures)}/{total} pictures ({time.perf_counter() - started:.0f} s)")

        # One model in memory at a time: the next family loads only once this one is let go.
        del engine
        gc.collect()

    configurations = summarise(pictures)
    distribution = _distribution(pictures, features, configurations, scorers, reference_files)
    return {
        "kind": "mmpp-eval-sweep",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "model": " | ".join(f"{family}: {model}" if len(models) > 1 else model for family, model in models.items()),
        "families": family_rows(pictures, failures, models, config),
        "test_sized_model": test_sized,
        "test_sized_note": TINY_LABEL if test_sized else "",
        "sweep": {
            "styles": config.styles,
            "variants": config.variants,
            "style_scale": config.style_scales,
            "portrait_scale": config.portrait_scales,
            "ip_adapter_scale": config.ip_adapter_scales,
            "modes": [mode.value if mode else None for mode in config.modes],
            "seeds": config.seeds,
            "steps": {mode.value: steps for mode, steps in config.steps.items()},
            "count": config.count,
            "prompt": config.prompt,
            "families": config.families,
            "base_models": config.base_models,
        },
        "selfies": [
            {"index": s.index, "file": s.path.name, "image": s.thumbnail, "problem": s.problem} for s in selfies
        ],
        "metrics": metric_descriptions(scorers, reference_files),
        "configurations": configurations,
        "overall": distribution["overall"],
        "pictures": pictures,
        "failures": failures,
        "seconds": round(time.perf_counter() - started, 2),
    }


def summarise(pictures: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per configuration: counts and mean figures over its pictures.

    ``same_person_rate`` counts a picture without a face as *not* the same
    person, so a style that destroys faces cannot score well by having few
    measurable pictures; ``mean_identity_distance`` covers only pictures with
    a face, hence the face rate beside it.
    """
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for row in pictures:
        groups.setdefault(config_key(row), []).append(row)
    rows = []
    for number, (key, members) in enumerate(groups.items(), start=1):
        family, style, variant, mode, style_scale, portrait_scale, ip_scale, steps = key
        config_id = f"c{number:03d}"
        for member in members:
            member["config_id"] = config_id
        count = len(members)
        rows.append(
            {
                "config_id": config_id,
                "family": family,
                "style": style,
                "variant": variant,
                "mode": mode,
                "style_scale": style_scale,
                "portrait_scale": portrait_scale,
                "ip_adapter_scale": ip_scale,
                "steps": steps,
                "pictures": count,
                "face_rate": _round(sum(m["face_found"] for m in members) / count),
                "mean_identity_distance": _round(_mean(m["identity_distance"] for m in members)),
                "same_person_rate": _round(sum(m["same_person"] for m in members) / count),
                "mean_clip_score": _round(_mean(m["clip_score"] for m in members)),
                "seconds_per_picture": _round(_mean(m["seconds_per_picture"] for m in members)),
                "fid": None,
                "kid_mean": None,
                "kid_std": None,
            }
        )
    return rows


def family_rows(
    pictures: list[dict[str, Any]], failures: list[dict[str, Any]], models: dict[str, str], config: SweepConfig
) -> list[dict[str, Any]]:
    """One row per family, side by side: the same figures over all its pictures, and what it did not sweep.

    The families made the same combinations on the same selfies, except the settings a family lacks
    (``not_swept``), so these rows compare like with like as far as the families allow."""
    rows = []
    for family, model in models.items():
        members = [row for row in pictures if row.get("family", "") == family]
        count = len(members)
        rows.append(
            {
                "family": family,
                "model": model,
                "pictures": count,
                "failures": sum(1 for row in failures if row.get("family", "") == family),
                "face_rate": _round(sum(m["face_found"] for m in members) / count) if count else None,
                "same_person_rate": _round(sum(m["same_person"] for m in members) / count) if count else None,
                "mean_identity_distance": _round(_mean(m["identity_distance"] for m in members)),
                "mean_clip_score": _round(_mean(m["clip_score"] for m in members)),
                "seconds_per_picture": _round(_mean(m["seconds_per_picture"] for m in members)),
                "not_swept": config.not_swept(family),
            }
        )
    return rows


def _distribution(
    pictures: list[dict[str, Any]],
    features: list[np.ndarray],
    configurations: list[dict[str, Any]],
    scorers: Scorers,
    reference_files: list[Path] | None,
) -> dict[str, Any]:
    """FID and KID against the reference set, per configuration and over all pictures."""
    overall: dict[str, Any] = {
        "pictures": len(pictures),
        "face_rate": _round(sum(p["face_found"] for p in pictures) / len(pictures)) if pictures else None,
        "same_person_rate": _round(sum(p["same_person"] for p in pictures) / len(pictures)) if pictures else None,
        "mean_identity_distance": _round(_mean(p["identity_distance"] for p in pictures)),
        "mean_clip_score": _round(_mean(p["clip_score"] for p in pictures)),
        "seconds_per_picture": _round(_mean(p["seconds_per_picture"] for p in pictures)),
        "fid": None,
        "kid_mean": None,
        "kid_std": None,
        "reference_images": len(reference_files or []),
    }
    if scorers.inception is None or not reference_files or not features:
        return {"overall": overall}
    reference = scorers.inception.features([decode_reference(path) for path in reference_files])
    generated = np.concatenate(features)
    for row, fid, kid in _fid_kid_rows(pictures, generated, reference, configurations):
        row.update(fid=fid, kid_mean=kid[0] if kid else None, kid_std=kid[1] if kid else None)
    fid, kid = _fid_kid(generated, reference)
    overall.update(fid=fid, kid_mean=kid[0] if kid else None, kid_std=kid[1] if kid else None)
    return {"overall": overall}


def _fid_kid_rows(
    pictures: list[dict[str, Any]], generated: np.ndarray, reference: np.ndarray, configurations: list[dict[str, Any]]
) -> list[tuple[dict[str, Any], float | None, tuple[float, float] | None]]:
    by_config: dict[str, list[int]] = {}
    for index, row in enumerate(pictures):
        by_config.setdefault(row["config_id"], []).append(index)
    results = []
    for row in configurations:
        fid, kid = _fid_kid(generated[by_config.get(row["config_id"], [])], reference)
        results.append((row, fid, kid))
    return results


def _fid_kid(generated: np.ndarray, reference: np.ndarray) -> tuple[float | None, tuple[float, float] | None]:
    if generated.shape[0] < 2 or reference.shape[0] < 2:
        return None, None
    try:
        fid = _round(fid_from_features(generated, reference), 3)
    except ValueError as error:
        logger.warning("FID not computed: %s", error)
        fid = None
    kid = kernel_inception_distance(generated, reference)
    return fid, (round(kid.mean, 6), round(kid.std, 6))


def decode_reference(path: Path) -> Image.Image:
    """A reference image, decoded with the same limits as uploads."""
    try:
        return decode_image(path.read_bytes())
    except MmppError as error:
        raise MmppError(error.code, f"reference image {path.name}: {error.message}") from None


def metric_descriptions(scorers: Scorers, reference_files: list[Path] | None) -> dict[str, dict[str, Any]]:
    """What each metric is, and whether it was computed; the page lists the missing ones."""
    if scorers.inception is not None and reference_files:
        distribution = {"available": True, "detail": f"{scorers.inception.label}; {len(reference_files)} reference "
                        "images; FID on 2048-d pool features, KID = polynomial-kernel MMD² (degree 3, unbiased, "
                        "100 subsets)"}  # fmt: skip
    elif not reference_files:
        distribution = {"available": False, "detail": "FID/KID not computed: no --reference folder of real images"}
    else:
        distribution = {"available": False, "detail": f"FID/KID not computed: {scorers.inception_reason}"}
    return {
        "identity": {
            "available": True,
            "detail": "dlib 128-d face embedding (face_recognition_models): face_found = a face is detected; "
            f"identity_distance = Euclidean distance to the selfie's embedding (lower is closer); same_person = "
            f"distance < {SAME_PERSON_DISTANCE} (dlib's threshold), false when no face is found",
        },
        "clip": (
            {
                "available": True,
                "detail": f"CLIP score = 100 x max(0, cosine(image, prompt)) with {scorers.clip.label}; the prompt "
                "is the style's description for every family (klein paints from the edit instruction, but is "
                "scored against the same text, so families compare on one yardstick)",
            }
            if scorers.clip is not None
            else {"available": False, "detail": f"CLIP score not available: {scorers.clip_reason}"}
        ),
        "fid_kid": distribution,
        "speed": {
            "available": True,
            "detail": "seconds per picture = the engine's total job time (face crop, prompt, denoising, VAE decode) "
            "divided by the pictures in the job",
        },
    }


def build_scorers(analyzer: Any, *, want_distribution: bool) -> Scorers:
    """Load what metric models exist here; record the reason for each that does not."""
    from engine.evaluate.scorers import load_clip_scorer

    scorers = Scorers(identity=IdentityScorer(analyzer))
    try:
        scorers.clip = load_clip_scorer()
    except MetricUnavailableError as error:
        scorers.clip_reason = error.reason
    if want_distribution:
        from engine.evaluate.inception import load_inception

        try:
            scorers.inception = load_inception()
        except MetricUnavailableError as error:
            scorers.inception_reason = error.reason
    return scorers
