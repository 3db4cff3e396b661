"""``mmpp eval --selfies ... --config ... --report ...`` end to end on the tiny weights, and its refusals.

The sweep runs once per module through the real command line (in process):
tiny SD 1.5, 2 styles x 2 style scales x 1 x 1 x fast x 1 seed at 4 steps, a
tiny random CLIP and random Inception weights, so every metric's real code
path runs; the figures are meaningless and the report must say so.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from engine.evaluate.cli import main
from mmpp.variant_floor import variant_figures

SAMPLE_SELFIE = Path(__file__).resolve().parents[3] / "engine" / "assets" / "sample_selfie.jpg"
SWEEP = """\
styles = ["anime", "watercolor"]
variants = ["base", "more-likeness"]
style_scale = [0.5, 1.0]
portrait_scale = [0.4]
modes = ["fast"]
seeds = [7]
steps = 4
"""


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def sweep_inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("eval-inputs")
    selfies = root / "selfies"
    selfies.mkdir()
    shutil.copy(SAMPLE_SELFIE, selfies / "astronaut.jpg")
    (selfies / "notes.txt").write_text("not a picture; ignored")
    reference = root / "reference"
    reference.mkdir()
    for index, colour in enumerate([(200, 40, 40), (40, 200, 40), (40, 40, 200)]):
        Image.new("RGB", (64, 64), colour).save(reference / f"real-{index}.png")
    config = root / "sweep.toml"
    config.write_text(SWEEP)
    return {"selfies": selfies, "reference": reference, "config": config, "root": root}


@pytest.fixture(scope="module")
def report(
    sweep_inputs: dict[str, Path], cache_dir: Path, tiny_clip: Path, random_inception_weights: Path
) -> Iterator[dict[str, Any]]:
    out = sweep_inputs["root"] / "report"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MMPP_CACHE_DIR", str(cache_dir))
        patch.setenv("MMPP_CLIP_MODEL", str(tiny_clip))
        patch.setenv("MMPP_INCEPTION_WEIGHTS", str(random_inception_weights))
        patch.setenv("MMPP_SAFETY_CHECKER", "off")
        patch.setenv("HF_HUB_OFFLINE", "1")
        code = main(
            [
                "--selfies", str(sweep_inputs["selfies"]), "--config", str(sweep_inputs["config"]),
                "--reference", str(sweep_inputs["reference"]), "--report", str(out), "--profile", "tiny",
            ]
        )  # fmt: skip
    yield {"code": code, "out": out, "results": json.loads((out / "results.json").read_text()) if code == 0 else {}}


# --------------------------------------------------------------------------- end to end


def test_sweep_makes_one_scored_picture_per_combination(report: dict[str, Any]) -> None:
    assert report["code"] == 0
    results = report["results"]
    pictures = results["pictures"]
    # anime has the variant more-likeness, watercolor does not: 2 x 2 + 1 x 2 pictures.
    assert len(pictures) == 6 and not results["failures"]
    assert {(p["style"], p["variant"], p["style_scale"]) for p in pictures} == {
        ("anime", "base", 0.5), ("anime", "base", 1.0), ("anime", "more-likeness", 0.5),
        ("anime", "more-likeness", 1.0), ("watercolor", "base", 0.5), ("watercolor", "base", 1.0),
    }  # fmt: skip
    # The variant's own scale serves where the sweep does not set it (more-likeness: IP-Adapter 0.7).
    expected_ip_scale = {("anime", "base"): 0.6, ("anime", "more-likeness"): 0.7, ("watercolor", "base"): 0.65}
    assert all(p["ip_adapter_scale"] == expected_ip_scale[p["style"], p["variant"]] for p in pictures)
    for picture in pictures:
        assert picture["mode"] == "fast" and picture["steps"] == 4 and picture["seed"] == 7
        assert picture["portrait_scale"] == 0.4
        assert isinstance(picture["face_found"], bool)
        assert picture["identity_distance"] is None or picture["identity_distance"] >= 0
        assert 0.0 <= picture["clip_score"] <= 100.0
        assert picture["seconds_per_picture"] > 0
        assert (report["out"] / picture["image"]).is_file()
    assert len(results["configurations"]) == 6
    assert all(config["pictures"] == 1 for config in results["configurations"])
    assert {config["variant"] for config in results["configurations"]} == {"base", "more-likeness"}
    # What `mmpp variants floor` reads from this very file: each variant's pictures and face rate.
    figures = {(f.style, f.variant): f for f in variant_figures(report["out"] / "results.json")}
    assert set(figures) == {("anime", "base"), ("anime", "more-likeness"), ("watercolor", "base")}
    anime = [p for p in pictures if (p["style"], p["variant"]) == ("anime", "more-likeness")]
    assert figures["anime", "more-likeness"].pictures == 2
    assert figures["anime", "more-likeness"].face_found_rate == sum(p["face_found"] for p in anime) / 2


def test_every_metric_says_what_it_is_and_the_tiny_model_is_labelled(report: dict[str, Any]) -> None:
    results = report["results"]
    assert results["test_sized_model"] is True
    assert results["test_sized_note"] == "test-sized model: pictures are noise, figures are meaningless"
    metrics = results["metrics"]
    assert all(entry["available"] for entry in metrics.values())
    assert "test-sized random CLIP" in metrics["clip"]["detail"]
    assert "NON-STANDARD" in metrics["fid_kid"]["detail"]
    overall = results["overall"]
    assert overall["pictures"] == 6 and overall["reference_images"] == 3
    assert overall["kid_mean"] is not None and overall["kid_std"] is not None


def test_results_csv_has_one_row_per_picture(report: dict[str, Any]) -> None:
    with (report["out"] / "results.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 6
    assert {row["picture_id"] for row in rows} == {p["picture_id"] for p in report["results"]["pictures"]}
    assert {"identity_distance", "same_person", "clip_score", "seconds_per_picture", "config_id"} <= set(rows[0])


def test_index_html_shows_grids_tables_charts_and_the_warning(report: dict[str, Any]) -> None:
    page = (report["out"] / "index.html").read_text()
    assert "test-sized model: pictures are noise, figures are meaningless" in page
    assert page.count("<svg") >= 4 and "Identity vs style scale" in page and "Identity vs speed" in page
    for config in report["results"]["configurations"]:
        assert f'id="{config["config_id"]}"' in page
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert len(sources) == 6 + 6  # each configuration's grid: the selfie, then its picture
    for source in sources:
        assert not source.startswith(("/", "http")) and (report["out"] / source).is_file()


def test_missing_metric_models_are_listed_not_faked(report: dict[str, Any], tmp_path: Path) -> None:
    from engine.evaluate.report import render_index
    from engine.evaluate.sweep import Scorers, metric_descriptions

    results = json.loads((report["out"] / "results.json").read_text())
    scorers = Scorers(identity=None, clip=None, clip_reason="CLIP model 'x' could not be loaded (OSError)")  # type: ignore[arg-type]
    scorers.inception_reason = "Inception weights unavailable: none configured or cached"
    results["metrics"] = metric_descriptions(scorers, [Path("real.png")])
    (tmp_path / "results.json").write_text(json.dumps(results))
    page = render_index(tmp_path).read_text()
    assert "CLIP score not available: CLIP model &#x27;x&#x27; could not be loaded (OSError)" in page
    assert "FID/KID not computed: Inception weights unavailable" in page
    assert 'id="missing-metrics"' in page
    assert metric_descriptions(scorers, None)["fid_kid"]["detail"].startswith("FID/KID not computed: no --reference")


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("sweep", "field"),
    [
        ("style_scale = [1.0]\n", "styles"),
        ('styles = ["no-such-style"]\n', "styles"),
        ('styles = ["anime"]\nstyle_scale = [3.0]\n', "style_scale"),
        ('styles = ["anime"]\nip_adapter_scale = "0.5"\n', "ip_adapter_scale"),
        ('styles = ["anime"]\nmodes = ["turbo"]\n', "modes"),
        ('styles = ["anime"]\nmodes = ["quality"]\nsteps = 4\n', "steps"),
        ('styles = ["anime"]\nseeds = [-1]\n', "seeds"),
        ('styles = ["anime"]\ncount = 9\n', "count"),
        ('styles = ["anime"]\nvariants = ["louder"]\n', "variants"),
        ('styles = ["anime"]\nvariants = 3\n', "variants"),
        ('styles = ["anime"]\nstyle_scales = [1.0]\n', "style_scales"),
    ],
)
def test_bad_sweep_file_names_the_field(
    sweep: str, field: str, sweep_inputs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "sweep.toml"
    config.write_text(sweep)
    argv = ["--selfies", str(sweep_inputs["selfies"]), "--config", str(config), "--report", str(tmp_path / "out")]
    code, _, err = run(argv, capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error[INVALID_REQUEST]: sweep file ")
    assert f"field '{field}'" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--selfies", "{missing}", "--config", "{config}", "--report", "{out}"], "selfies folder"),
        (["--selfies", "{empty}", "--config", "{config}", "--report", "{out}"], "holds no"),
        (["--selfies", "{selfies}", "--config", "{missing}", "--report", "{out}"], "does not exist"),
        (["--selfies", "{selfies}", "--config", "{bad_toml}", "--report", "{out}"], "not valid TOML"),
        (["--selfies", "{selfies}", "--config", "{config}", "--reference", "{missing}", "--report", "{out}"],
         "reference folder"),
        (["--selfies", "{selfies}", "--report", "{out}"], "--selfies needs --config"),
        ([], "give --selfies"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_and_exit_2(
    argv: list[str], message: str, sweep_inputs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.toml").write_text("styles = [")
    paths = {
        "missing": tmp_path / "missing", "empty": tmp_path / "empty", "selfies": sweep_inputs["selfies"],
        "config": sweep_inputs["config"], "bad_toml": tmp_path / "bad.toml", "out": tmp_path / "out",
    }  # fmt: skip
    code, _, err = run([item.format(**{k: str(v) for k, v in paths.items()}) for item in argv], capsys)
    assert code == 2
    assert err.count("\n") == 1 and re.match(r"error\[[A-Z_]+\]: ", err)
    assert message in err


def test_mmpp_lists_and_dispatches_eval(capsys: pytest.CaptureFixture[str]) -> None:
    from mmpp.cli import main as mmpp_main

    assert mmpp_main(["--help"]) == 0
    assert "eval" in capsys.readouterr().out
    assert mmpp_main(["eval"]) == 2
    assert capsys.readouterr().err.startswith("error[INVALID_REQUEST]: mmpp eval: give --selfies")


# --------------------------------------------------------------------------- scoring, with a stand-in engine


class MirrorEngine:
    """Stands in for the engine: "generates" the selfie's mirror image, and refuses one style.

    The tiny model's noise never shows a face, so this is how the identity
    columns and FID/KID per configuration are seen working inside a sweep.
    """

    def __init__(self, catalogue: Any) -> None:
        from types import SimpleNamespace

        self.catalogue = catalogue
        self.sources = SimpleNamespace(test_sized=False, label="mirror (stand-in)", base="mirror")
        self.calls: list[tuple[Any, Any]] = []

    def generate(self, request: Any, *, overrides: Any) -> Any:
        import io

        from mmpp.contract import GenerateResult, Picture
        from mmpp.errors import ErrorCode, MmppError

        self.calls.append((request, overrides))
        if request.style == "watercolor":
            raise MmppError(ErrorCode.MODEL_UNAVAILABLE, "The style 'watercolor' is unavailable on this worker.")
        mirror = Image.open(io.BytesIO(request.selfie)).convert("RGB").transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        buffer = io.BytesIO()
        mirror.save(buffer, format="PNG")
        return GenerateResult(
            pictures=[Picture(png=buffer.getvalue(), seed=request.seed)],
            style=request.style,
            mode="fast",
            steps=request.steps or 6,
            guidance=1.5,
            scales={"style_lora": overrides.style_scale, "portrait_lora": 0.4, "ip_adapter": 0.6, "lcm_lora": 1.0},
            timings={"total": 0.5 + overrides.style_scale},
        )


class ColourFeatures:
    """A stand-in feature extractor (mean and spread of each channel), so FID/KID get real numbers."""

    label = "colour statistics (stand-in)"

    def features(self, images: list[Image.Image]) -> Any:
        import numpy as np

        rows = []
        for image in images:
            pixels = np.asarray(image.convert("RGB").resize((32, 32)), dtype=np.float64) / 255.0
            rows.append(np.concatenate([pixels.mean(axis=(0, 1)), pixels.std(axis=(0, 1))]))
        return np.array(rows)


def test_sweep_scores_identity_and_records_refusals(
    sweep_inputs: dict[str, Path], catalogue: Any, tmp_path: Path
) -> None:
    from engine.evaluate.report import render_index, write_results
    from engine.evaluate.scorers import IdentityScorer
    from engine.evaluate.sweep import Scorers, load_sweep, run_sweep
    from engine.faces import FaceAnalyzer

    config_path = tmp_path / "sweep.toml"
    config_path.write_text('styles = ["anime", "watercolor"]\nstyle_scale = [0.5, 1.0]\nseeds = [1, 2]\nsteps = 4\n')
    config = load_sweep(config_path, catalogue)
    engine = MirrorEngine(catalogue)
    scorers = Scorers(identity=IdentityScorer(FaceAnalyzer()), clip_reason="no CLIP in this test")
    scorers.inception = ColourFeatures()  # type: ignore[assignment]
    references = sorted(sweep_inputs["reference"].iterdir())
    out = tmp_path / "report"
    results = run_sweep(engine, [sweep_inputs["selfies"] / "astronaut.jpg"], config, out, scorers, references)

    assert len(engine.calls) == 8 and {request.steps for request, _ in engine.calls} == {4}
    assert len(results["pictures"]) == 4 and len(results["failures"]) == 4
    assert all("MODEL_UNAVAILABLE" in failure["error"] for failure in results["failures"])
    for picture in results["pictures"]:
        assert picture["face_found"] and picture["same_person"]
        assert 0 < picture["identity_distance"] < 0.6
    rows = {row["style_scale"]: row for row in results["configurations"]}
    assert set(rows) == {0.5, 1.0} and all(row["pictures"] == 2 for row in rows.values())
    assert rows[0.5]["face_rate"] == 1.0 and rows[0.5]["same_person_rate"] == 1.0
    assert rows[0.5]["seconds_per_picture"] == 1.0 and rows[1.0]["seconds_per_picture"] == 1.5
    assert rows[0.5]["fid"] is not None and rows[0.5]["fid"] > 0 and rows[0.5]["kid_mean"] is not None
    assert results["overall"]["fid"] is not None and results["test_sized_model"] is False
    assert results["metrics"]["clip"]["detail"] == "CLIP score not available: no CLIP in this test"

    write_results(results, out)
    page = render_index(out).read_text()
    assert "test-sized model" not in page
    assert "Failed combinations" in page and "watercolor" in page
    assert "CLIP score not available: no CLIP in this test" in page
