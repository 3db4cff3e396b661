"""Model sources: the tiny weights' files and the family detection."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from engine.models import WeightSource, build_tiny_weights, detect_family
from mmpp.errors import ErrorCode, MmppError


def digest(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def test_tiny_profile_is_deterministic_and_in_the_real_formats(tmp_path: Path, catalogue) -> None:
    first = build_tiny_weights(tmp_path / "one", "sd15", catalogue.names)
    second = build_tiny_weights(tmp_path / "two", "sd15", catalogue.names)
    weights_one = {name: value for name, value in digest(Path(first.base).parent).items() if "safetensors" in name}
    weights_two = {name: value for name, value in digest(Path(second.base).parent).items() if "safetensors" in name}
    assert weights_one == weights_two and len(weights_one) > 10
    base = Path(first.base)
    assert json.loads((base / "model_index.json").read_text())["_class_name"] == "StableDiffusionPipeline"
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(base / "tokenizer")
    assert tokenizer.model_max_length == 77
    # Merges learnt from the catalogue make whole words single tokens.
    assert len(tokenizer("portrait")["input_ids"]) == 3
    assert set(first.style_loras) == set(catalogue.names)
    assert first.test_sized and "noise" in first.label
    # Rebuilding is skipped when the cache is complete.
    again = build_tiny_weights(tmp_path / "one", "sd15", catalogue.names)
    assert again.base == first.base


def test_tiny_lora_files_load_as_diffusers_lora_state_dicts(cache_dir: Path, catalogue) -> None:
    from diffusers import StableDiffusionPipeline

    sources = build_tiny_weights(cache_dir / "tiny", "sd15", catalogue.names)
    source = sources.style_loras["anime"]
    state, _ = StableDiffusionPipeline.lora_state_dict(source.location, weight_name=source.weight_name)
    assert state and all(key.startswith("unet.") for key in state)
    assert any(value.abs().sum() > 0 for key, value in state.items() if "lora_B" in key or "up" in key)


def test_family_is_detected_from_the_weights(cache_dir: Path, catalogue, tmp_path: Path) -> None:
    assert detect_family(build_tiny_weights(cache_dir / "tiny", "sd15", catalogue.names).base) == "sd15"
    assert detect_family(build_tiny_weights(cache_dir / "tiny", "sdxl", catalogue.names).base) == "sdxl"
    sd15_file = tmp_path / "model-v1.safetensors"
    save_file(
        {
            "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1),
            "cond_stage_model.transformer.x": torch.zeros(1),
        },
        sd15_file,
    )
    sdxl_file = tmp_path / "model-xl.safetensors"
    save_file(
        {
            "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1),
            "conditioner.embedders.1.model.x": torch.zeros(1),
        },
        sdxl_file,
    )
    assert detect_family(str(sd15_file)) == "sd15"
    assert detect_family(str(sdxl_file)) == "sdxl"


@pytest.mark.parametrize(
    "make_source",
    [
        lambda tmp: str(tmp / "folder-without-index"),
        lambda tmp: str(tmp / "missing.safetensors"),
        lambda tmp: "example-org/not-in-the-cache",
    ],
)
def test_missing_weights_are_model_unavailable(tmp_path: Path, monkeypatch, make_source) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "folder-without-index").mkdir()
    with pytest.raises(MmppError) as raised:
        detect_family(make_source(tmp_path))
    assert raised.value.code is ErrorCode.MODEL_UNAVAILABLE


def test_pickled_and_foreign_single_files_are_refused(tmp_path: Path) -> None:
    pickled = tmp_path / "model.ckpt"
    pickled.write_bytes(b"\x80\x04")
    with pytest.raises(MmppError, match=r"only \.safetensors"):
        detect_family(str(pickled))
    foreign = tmp_path / "other.safetensors"
    save_file({"encoder.weight": torch.zeros(1)}, foreign)
    with pytest.raises(MmppError, match="not a Stable Diffusion checkpoint"):
        detect_family(str(foreign))


def test_single_file_without_configs_offline_is_model_unavailable(tmp_path: Path, monkeypatch) -> None:
    """The real single-file path runs; offline it needs MMPP_BASE_MODEL_CONFIG, and says so."""
    from engine.models import ModelSources
    from engine.pipeline import load_base_pipeline

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    checkpoint = tmp_path / "model.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1)}, checkpoint)
    with pytest.raises(MmppError) as raised:
        load_base_pipeline(ModelSources(base=str(checkpoint)), torch.float32)
    assert raised.value.code is ErrorCode.MODEL_UNAVAILABLE


def test_weight_sources_parse_hub_files_local_files_and_folders(tmp_path: Path) -> None:
    hub = WeightSource.parse("h94/IP-Adapter:models/ip-adapter-plus-face_sd15.safetensors")
    assert hub == WeightSource("h94/IP-Adapter", "models/ip-adapter-plus-face_sd15.safetensors")
    assert hub.split_subfolder() == ("models", "ip-adapter-plus-face_sd15.safetensors")
    local = tmp_path / "style.safetensors"
    local.write_bytes(b"")
    assert WeightSource.parse(str(local)) == WeightSource(str(tmp_path), "style.safetensors")
    assert WeightSource.parse(str(tmp_path)) == WeightSource(str(tmp_path))
    assert WeightSource.parse("org/lora-repo") == WeightSource("org/lora-repo")
