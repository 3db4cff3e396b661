"""``mmpp train --kind style --weights tiny-klein``: a FLUX.2 [klein] style LoRA, trained and then served.

A few steps on the tiny klein through the real command line; the file goes into a catalogue
entry's ``klein_lora`` and through the klein engine's own loading (``_style_source``), where it
must change the pixels at a non-zero scale and give exactly the no-LoRA pixels at scale 0.
"""

from __future__ import annotations

import io
import json
import math
import tomllib
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from engine.train.export import read_lora_metadata
from mmpp.cli import main as mmpp_main
from mmpp.contract import GenerateRequest, Mode

from .conftest import make_colour_data
from .test_cli import assert_one_line_error


def pixels(result: Any) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(result.pictures[0].png)).convert("RGB"), dtype=np.int16)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("klein-train")
    data = make_colour_data(root / "data")
    out = root / "klein-style.safetensors"
    arguments = ["train", "--data", str(data), "--kind", "style", "--weights", "tiny-klein", "--out", str(out)]
    arguments += ["--steps", "3", "--rank", "4", "--lr", "1e-2", "--seed", "1", "--no-progress"]
    code = mmpp_main(arguments)
    return {"code": code, "out": out, "work": root / "klein-style"}


def test_training_writes_a_klein_lora_whose_weights_moved_and_whose_loss_is_finite(trained: dict[str, Any]) -> None:
    from safetensors.torch import load_file

    assert trained["code"] == 0
    losses = [json.loads(line)["loss"] for line in (trained["work"] / "losses.jsonl").read_text().splitlines()]
    assert len(losses) == 3 and all(math.isfinite(loss) and loss > 0 for loss in losses)
    tensors = load_file(str(trained["out"]))
    # peft's names on the transformer's attention projections, as Flux2LoraLoaderMixin loads them.
    assert tensors and all(key.startswith("transformer.") for key in tensors)
    assert any(".attn.to_q.lora_A." in key for key in tensors) and any(".attn.add_k_proj." in key for key in tensors)
    # peft starts lora_B at exactly zero (a LoRA that does nothing): training must have moved every one.
    ups = {key: value for key, value in tensors.items() if ".lora_B." in key}
    assert ups and all(value.abs().max().item() > 0 for value in ups.values())
    metadata = read_lora_metadata(trained["out"])
    assert metadata["family"] == "flux2-klein" and metadata["kind"] == "style" and metadata["steps"] == "3"
    assert metadata["test_sized"] == "true"


def test_the_trained_file_loads_through_the_catalogue_and_scales_like_a_lora(
    trained: dict[str, Any], cache_dir: Path, selfie_bytes: bytes, tmp_path: Path
) -> None:
    from engine.models import build_tiny_klein_weights
    from engine.pipeline import Engine, ScaleOverrides
    from mmpp.catalogue import default_catalogue_path, load_catalogue, parse_catalogue
    from tests.engine.conftest import make_settings

    settings = make_settings(cache_dir)
    plain_catalogue = load_catalogue()
    # The tiny klein without its random style LoRAs, so the style's klein_lora is the only LoRA in play.
    sources = replace(build_tiny_klein_weights(cache_dir / "tiny", plain_catalogue.names), style_loras={})
    document = tomllib.loads(default_catalogue_path().read_text())
    document["styles"]["anime"]["klein_lora"] = str(trained["out"])
    catalogue = parse_catalogue(document)
    engine = Engine.from_sources(sources, catalogue, settings)
    assert "anime" in engine.style_adapters and "anime" not in engine.unavailable_styles
    plain = Engine.from_sources(sources, plain_catalogue, settings)
    assert plain.style_adapters == {}

    def job() -> GenerateRequest:
        return GenerateRequest(selfie=selfie_bytes, style="anime", mode=Mode.FAST, seed=5)

    with_lora = engine.generate(job())
    assert with_lora.scales["style_lora"] == 1.0
    at_zero = engine.generate(job(), overrides=ScaleOverrides(style_scale=0.0))
    without = plain.generate(job())
    assert at_zero.pictures[0].png == without.pictures[0].png
    assert np.abs(pixels(with_lora) - pixels(without)).mean() > 0.5


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--kind", "portrait"], "FLUX.2 [klein] takes style LoRAs only"),
        (["--kind", "style", "--train-text-encoder"], "--train-text-encoder is not available for FLUX.2 [klein]"),
    ],
    ids=["portrait", "text-encoder"],
)
def test_what_the_klein_trainer_lacks_is_refused_in_one_line(
    extra: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = make_colour_data(tmp_path / "data")
    out = tmp_path / "x.safetensors"
    status = mmpp_main(["train", "--data", str(data), "--weights", "tiny-klein", "--out", str(out), *extra])
    err = capsys.readouterr().err
    assert_one_line_error(status, err, "INVALID_REQUEST")
    assert message in err and not out.exists()


def test_the_training_forward_is_the_pipelines_own_denoising_step(cache_dir: Path) -> None:
    """At σ = 1 the training input is pure noise, and one Euler step of the pipeline goes from σ = 1 to 0:
    its result must be ``noise − v`` with ``v`` the transformer's prediction on the training inputs, so
    packing, position ids, timestep scale and text conditioning are the pipeline's (a swapped interpolation
    would feed the latents instead of the noise and fail here)."""
    import torch

    from engine.klein import load_klein_pipeline
    from engine.models import build_tiny_klein_weights
    from engine.train.klein import flow_matching_step
    from mmpp.catalogue import load_catalogue

    pipeline = load_klein_pipeline(build_tiny_klein_weights(cache_dir / "tiny", load_catalogue().names), torch.float32)
    pipeline.set_progress_bar_config(disable=True)
    side = 64
    cells = side // (pipeline.vae_scale_factor * 2)
    shape = (1, pipeline.transformer.config.in_channels, cells, cells)
    generator = torch.Generator().manual_seed(3)
    latents, noise = torch.randn(shape, generator=generator), torch.randn(shape, generator=generator)
    with torch.no_grad():
        prompt_embeds, text_ids = pipeline.encode_prompt(prompt="a watercolour portrait", device=torch.device("cpu"))
        inputs, _ = flow_matching_step(pipeline, latents, noise, torch.ones(1), prompt_embeds, text_ids)
        velocity = pipeline.transformer(**inputs, return_dict=False)[0]
        expected = pipeline(
            prompt_embeds=prompt_embeds, latents=noise, num_inference_steps=1, height=side, width=side,
            output_type="latent",
        ).images  # fmt: skip
        stepped = (pipeline._pack_latents(noise) - velocity).permute(0, 2, 1).reshape(shape)
        mean = pipeline.vae.bn.running_mean.view(1, -1, 1, 1)
        std = torch.sqrt(pipeline.vae.bn.running_var.view(1, -1, 1, 1) + pipeline.vae.config.batch_norm_eps)
        ours = pipeline._unpatchify_latents(stepped * std + mean)
    assert ours.shape == expected.shape
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)


def test_a_resumed_klein_run_ends_with_exactly_the_weights_of_an_uninterrupted_one(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file

    data = make_colour_data(tmp_path / "data")
    common = ["train", "--data", str(data), "--kind", "style", "--weights", "tiny-klein", "--rank", "4"]
    common += ["--lr", "1e-2", "--seed", "2", "--no-progress"]
    assert mmpp_main([*common, "--out", str(tmp_path / "whole.safetensors"), "--steps", "3"]) == 0
    parted = ["--out", str(tmp_path / "parted.safetensors"), "--checkpoint-every", "2"]
    # The first part also draws a validation picture with the LoRA so far (klein text-to-picture, 2 steps).
    validation = ["--validate-every", "2", "--validation-steps", "2", "--validation-images", "1"]
    assert mmpp_main([*common, *parted, "--steps", "2", *validation]) == 0
    assert (tmp_path / "parted" / "validation" / "step-2-0.png").is_file()
    assert mmpp_main([*common, *parted, "--steps", "3", "--resume", str(tmp_path / "parted")]) == 0
    whole, resumed = load_file(str(tmp_path / "whole.safetensors")), load_file(str(tmp_path / "parted.safetensors"))
    assert set(whole) == set(resumed) and all(torch.equal(whole[key], resumed[key]) for key in whole)
