"""The operator's floor on measured figures: which variants ``mmpp eval`` found too weak to serve.

Ratings judge what people like; they cannot see that a variant loses the face in one picture out of ten,
because the person who got the faceless picture may just not rate it.  So a variant must also pass a
floor on figures measured offline on the operator's own selfies (``mmpp eval`` with ``variants = "all"``):
``mmpp variants floor results.json --min-face-found-rate 0.95`` reads the sweep's pictures here and marks
each variant eligible or not.  It reads the sweep's JSON, not the engine, so the bot side stays torch-free.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmpp.errors import ErrorCode, MmppError

#: What ``mmpp eval`` writes as ``results.json`` (engine/evaluate/sweep.py).
SWEEP_KIND = "mmpp-eval-sweep"


@dataclass(frozen=True)
class VariantFigures:
    """One variant's measured figures over every picture the sweep made of it."""

    style: str
    variant: str
    pictures: int
    face_found_rate: float
    #: Over the pictures with a face; ``None`` when none had one.
    mean_identity_distance: float | None

    def below(self, min_face_found_rate: float | None, max_identity_distance: float | None) -> str | None:
        """Why the variant falls below the floor, in words for the operator, or ``None`` when it passes."""
        if min_face_found_rate is not None and self.face_found_rate < min_face_found_rate:
            return f"face found in {self.face_found_rate:.0%} of {self.pictures} pictures < {min_face_found_rate:.0%}"
        if max_identity_distance is not None:
            if self.mean_identity_distance is None:
                return f"no face found in any of {self.pictures} pictures, so no identity distance"
            if self.mean_identity_distance > max_identity_distance:
                return f"mean identity distance {self.mean_identity_distance:.3f} > {max_identity_distance:.3f}"
        return None

    def __str__(self) -> str:
        distance = "-" if self.mean_identity_distance is None else f"{self.mean_identity_distance:.3f}"
        return f"{self.pictures} pictures, face found {self.face_found_rate:.0%}, identity distance {distance}"


def variant_figures(path: Path) -> list[VariantFigures]:
    """Each (style, variant) the sweep at ``path`` rendered, in the order first met."""
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MmppError(ErrorCode.INVALID_REQUEST, f"the eval results {path} do not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise MmppError(
            ErrorCode.INVALID_REQUEST, f"the eval results {path} cannot be read ({type(error).__name__})"
        ) from None
    if not isinstance(results, dict) or results.get("kind") != SWEEP_KIND:
        raise MmppError(
            ErrorCode.INVALID_REQUEST, f"{path} is not the results.json of an mmpp eval sweep (kind {SWEEP_KIND})"
        )
    families = {str(p.get("family")) for p in results.get("pictures") or [] if isinstance(p, dict) and p.get("family")}
    if len(families) > 1:
        # A variant is judged on the family the workers run; figures pooled over SD and klein would judge neither.
        raise MmppError(
            ErrorCode.INVALID_REQUEST,
            f"the eval results {path} hold several families ({', '.join(sorted(families))}); judge variants on a sweep "
            "of the family the workers run (one family, or no families field)",
        )
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for picture in results.get("pictures") or []:
        if isinstance(picture, dict) and isinstance(picture.get("style"), str):
            groups.setdefault((picture["style"], str(picture.get("variant") or "base")), []).append(picture)
    if not groups:
        raise MmppError(ErrorCode.INVALID_REQUEST, f"the eval results {path} hold no pictures")
    figures = []
    for (style, variant), pictures in groups.items():
        distances = [
            float(p["identity_distance"]) for p in pictures if isinstance(p.get("identity_distance"), int | float)
        ]
        figures.append(
            VariantFigures(
                style=style,
                variant=variant,
                pictures=len(pictures),
                face_found_rate=sum(bool(p.get("face_found")) for p in pictures) / len(pictures),
                mean_identity_distance=sum(distances) / len(distances) if distances else None,
            )
        )
    return figures
