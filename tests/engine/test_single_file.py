"""The single-file (original CompVis/A1111 layout) loading path, on the tiny models.

The tiny weights's diffusers components are written as one ``.safetensors``
file with the original key names (``tests.support.single_file``) and loaded back
through ``engine.pipeline.load_base_pipeline``, i.e. through diffusers'
``from_single_file`` and its key conversion, offline.  Every weight must come
back bit for bit and the pictures must not change by a single pixel.
"""

from __future__ import annotations

import dataclasses
import io
import socket
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from engine.models import ModelSources, build_tiny_pipeline, build_tiny_weights, detect_family
from engine.pipeline import Engine, load_base_pipeline
from mmpp.contract import GenerateRequest, Mode
from tests.conftest import SAMPLE_SELFIE
from tests.engine.conftest import make_settings
from tests.support.single_file import (
    SD15_CLIP_PREFIX,
    SDXL_CLIP_PREFIX,
    SDXL_OPEN_CLIP_PREFIX,
    UNET_PREFIX,
    VAE_PREFIX,
    save_as_single_file,
    to_original_state_dict,
)

PROMPT = "a person portrait photo, anime style"


@pytest.fixture(scope="module")
def offline() -> Iterator[None]:
    """No network at all: the Hub in offline mode, and any TCP connection fails the test."""
    import huggingface_hub.constants

    def refuse(self: socket.socket, address: Any, *args: Any, **kwargs: Any) -> None:
        if self.family in (socket.AF_INET, socket.AF_INET6):
            raise AssertionError(f"network access during a single-file load: {address}")
        return original_connect(self, address, *args, **kwargs)

    original_connect = socket.socket.connect
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        patch.setattr(socket.socket, "connect", refuse)
        yield


@pytest.fixture(scope="module")
def tiny_sd15(cache_dir: Path, catalogue) -> ModelSources:
    return build_tiny_weights(cache_dir / "tiny", "sd15", catalogue.names)


@pytest.fixture(scope="module")
def folder_pipeline(tiny_sd15: ModelSources) -> Any:
    from diffusers import StableDiffusionPipeline

    pipeline = StableDiffusionPipeline.from_pretrained(
        tiny_sd15.base, dtype=torch.float32, safety_checker=None, requires_safety_checker=False
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@pytest.fixture(scope="module")
def checkpoint(folder_pipeline: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("single-file") / "tiny-sd15.safetensors"
    save_as_single_file(folder_pipeline, path)
    return path


@pytest.fixture(scope="module")
def file_pipeline(checkpoint: Path, tiny_sd15: ModelSources, offline: None) -> Any:
    pipeline, family = load_base_pipeline(ModelSources(base=str(checkpoint), base_config=tiny_sd15.base), torch.float32)
    assert family == "sd15"
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def read_keys(path: Path) -> dict[str, tuple[int, ...]]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}  # noqa: SIM118


def assert_same_weights(original: torch.nn.Module, loaded: torch.nn.Module) -> None:
    expected, actual = original.state_dict(), loaded.state_dict()
    assert set(actual) == set(expected)
    different = [
        key
        for key, value in expected.items()
        if actual[key].is_meta or actual[key].dtype != value.dtype or not torch.equal(actual[key].cpu(), value.cpu())
    ]
    assert not different, f"{len(different)} weights differ, e.g. {different[:3]}"


def two_step_pixels(pipeline: Any, **extra: Any) -> np.ndarray:
    return pipeline(
        PROMPT,
        num_inference_steps=2,
        guidance_scale=5.0,
        generator=torch.Generator("cpu").manual_seed(7),
        output_type="np",
        **extra,
    ).images[0]


# --------------------------------------------------------------------------- SD 1.5


def test_the_file_has_the_original_layout(checkpoint: Path) -> None:
    keys = read_keys(checkpoint)
    assert all(key.startswith((UNET_PREFIX, VAE_PREFIX, SD15_CLIP_PREFIX)) for key in keys)
    expected = {
        # conv_in, the first cross-attention level, its upsampler after the attention, the middle block
        "model.diffusion_model.input_blocks.0.0.weight": (32, 4, 3, 3),
        "model.diffusion_model.input_blocks.3.0.op.weight": (32, 32, 3, 3),
        "model.diffusion_model.input_blocks.4.0.skip_connection.weight": (64, 32, 1, 1),
        "model.diffusion_model.input_blocks.5.1.transformer_blocks.0.attn2.to_k.weight": (64, 32),
        "model.diffusion_model.middle_block.1.proj_in.weight": (64, 64, 1, 1),
        "model.diffusion_model.middle_block.2.emb_layers.1.weight": (64, 128),
        "model.diffusion_model.output_blocks.2.2.conv.weight": (64, 64, 3, 3),
        "model.diffusion_model.output_blocks.5.0.out_layers.3.weight": (32, 32, 3, 3),
        "model.diffusion_model.time_embed.2.weight": (128, 128),
        "model.diffusion_model.out.2.weight": (4, 32, 3, 3),
        # VAE: 1x1-conv attention, reversed decoder levels, LDM resnet names
        "first_stage_model.encoder.mid.attn_1.q.weight": (64, 64, 1, 1),
        "first_stage_model.decoder.mid.attn_1.proj_out.weight": (64, 64, 1, 1),
        "first_stage_model.decoder.up.1.upsample.conv.weight": (64, 64, 3, 3),
        "first_stage_model.decoder.up.0.block.0.nin_shortcut.weight": (32, 64, 1, 1),
        "first_stage_model.encoder.norm_out.weight": (64,),
        "first_stage_model.post_quant_conv.weight": (4, 4, 1, 1),
        # CLIP under its transformers names, with the text_model. level the file format keeps
        "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight": (77, 32),
        "cond_stage_model.transformer.text_model.encoder.layers.4.mlp.fc2.weight": (32, 37),
    }
    assert {key: keys.get(key) for key in expected} == expected
    assert not [key for key in keys if "down_blocks" in key or "up_blocks" in key or "mid_block" in key]
    assert not [key for key in keys if key.startswith(VAE_PREFIX) and ("to_q" in key or "group_norm" in key)]
    assert detect_family(str(checkpoint)) == "sd15"


def test_every_weight_comes_back_exactly(folder_pipeline: Any, file_pipeline: Any) -> None:
    for name in ("unet", "vae", "text_encoder"):
        assert_same_weights(getattr(folder_pipeline, name), getattr(file_pipeline, name))
    assert dict(file_pipeline.scheduler.config) == dict(folder_pipeline.scheduler.config)
    assert file_pipeline.safety_checker is None


def test_same_seed_gives_identical_pixels(folder_pipeline: Any, file_pipeline: Any) -> None:
    assert np.array_equal(two_step_pixels(file_pipeline), two_step_pixels(folder_pipeline))


def test_the_engine_on_the_single_file_paints_what_the_folder_engine_paints(
    tiny_sd15: ModelSources, checkpoint: Path, tiny_engine: Engine, catalogue, cache_dir: Path, offline: None
) -> None:
    sources = dataclasses.replace(tiny_sd15, base=str(checkpoint), base_config=tiny_sd15.base, family=None)
    engine = Engine.from_sources(sources, catalogue, make_settings(cache_dir))
    assert engine.family == "sd15"
    assert engine.has_ip_adapter and engine.has_lcm and engine.has_portrait
    assert not engine.unavailable_styles
    job = GenerateRequest(selfie=SAMPLE_SELFIE.read_bytes(), style="anime", mode=Mode.FAST, steps=4, seed=7)
    from_file = engine.generate(job).pictures[0].png
    from_folder = tiny_engine.generate(job).pictures[0].png
    pixels = [np.asarray(Image.open(io.BytesIO(png)).convert("RGB")) for png in (from_file, from_folder)]
    assert np.array_equal(*pixels)


def test_half_precision_export(folder_pipeline: Any, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    path = tmp_path / "half.safetensors"
    save_as_single_file(folder_pipeline, path, dtype=torch.float16)
    state = load_file(str(path))
    assert {value.dtype for value in state.values()} == {torch.float16}
    assert torch.equal(
        state["model.diffusion_model.out.2.weight"], folder_pipeline.unet.conv_out.weight.detach().half()
    )


def test_a_pipeline_carrying_a_lora_is_refused(tiny_sd15: ModelSources) -> None:
    from diffusers import StableDiffusionPipeline

    pipeline = StableDiffusionPipeline.from_pretrained(tiny_sd15.base, safety_checker=None)
    assert tiny_sd15.portrait_lora is not None
    pipeline.load_lora_weights(
        tiny_sd15.portrait_lora.location, weight_name=tiny_sd15.portrait_lora.weight_name, adapter_name="portrait"
    )
    with pytest.raises(ValueError, match="LoRA"):
        to_original_state_dict(pipeline)


# --------------------------------------------------------------------------- SDXL


def sdxl_with_distinct_encoder_widths() -> Any:
    """The tiny SDXL: its two text encoders differ in width (32 and 64), as in the real model (768 and 1280).

    diffusers tells the two SDXL encoders apart in a single file by width, so
    the tiny weights keeps them different on purpose.
    """
    with torch.random.fork_rng():
        torch.manual_seed(3)
        return build_tiny_pipeline("sdxl")


def sdxl_with_equal_encoder_widths() -> Any:
    """A variant whose second encoder is as narrow as the first: ambiguous in a single file."""
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    tiny = sdxl_with_distinct_encoder_widths()
    narrow = tiny.text_encoder_2.config.to_dict()
    narrow.update(hidden_size=tiny.text_encoder.config.hidden_size)
    return StableDiffusionXLPipeline(
        vae=tiny.vae,
        text_encoder=tiny.text_encoder,
        text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**narrow)),
        tokenizer=tiny.tokenizer,
        tokenizer_2=tiny.tokenizer_2,
        unet=UNet2DConditionModel.from_config(tiny.unet.config, cross_attention_dim=64),
        scheduler=tiny.scheduler,
    )


def test_sdxl_round_trip(tmp_path: Path, offline: None) -> None:
    original = sdxl_with_distinct_encoder_widths()
    original.set_progress_bar_config(disable=True)
    original.save_pretrained(tmp_path / "folder")
    checkpoint = tmp_path / "tiny-sdxl.safetensors"
    save_as_single_file(original, checkpoint)

    keys = read_keys(checkpoint)
    assert all(key.startswith((UNET_PREFIX, VAE_PREFIX, SDXL_CLIP_PREFIX, SDXL_OPEN_CLIP_PREFIX)) for key in keys)
    assert keys["model.diffusion_model.label_emb.0.0.weight"] == (128, 80)
    assert keys[SDXL_OPEN_CLIP_PREFIX + "positional_embedding"] == (77, 64)
    assert keys[SDXL_OPEN_CLIP_PREFIX + "text_projection"] == (64, 32)
    assert keys[SDXL_OPEN_CLIP_PREFIX + "transformer.resblocks.4.attn.in_proj_weight"] == (192, 64)
    assert keys[SDXL_CLIP_PREFIX + "text_model.embeddings.position_embedding.weight"] == (77, 32)
    assert detect_family(str(checkpoint)) == "sdxl"

    loaded, family = load_base_pipeline(
        ModelSources(base=str(checkpoint), base_config=str(tmp_path / "folder")), torch.float32
    )
    assert family == "sdxl"
    loaded.set_progress_bar_config(disable=True)
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        assert_same_weights(getattr(original, name), getattr(loaded, name))
    assert np.array_equal(two_step_pixels(loaded), two_step_pixels(original))


def test_sdxl_encoders_of_equal_width_are_flagged(tmp_path: Path) -> None:
    tiny = sdxl_with_equal_encoder_widths()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        save_as_single_file(tiny, tmp_path / "ambiguous.safetensors")
    assert any("same width" in str(warning.message) for warning in caught)
