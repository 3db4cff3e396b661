"""``mmpp eval`` with ``families = [...]``: SD 1.5 and FLUX.2 [klein] side by side on the same selfie.

One small sweep through the real command line (in process) on each family's
tiny weights: 1 style x 1 style scale x 1 portrait scale x fast x 1 seed, so
each family makes one 64 px picture.  Klein has no portrait LoRA: the
portrait scale is swept on SD 1.5 only, and the results say so for klein.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from engine.evaluate.cli import main

SAMPLE_SELFIE = Path(__file__).resolve().parents[3] / "engine" / "assets" / "sample_selfie.jpg"
TWO_FAMILIES = """\
families = ["sd15", "flux2-klein"]
styles = ["anime"]
style_scale = [1.0]
portrait_scale = [0.4]
modes = ["fast"]
seeds = [7]
steps = 4
"""


@pytest.fixture(scope="module")
def selfies(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("family-selfies")
    shutil.copy(SAMPLE_SELFIE, folder / "astronaut.jpg")
    return folder


@pytest.fixture(scope="module")
def report(
    selfies: Path, cache_dir: Path, tiny_clip: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("family-sweep")
    code, out = run_sweep(TWO_FAMILIES, root, selfies, cache_dir, tiny_clip)
    yield {"code": code, "out": out, "results": json.loads((out / "results.json").read_text()) if code == 0 else {}}


def run_sweep(sweep: str, root: Path, selfies: Path, cache_dir: Path, tiny_clip: Path) -> tuple[int, Path]:
    """``mmpp eval`` on the tiny weights, offline, with the tiny CLIP and no safety checker: its exit code and
    report folder."""
    config = root / "sweep.toml"
    config.write_text(sweep)
    out = root / "report"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MMPP_CACHE_DIR", str(cache_dir))
        patch.setenv("MMPP_CLIP_MODEL", str(tiny_clip))
        patch.setenv("MMPP_SAFETY_CHECKER", "off")
        patch.setenv("HF_HUB_OFFLINE", "1")
        code = main(["--selfies", str(selfies), "--config", str(config), "--report", str(out), "--weights", "tiny"])
    return code, out


def test_each_family_gets_its_own_figures(report: dict[str, Any]) -> None:
    assert report["code"] == 0
    results = report["results"]
    assert not results["failures"]
    rows = {row["family"]: row for row in results["families"]}
    assert list(rows) == ["sd15", "flux2-klein"]
    assert "tiny-sd15" in rows["sd15"]["model"] and "klein" in rows["flux2-klein"]["model"]
    for row in rows.values():
        assert row["pictures"] == 1 and row["failures"] == 0
        assert row["face_rate"] is not None and 0.0 <= row["face_rate"] <= 1.0
        assert row["same_person_rate"] is not None
        assert row["mean_clip_score"] is not None and 0.0 <= row["mean_clip_score"] <= 100.0
        assert row["seconds_per_picture"] > 0
    # Each family's pictures are its own: the figures per family are computed from them.
    by_family = {picture["family"]: picture for picture in results["pictures"]}
    assert set(by_family) == {"sd15", "flux2-klein"}
    for family, picture in by_family.items():
        assert rows[family]["seconds_per_picture"] == picture["seconds_per_picture"]
        assert rows[family]["mean_clip_score"] == picture["clip_score"]
    assert {config["family"] for config in results["configurations"]} == {"sd15", "flux2-klein"}


def test_a_setting_klein_lacks_is_not_swept_there_and_said_so(report: dict[str, Any]) -> None:
    results = report["results"]
    rows = {row["family"]: row for row in results["families"]}
    assert rows["sd15"]["not_swept"] == {}
    assert set(rows["flux2-klein"]["not_swept"]) == {"portrait_scale"}
    assert "no portrait LoRA" in rows["flux2-klein"]["not_swept"]["portrait_scale"]
    by_family = {picture["family"]: picture for picture in results["pictures"]}
    assert by_family["sd15"]["portrait_scale"] == 0.4
    assert by_family["flux2-klein"]["portrait_scale"] is None
    page = (report["out"] / "index.html").read_text()
    assert 'id="families"' in page and 'id="not-swept"' in page
    assert "<b>flux2-klein</b>: portrait_scale not swept" in page


def test_different_families_give_different_pictures(report: dict[str, Any]) -> None:
    by_family = {picture["family"]: picture for picture in report["results"]["pictures"]}
    sd15, klein = (
        np.asarray(Image.open(report["out"] / by_family[family]["image"]).convert("RGB"), dtype=np.int16)
        for family in ("sd15", "flux2-klein")
    )
    # Both tiny families paint 64 px pictures, so the same shape: what differs is the pixels.
    assert sd15.shape == klein.shape == (64, 64, 3)
    assert np.abs(sd15 - klein).mean() > 1.0


@pytest.mark.parametrize(
    ("sweep", "argv", "message"),
    [
        # Klein alone, sweeping only what klein lacks: nothing would be swept.
        ('families = ["flux2-klein"]\nstyles = ["anime"]\nportrait_scale = [0.2, 0.4]\n', [],
         "field 'portrait_scale' is swept, but no family of the sweep has it"),
        ('styles = ["anime"]\nip_adapter_scale = [0.5]\n', ["--family", "flux2-klein"],
         "field 'ip_adapter_scale' is swept, but no family of the sweep has it"),
        ('families = ["sd15", "kandinsky"]\nstyles = ["anime"]\n', [], "field 'families' names 'kandinsky'"),
        ('families = ["sd15", "sd15"]\nstyles = ["anime"]\n', [], "field 'families' names a family twice"),
        ('families = ["sd15"]\nstyles = ["anime"]\nbase_models = {sdxl = "x"}\n', [],
         "field 'base_models' names 'sdxl'"),
        ('families = ["sd15", "flux2-klein"]\nstyles = ["anime"]\n', ["--family", "sd15"], "leave --family out"),
    ],
)  # fmt: skip
def test_family_sweeps_that_cannot_run_are_refused_before_loading(
    sweep: str, argv: list[str], message: str, selfies: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "sweep.toml"
    config.write_text(sweep)
    out = tmp_path / "out"
    code = main(["--selfies", str(selfies), "--config", str(config), "--report", str(out), "--weights", "tiny", *argv])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error[INVALID_REQUEST]: ")
    assert message in err
    assert not out.exists()


def test_real_weights_take_each_familys_base_model_and_check_its_family(
    selfies: Path, cache_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--weights default``: a family's model comes from ``base_models``, and one of another family is refused.

    The tiny klein's folder stands in for a downloaded model: it is loaded as real weights are (no tiny
    LoRAs come with it)."""
    from engine.models import build_tiny_klein_weights
    from mmpp.catalogue import load_catalogue

    folder = build_tiny_klein_weights(cache_dir / "tiny", load_catalogue().names).base
    config = tmp_path / "sweep.toml"
    base = ["--selfies", str(selfies), "--config", str(config), "--weights", "default"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MMPP_CLIP_MODEL", str(tmp_path / "no-clip"))
        patch.setenv("MMPP_SAFETY_CHECKER", "off")
        config.write_text(
            f'families = ["flux2-klein"]\nstyles = ["anime"]\nbase_models = {{flux2-klein = "{folder}"}}\n'
        )
        assert main([*base, "--report", str(tmp_path / "klein")]) == 0
        results = json.loads((tmp_path / "klein" / "results.json").read_text())
        assert [row["model"] for row in results["families"]] == [folder] and results["families"][0]["pictures"] == 1
        assert results["metrics"]["clip"]["available"] is False  # said, not faked
        capsys.readouterr()
        config.write_text(f'families = ["sd15"]\nstyles = ["anime"]\nbase_models = {{sd15 = "{folder}"}}\n')
        assert main([*base, "--report", str(tmp_path / "wrong")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error[INVALID_REQUEST]: the sweep's family sd15 would load ")
    assert "which is family flux2-klein" in err
    assert not (tmp_path / "wrong").exists()  # refused before a model loaded or a file was written


def test_a_variant_naming_its_family_is_judged_on_that_familys_run_only(
    selfies: Path, cache_dir: Path, tiny_clip: Path, tmp_path: Path
) -> None:
    """The shipped headshot's ``photo-edit`` is painted by klein in production: ``variants = "all"`` renders it on
    the klein run, where its floor figures will come from, and leaves it out of the SD run (whose worker would
    refuse it), so nothing is recorded as failed."""
    sweep = (
        'families = ["sd15", "flux2-klein"]\nstyles = ["headshot"]\nvariants = "all"\nstyle_scale = [1.0]\n'
        'modes = ["fast"]\nseeds = [7]\nsteps = 4\n'
    )
    code, out = run_sweep(sweep, tmp_path, selfies, cache_dir, tiny_clip)
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert not results["failures"]
    painted = sorted((picture["family"], picture["variant"]) for picture in results["pictures"])
    assert painted == [("flux2-klein", "base"), ("flux2-klein", "photo-edit"), ("sd15", "base")]
