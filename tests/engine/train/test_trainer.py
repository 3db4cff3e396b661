"""Training on the tiny weights: learning, exact resume, files the engine loads, SDXL.

Each run is a few dozen steps at 64 px on the tiny random models, so a run takes
seconds; what is checked is the plumbing (loss, checkpoints, file format, loading),
not picture quality.
"""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from engine.train.export import read_lora_metadata
from engine.train.trainer import STATE_FILE, TrainConfig, TrainResult, find_checkpoint, train
from mmpp.contract import GenerateRequest
from mmpp.errors import ErrorCode, MmppError

from .conftest import make_colour_data, train_settings

STYLE = "pixel-art"


def tiny_config(data: Path, out: Path, **overrides: object) -> TrainConfig:
    values: dict[str, object] = {
        "data_dir": data,
        "kind": "style",
        "out": out,
        "weights": "tiny",
        "rank": 4,
        "batch": 2,
        "lr": 1e-2,
        "checkpoint_every": 0,
        "progress": False,
    }
    values.update(overrides)
    return TrainConfig(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def colour_run(cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    """30 steps at a high learning rate on four two-colour pictures, with validation at the end."""
    root = tmp_path_factory.mktemp("colour-run")
    data = make_colour_data(root / "data")
    config = tiny_config(
        data,
        root / "out" / "colours.safetensors",
        steps=30,
        lr=3e-2,
        seed=1,
        validate_every=30,
        validation_steps=2,
        validation_images=2,
    )
    return train(config, train_settings(cache_dir))


def pixels_of(engine, request: GenerateRequest, **scales: float) -> np.ndarray:
    from engine.pipeline import ScaleOverrides

    result = engine.generate(request, overrides=ScaleOverrides(**scales))
    return np.asarray(Image.open(io.BytesIO(result.pictures[0].png)), dtype=np.int16)


def engine_with_lora(cache_dir: Path, catalogue, family: str, lora: Path):
    """A tiny engine whose portrait LoRA and pixel-art style LoRA are both the trained file."""
    from engine.models import WeightSource, build_tiny_weights
    from engine.pipeline import Engine

    sources = build_tiny_weights(cache_dir / "tiny", family, catalogue.names)  # type: ignore[arg-type]
    trained = WeightSource(str(lora.parent), lora.name)
    sources = dataclasses.replace(sources, portrait_lora=trained, style_loras={**sources.style_loras, STYLE: trained})
    return Engine.from_sources(sources, catalogue, train_settings(cache_dir))


def test_the_loss_goes_down(colour_run: TrainResult) -> None:
    losses = [colour_run.losses[step] for step in sorted(colour_run.losses)]
    assert len(losses) == 30 and all(np.isfinite(losses))
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    # Measured: about 1.12 -> 1.00; step-to-step noise is about 0.02.
    assert last < first - 0.04, losses


def test_a_run_leaves_a_report_a_loss_log_and_validation_pictures(colour_run: TrainResult) -> None:
    work = colour_run.work_dir
    assert work == colour_run.lora.with_suffix("")
    report = json.loads((work / "data_report.json").read_text())
    assert report["images_used"] == 4 and report["skipped"] == [] and report["buckets"] == {"64x64": 4}
    logged = [json.loads(line) for line in (work / "losses.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in logged] == list(range(1, 31))
    assert [entry["loss"] for entry in logged] == [colour_run.losses[step] for step in range(1, 31)]
    pictures = sorted(path.name for path in (work / "validation").iterdir())
    assert pictures == ["step-30-0.png", "step-30-1.png"]
    assert Image.open(work / "validation" / "step-30-0.png").size == (64, 64)


def test_the_lora_file_has_diffusers_keys_and_our_metadata(colour_run: TrainResult) -> None:
    with safe_open(str(colour_run.lora), framework="pt") as handle:
        header = handle.metadata()
        keys = list(handle.keys())
    assert header["format"] == "pt"
    adapter = json.loads(header["lora_adapter_metadata"])
    assert adapter["unet.r"] == 4 and adapter["unet.lora_alpha"] == 4
    assert keys and all(key.startswith("unet.") and (".lora.down." in key or ".lora.up." in key) for key in keys)
    assert {key.rsplit(".", 3)[0].rsplit(".", 1)[-1] for key in keys} >= {"to_q", "to_k", "to_v"}
    metadata = read_lora_metadata(colour_run.lora)
    assert metadata["base_model"] == "tiny" and metadata["family"] == "sd15" and metadata["kind"] == "style"
    assert metadata["rank"] == "4" and metadata["steps"] == "30" and metadata["resolution"] == "64"
    assert float(metadata["lr"]) == 3e-2 and metadata["trigger"] == "mmppstyle"
    assert metadata["data_sha256"] == colour_run.report["data_sha256"] and len(metadata["data_sha256"]) == 64
    assert metadata["version"] and metadata["images"] == "4"


def test_the_engine_loads_it_as_portrait_and_as_style_lora_and_it_changes_the_pixels(
    colour_run: TrainResult, cache_dir: Path, catalogue, selfie_bytes: bytes
) -> None:
    engine = engine_with_lora(cache_dir, catalogue, "sd15", colour_run.lora)
    assert engine.has_portrait and STYLE in engine.style_adapters and not engine.unavailable_styles
    request = GenerateRequest(selfie=selfie_bytes, style=STYLE, seed=3)
    without = pixels_of(engine, request, portrait_scale=0.0, style_scale=0.0)
    assert np.array_equal(without, pixels_of(engine, request, portrait_scale=0.0, style_scale=0.0))
    as_portrait = pixels_of(engine, request, portrait_scale=1.0, style_scale=0.0)
    as_style = pixels_of(engine, request, portrait_scale=0.0, style_scale=1.0)
    assert np.abs(as_portrait - without).mean() > 1.0
    assert np.abs(as_style - without).mean() > 1.0


def test_resume_continues_exactly_where_the_checkpoint_left_off(
    colour_data: Path, tmp_path: Path, cache_dir: Path
) -> None:
    settings = train_settings(cache_dir)
    common = {"steps": 6, "grad_accum": 2, "seed": 5}
    whole = train(
        tiny_config(colour_data, tmp_path / "a" / "whole.safetensors", checkpoint_every=3, **common), settings
    )
    checkpoint = whole.work_dir / "checkpoints" / "step-3"
    assert whole.checkpoints == [checkpoint, whole.work_dir / "checkpoints" / "step-6"]
    state = json.loads((checkpoint / STATE_FILE).read_text())
    assert state["step"] == 3 and state["micro_step"] == 6 and state["rng"]["next_global_batch"] == 6
    saved = {path.name for path in checkpoint.iterdir()}
    assert {"adapter-unet.safetensors", "optimizer.bin", "lora.safetensors", STATE_FILE} <= saved
    assert not any(name.startswith("model") for name in saved), "the frozen base must not be checkpointed"
    assert read_lora_metadata(checkpoint / "lora.safetensors")["steps"] == "3"

    resumed = train(
        tiny_config(colour_data, tmp_path / "b" / "resumed.safetensors", resume=checkpoint, **common), settings
    )
    assert resumed.start_step == 3
    assert resumed.losses == {step: whole.losses[step] for step in (4, 5, 6)}
    expected, got = load_file(str(whole.lora)), load_file(str(resumed.lora))
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[key], got[key]) for key in expected)

    assert find_checkpoint(whole.work_dir) == whole.work_dir / "checkpoints" / "step-6"
    with pytest.raises(MmppError) as caught:
        train(tiny_config(colour_data, tmp_path / "c" / "x.safetensors", resume=checkpoint, rank=8, **common), settings)
    assert caught.value.code is ErrorCode.INVALID_REQUEST and "rank 4 (now 8)" in caught.value.message


def test_sdxl_trains_unet_and_both_text_encoders_into_a_loadable_lora(
    colour_data: Path, tmp_path: Path, cache_dir: Path, catalogue, selfie_bytes: bytes
) -> None:
    config = tiny_config(
        colour_data,
        tmp_path / "sdxl.safetensors",
        weights="tiny-sdxl",
        steps=3,
        lr=5e-2,
        train_text_encoder=True,
        gradient_checkpointing=True,
    )
    result = train(config, train_settings(cache_dir))
    assert result.family == "sdxl" and sorted(result.losses) == [1, 2, 3]
    with safe_open(str(result.lora), framework="pt") as handle:
        keys = list(handle.keys())
    parts = {key.split(".", 1)[0] for key in keys}
    assert parts == {"unet", "text_encoder", "text_encoder_2"}
    assert read_lora_metadata(result.lora)["family"] == "sdxl"
    engine = engine_with_lora(cache_dir, catalogue, "sdxl", result.lora)
    assert engine.has_portrait and not engine.unavailable_styles
    request = GenerateRequest(selfie=selfie_bytes, style=STYLE, seed=3)
    without = pixels_of(engine, request, portrait_scale=0.0, style_scale=0.0)
    with_lora = pixels_of(engine, request, portrait_scale=1.0, style_scale=0.0)
    assert np.abs(with_lora - without).mean() > 0.1


def test_bad_settings_are_refused_before_anything_loads(colour_data: Path, tmp_path: Path) -> None:
    for overrides, words in (
        ({"out": tmp_path / "x.bin"}, ".safetensors"),
        ({"resolution": 60}, "multiple of 8"),
        ({"base": "some/model"}, "exclude each other"),
        ({"lr": 0.0}, "--lr"),
    ):
        config = tiny_config(colour_data, tmp_path / "x.safetensors")
        config = dataclasses.replace(config, **overrides)  # type: ignore[arg-type]
        with pytest.raises(MmppError) as caught:
            train(config)
        assert caught.value.code is ErrorCode.INVALID_REQUEST and words in caught.value.message
    with pytest.raises(MmppError) as caught:
        train(tiny_config(colour_data, tmp_path / "x.safetensors", resume=tmp_path / "nowhere"))
    assert caught.value.code is ErrorCode.INVALID_REQUEST and "No checkpoint" in caught.value.message
