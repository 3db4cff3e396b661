"""The floor on measured figures (mmpp/variant_floor.py): variants judged from an ``mmpp eval`` results.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmpp.errors import ErrorCode, MmppError
from mmpp.variant_floor import variant_figures


def results(tmp_path: Path, pictures: list[dict], kind: str = "mmpp-eval-sweep") -> Path:
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"kind": kind, "pictures": pictures}))
    return path


def picture(variant: str, face: bool, distance: float | None) -> dict:
    return {"style": "anime", "variant": variant, "face_found": face, "identity_distance": distance}


def test_each_variant_is_measured_and_judged_against_the_floor(tmp_path: Path) -> None:
    path = results(
        tmp_path,
        [picture("base", True, 0.4), picture("base", True, 0.5), picture("more-likeness", True, 0.3),
         picture("more-likeness", False, None)],
    )  # fmt: skip
    base, variant = variant_figures(path)
    assert (base.variant, base.pictures, base.face_found_rate) == ("base", 2, 1.0)
    assert base.mean_identity_distance == pytest.approx(0.45)
    assert (variant.face_found_rate, variant.mean_identity_distance) == (0.5, 0.3)
    assert base.below(0.95, None) is None
    assert variant.below(0.95, None) == "face found in 50% of 2 pictures < 95%"
    assert base.below(None, 0.42) == "mean identity distance 0.450 > 0.420"
    assert variant.below(None, 0.42) is None


@pytest.mark.parametrize(
    ("content", "complaint"),
    [(None, "do not exist"), ("{", "cannot be read"), ('{"kind": "other"}', "not the results.json"),
     ('{"kind": "mmpp-eval-sweep", "pictures": []}', "hold no pictures")],
)  # fmt: skip
def test_a_file_that_is_not_sweep_results_is_one_clear_error(tmp_path: Path, content: str | None, complaint: str):
    path = tmp_path / "results.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(MmppError) as raised:
        variant_figures(path)
    assert raised.value.code is ErrorCode.INVALID_REQUEST and complaint in raised.value.message


def test_a_sweep_of_several_families_is_refused_not_pooled(tmp_path: Path) -> None:
    pictures = [
        {**picture("base", True, 0.4), "family": "sd15"},
        {**picture("base", False, None), "family": "flux2-klein"},
    ]
    with pytest.raises(MmppError) as raised:
        variant_figures(results(tmp_path, pictures))
    assert (
        raised.value.code is ErrorCode.INVALID_REQUEST
        and "several families (flux2-klein, sd15)" in raised.value.message
    )
    (one,) = variant_figures(results(tmp_path, pictures[:1]))
    assert one.pictures == 1
