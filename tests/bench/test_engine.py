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


# --------------------------------------------------------------------------- the full-size FLUX.2 [klein] 4B shape


def test_the_flux2_klein_shape_has_the_real_sizes_of_klein_4b() -> None:
    """Counted on the meta device (no memory, no CPU time): the transformer is the "4B", its Qwen3 text encoder
    Qwen3-4B's 4.0 B parameters, and the parts fit each other as in the released model."""
    import torch

    with torch.device("meta"):
        transformer, vae, text_encoder = bench.full_klein_components()
    counts = [sum(parameter.numel() for parameter in part.parameters()) for part in (transformer, vae, text_encoder)]
    assert counts == [3_875_544_576, 84_046_115, 4_022_468_096]
    encoder = text_encoder.config
    assert transformer.config.joint_attention_dim == 3 * encoder.hidden_size  # the pipeline's layers 9, 18, 27
    assert max(9, 18, 27) < encoder.num_hidden_layers
    assert transformer.config.in_channels == 4 * vae.config.latent_channels  # latents in 2x2 patches
    assert transformer.config.guidance_embeds is False


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["--shape", "flux2-klein"], "run it on a GPU with --device cuda"),
        (["--shape", "flux2-klein", "--device", "cpu"], "run it on a GPU with --device cuda"),
        (["--shape", "flux2-klein", "--device", "cuda"], "needs CUDA, which this machine does not have"),
    ],
)
def test_the_flux2_klein_shape_is_refused_off_a_gpu_in_one_line(
    argv: list[str], said: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the shape would run")
    started: list[object] = []
    monkeypatch.setattr(bench, "bench_engine", lambda **options: started.append(options))  # nothing is built
    assert bench_main(["engine", *argv]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error[INVALID_REQUEST]: ") and said in lines[0]
    assert captured.out == "" and started == []


#: The flux2-klein shape's configs shrunk to test size (its builder's overrides): a CPU runs the shape's own path.
SMALL_KLEIN = {
    "transformer": {
        "in_channels": 16, "num_layers": 1, "num_single_layers": 1, "attention_head_dim": 16,
        "num_attention_heads": 2, "joint_attention_dim": 48, "axes_dims_rope": (4, 4, 4, 4),
    },
    "vae": {
        "down_block_types": ("DownEncoderBlock2D",) * 2, "up_block_types": ("UpDecoderBlock2D",) * 2,
        "block_out_channels": (8, 16), "layers_per_block": 1, "latent_channels": 4, "norm_num_groups": 8,
        "sample_size": 64, "use_quant_conv": False, "use_post_quant_conv": False,
    },
    "text_encoder": {
        "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 28, "num_attention_heads": 2,
        "num_key_value_heads": 2, "head_dim": 8, "max_position_embeddings": 512,
    },
}  # fmt: skip


def test_the_flux2_klein_shape_builds_loads_and_measures_through_the_benchmark(
    monkeypatch: pytest.MonkeyPatch, cache_dir: Path
) -> None:
    """``bench_engine(shape="flux2-klein")`` as the GPU runs it, with only the child process replaced by the
    same builder in this process at test size: written in diffusers' layout in the benchmark's dtype (so loading
    converts nothing) with a LoRA per style, loaded through ``Engine.from_sources``, measured against the plain
    ``Flux2KleinPipeline`` call on the same pixels, and the workspace removed.  (The real sizes are checked on
    the meta device above; the GPU's ``--device cuda`` is refused here before any of this.)"""
    from safetensors import safe_open

    from mmpp.catalogue import load_catalogue
    from mmpp.contract import Mode

    built: list[Path] = []

    def build_here(target: object, folder: str, names: list[str], dtype: str, device: str) -> None:
        assert target is bench.build_full_klein and (dtype, device) == ("bfloat16", "cpu")
        bench.build_full_klein(folder, names, dtype, device, SMALL_KLEIN)
        written = [*Path(folder).glob("base/*/*.safetensors"), *Path(folder).glob("loras/*.safetensors")]
        assert len(written) >= 3 + len(names)
        for path in written:
            with safe_open(str(path), "pt") as tensors:
                kinds = {str(tensors.get_slice(name).get_dtype()) for name in tensors.keys()}  # noqa: SIM118 (not iterable)
                assert kinds - {"I64"} == {"BF16"}, path  # I64: the VAE's batch-norm counter
        built.append(Path(folder))

    monkeypatch.setattr(bench, "_run_child", build_here)
    report = bench.bench_engine(
        shape="flux2-klein", mode=Mode.FAST, repeats=1, dtype="bfloat16", steps=None, device="cpu"
    )
    settings = report["settings"]
    assert settings["shape"] == "flux2-klein" and settings["model"] == bench.KLEIN_LABEL
    assert (settings["steps"], settings["guidance"]) == (4, 1.0)
    assert report["picture"]["same_pixels"] is True and positive(report["picture"]["ratio"])
    assert report["memory"]["lora_bytes"]["styles"] == len(load_catalogue().names)
    assert "fast_mode" not in report
    assert len(built) == 1 and not built[0].exists()  # the workspace is gone
