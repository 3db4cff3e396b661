"""The NSFW check: a tiny checker with the real architecture, thresholds set to flag all or nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine.pipeline import Engine
from engine.safety import SafetyFilter
from mmpp.contract import GenerateRequest, Mode
from mmpp.errors import ErrorCode, MmppError


def tiny_checker(folder: Path, threshold: float) -> Path:
    """Concept thresholds below -1 flag every picture (cosine >= -1); above 1 flag none."""
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    config = CLIPConfig(
        text_config={"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4, "num_hidden_layers": 2},
        vision_config={
            "hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4, "num_hidden_layers": 2,
            "image_size": 32, "patch_size": 8,
        },
        projection_dim=16,
    )  # fmt: skip
    torch.manual_seed(0)
    checker = StableDiffusionSafetyChecker(config)
    with torch.no_grad():
        checker.concept_embeds_weights.fill_(threshold)
        checker.special_care_embeds_weights.fill_(threshold)
    checker.save_pretrained(folder)
    CLIPImageProcessor(size=32, crop_size=32).save_pretrained(folder)
    return folder


def request(selfie: bytes) -> GenerateRequest:
    return GenerateRequest(selfie=selfie, style="anime", mode=Mode.FAST, steps=4, seed=1, count=2)


def test_flagged_pictures_are_withheld_and_all_flagged_is_output_blocked(
    tiny_engine: Engine, selfie_bytes: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    device, dtype = torch.device("cpu"), torch.float32
    strict = SafetyFilter.load("auto", str(tiny_checker(tmp_path / "strict", -2.0)), device, dtype)
    assert strict.status == "passed"
    monkeypatch.setattr(tiny_engine, "safety", strict)
    with pytest.raises(MmppError) as raised:
        tiny_engine.generate(request(selfie_bytes))
    assert raised.value.code is ErrorCode.OUTPUT_BLOCKED

    lenient = SafetyFilter.load("auto", str(tiny_checker(tmp_path / "lenient", 2.0)), device, dtype)
    monkeypatch.setattr(tiny_engine, "safety", lenient)
    result = tiny_engine.generate(request(selfie_bytes))
    assert len(result.pictures) == 2 and result.safety_check == "passed" and "safety" in result.timings


def test_a_missing_checker_is_reported_not_hidden(
    tiny_engine: Engine, selfie_bytes: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    missing = SafetyFilter.load("auto", str(tmp_path / "nothing-here"), torch.device("cpu"), torch.float32)
    assert missing.status == "unavailable" and "could not be loaded" in missing.reason
    monkeypatch.setattr(tiny_engine, "safety", missing)
    assert tiny_engine.generate(request(selfie_bytes)).safety_check == "unavailable"

    required = SafetyFilter.load("required", str(tmp_path / "nothing-here"), torch.device("cpu"), torch.float32)
    monkeypatch.setattr(tiny_engine, "safety", required)
    with pytest.raises(MmppError) as raised:
        tiny_engine.generate(request(selfie_bytes))
    assert raised.value.code is ErrorCode.MODEL_UNAVAILABLE and "NSFW" in raised.value.message

    assert SafetyFilter.load("off", "ignored", torch.device("cpu"), torch.float32).status == "off"
