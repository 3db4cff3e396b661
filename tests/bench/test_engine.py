"""``mmpp bench engine`` on the tiny shape: every figure is there and adds up.

Speeds are never asserted (they depend on the machine and on what else runs);
what is checked is that the figures exist, are positive and are consistent
with each other, and that the baseline really did the engine's work (same
pixels).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import pytest

from bench import engine as bench
from bench.cli import main as bench_main


@pytest.fixture(scope="module")
def report(cache_dir: Path) -> dict:
    # Module-scoped so the benchmark runs once; pytest's capsys is per test.
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        status = bench.main(["--shape", "tiny", "--repeats", "1", "--json"])
    assert status == 0
    return json.loads(buffer.getvalue())


def positive(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def test_picture_times_and_their_ratio(report: dict) -> None:
    picture = report["picture"]
    assert positive(picture["engine_seconds"]) and positive(picture["baseline_seconds"])
    assert len(picture["engine_runs"]) == len(picture["baseline_runs"]) == report["settings"]["repeats"] == 1
    assert picture["ratio"] == pytest.approx(picture["engine_seconds"] / picture["baseline_seconds"])
    assert picture["best_ratio"] == pytest.approx(min(picture["engine_runs"]) / min(picture["baseline_runs"]))
    own = sum(seconds for stage, seconds in report["stages"].items() if stage not in bench.PIPELINE_STAGES)
    assert positive(picture["own_stages_seconds"]) and picture["own_stages_seconds"] == pytest.approx(own)
    assert picture["own_stages_share"] == pytest.approx(own / picture["engine_seconds"])
    assert positive(picture["engine_cpu_seconds"]) and positive(picture["baseline_cpu_seconds"])
    assert picture["cpu_ratio"] == pytest.approx(picture["engine_cpu_seconds"] / picture["baseline_cpu_seconds"])
    assert picture["other_processes_cpu_share"] is None or 0 <= picture["other_processes_cpu_share"] <= 1
    # The baseline is the same denoising work: the same picture, pixel for pixel.
    assert picture["same_pixels"] is True


def test_style_switch_and_its_share_of_a_picture(report: dict) -> None:
    switch = report["style_switch"]
    assert positive(switch["seconds"]) and all(positive(run) for run in switch["runs"])
    assert switch["share_of_picture"] == pytest.approx(switch["seconds"] / report["picture"]["engine_seconds"])
    assert report["settings"]["style"] != report["settings"]["switch_to"]


def test_stage_timings(report: dict) -> None:
    stages = report["stages"]
    assert set(bench.STAGES) <= set(stages)
    assert all(positive(stages[stage]) for stage in bench.STAGES)
    assert all(seconds >= 0 for seconds in stages.values())  # e.g. "safety", ~0 s when the check is off
    parts = sum(seconds for stage, seconds in stages.items() if stage != "total")
    assert parts <= stages["total"] * 1.01 + 1e-3


def test_lora_memory_figures(report: dict) -> None:
    memory = report["memory"]
    loras = memory["lora_bytes"]
    assert positive(memory["peak_rss_bytes"])
    assert all(positive(loras[key]) for key in ("one_style", "all_styles", "portrait", "lcm"))
    assert loras["styles"] == 12
    assert loras["all_styles"] > loras["one_style"]
    assert loras["all_styles"] == sum(size for name, size in loras["by_adapter"].items() if name.startswith("style_"))
    total, one = memory["pipeline_parameter_bytes_all_styles"], memory["pipeline_parameter_bytes_one_style"]
    assert total - one == loras["all_styles"] - loras["one_style"]
    assert memory["all_styles_extra_share"] == pytest.approx((total - one) / one)
    delta = memory["rss_delta_other_styles"]
    assert delta["styles"] == 11
    assert delta["parameter_bytes"] == pytest.approx(11 * loras["one_style"], rel=0.01)
    assert "rss_bytes" in delta  # the allocator decides its sign; only reported


def test_targets_and_machine(report: dict) -> None:
    names = {target["name"]: target for target in report["targets"]}
    assert set(names) == {
        "engine_vs_diffusers_ratio",
        "style_switch_share",
        "all_styles_lora_extra_share",
        "fast_vs_reference",
        "job_of_4_vs_job_of_1",
        "preview_overhead",
    }
    assert names["engine_vs_diffusers_ratio"]["value"] == report["picture"]["ratio"]
    assert report["passed"] == all(target["pass"] for target in report["targets"])
    machine = report["machine"]
    assert machine["cpu"] and machine["cores"] >= 1 and machine["torch"] and machine["device"] == "cpu"
    assert machine["dtype"] == "float32" and report["settings"]["shape"] == "tiny" and report["date"]


def test_the_table_names_every_target(report: dict) -> None:
    table = bench.render_table(report)
    verdicts = [line for line in table.splitlines() if line.endswith((" PASS", " FAIL"))]
    assert len(verdicts) == 6
    assert report["machine"]["cpu"] in table and report["date"] in table


def test_fast_mode_against_the_reference_a_job_of_four_and_previews(report: dict) -> None:
    fast = report["fast_mode"]
    assert fast["reference"] == {"steps": 6, "guidance": 1.5, "decoder": "full VAE"}
    assert fast["new"] == {"steps": 4, "guidance": 1.0, "decoder": "tiny"}
    seconds = fast["seconds"]
    assert all(positive(seconds[name]) for name in ("reference", "new", "job_of_4", "new_with_previews"))
    assert fast["new_vs_reference"] == pytest.approx(seconds["new"] / seconds["reference"])
    assert fast["job_of_4_vs_1"] == pytest.approx(seconds["job_of_4"] / seconds["new"])
    assert fast["preview_overhead"] == pytest.approx(seconds["new_with_previews"] / seconds["new"] - 1)
    # 4 steps, a preview every 2 (never on the last): one preview a job, a small JPEG.
    assert fast["previews_per_job"] == 1 and 0 < fast["preview_bytes_max"] <= 30_000
    names = {target["name"]: target for target in report["targets"]}
    assert names["fast_vs_reference"]["at_most"] == 0.35 and names["job_of_4_vs_job_of_1"]["at_most"] == 3.6
    assert "compile" not in report  # only with --compile


@pytest.mark.parametrize("argv", [[], ["nothing"], ["engine", "--shape", "huge"], ["engine", "--repeats", "0"]])
def test_bad_targets_and_options_are_one_line_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error[INVALID_REQUEST]: ")
    assert captured.out == ""


def test_the_klein_tiny_shape_compares_the_engine_with_a_plain_flux2_klein_call(cache_dir: Path) -> None:
    """``--shape klein-tiny``: the engine against ``Flux2KleinPipeline`` called with the instruction and the
    reference image, on identical work (the same pixels); SD's fast-mode figures (LCM, previews) are not run."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        status = bench.main(["--shape", "klein-tiny", "--repeats", "1", "--json"])
    assert status == 0
    klein = json.loads(buffer.getvalue())
    assert klein["settings"]["shape"] == "klein-tiny" and klein["settings"]["model"].startswith("tiny-flux2-klein")
    assert (klein["settings"]["steps"], klein["settings"]["guidance"]) == (4, 1.0)
    assert klein["picture"]["same_pixels"] is True and positive(klein["picture"]["ratio"])
    assert "fast_mode" not in klein and klein["memory"]["lora_bytes"]["styles"] == 12
    assert {target["name"] for target in klein["targets"]} == {
        "engine_vs_diffusers_ratio",
        "style_switch_share",
        "all_styles_lora_extra_share",
    }
