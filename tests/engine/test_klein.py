"""The FLUX.2 [klein] family on its tiny weights: detection, loading, planning and generation on a CPU."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmpp.contract import GenerateRequest, Mode
from mmpp.errors import ErrorCode, MmppError
from tests.engine.conftest import forbid_weight_reads, make_settings
from tests.images import encoded


def pixels(result, index: int = 0) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(result.pictures[index].png)).convert("RGB"), dtype=np.int16)


def request(selfie: bytes, **fields: object) -> GenerateRequest:
    defaults: dict[str, object] = {"style": "anime", "mode": Mode.FAST, "seed": 11}
    defaults.update(fields)
    return GenerateRequest(selfie=selfie, **defaults)  # type: ignore[arg-type]


def another_selfie(selfie: bytes) -> bytes:
    """The same person in another photo: mirrored and in black and white (the repository holds one selfie)."""
    photo = Image.open(io.BytesIO(selfie)).convert("L").convert("RGB")
    return encoded(photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT))


# ---------------------------------------------------------------- detection and the tiny weights


def test_a_klein_folder_is_detected_as_its_family_and_other_flux_models_are_refused(
    tiny_klein_engine, tmp_path: Path
) -> None:
    from engine.models import detect_family

    base = Path(tiny_klein_engine.sources.base)
    assert json.loads((base / "model_index.json").read_text())["_class_name"] == "Flux2KleinPipeline"
    assert detect_family(str(base)) == "flux2-klein"
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "FluxKontextPipeline"}))
    with pytest.raises(MmppError) as refused:
        detect_family(str(tmp_path))
    assert refused.value.code is ErrorCode.MODEL_UNAVAILABLE


def test_the_tiny_klein_has_the_real_architectures_and_loads_like_real_weights(tiny_klein_engine) -> None:
    from diffusers import AutoencoderKLFlux2, Flux2KleinPipeline, Flux2Transformer2DModel
    from transformers import Qwen3ForCausalLM

    from engine.klein import KleinEngine
    from engine.models import KLEIN_TEXT_ENCODER_LAYERS

    engine = tiny_klein_engine
    assert isinstance(engine, KleinEngine) and engine.family == "flux2-klein"
    assert engine.sources.test_sized and engine.distilled
    pipeline = engine.pipeline
    assert isinstance(pipeline, Flux2KleinPipeline)
    assert isinstance(pipeline.transformer, Flux2Transformer2DModel)
    assert isinstance(pipeline.vae, AutoencoderKLFlux2)
    assert isinstance(pipeline.text_encoder, Qwen3ForCausalLM)
    assert pipeline.text_encoder.config.num_hidden_layers > max(KLEIN_TEXT_ENCODER_LAYERS)
    text = pipeline.tokenizer.apply_chat_template(
        [{"role": "user", "content": "hello"}], tokenize=False, add_generation_prompt=True, enable_thinking=False
    )
    assert text == "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    # Learnt on the catalogue: its words are single tokens, not bytes.
    assert pipeline.tokenizer.tokenize(" portrait") == ["Ġportrait"]


def test_the_tiny_klein_is_built_deterministically(tiny_klein_engine, tmp_path: Path, catalogue) -> None:
    from safetensors.torch import load_file

    from engine.models import build_tiny_klein_weights

    again = build_tiny_klein_weights(tmp_path, catalogue.names)
    for part in ("transformer", "vae", "text_encoder"):
        (first,) = (Path(tiny_klein_engine.sources.base) / part).glob("*.safetensors")
        (second,) = (Path(again.base) / part).glob("*.safetensors")
        one, other = load_file(first), load_file(second)
        assert one.keys() == other.keys() and all(bool((one[key] == other[key]).all()) for key in one)


def test_generate_cli_takes_the_family_of_the_tiny_weights(
    cache_dir: Path, tmp_path: Path, selfie_bytes: bytes
) -> None:
    photo = tmp_path / "selfie.jpg"
    photo.write_bytes(selfie_bytes)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "mmpp.cli", "generate", "--profile", "tiny", "--family", "flux2-klein",
               "--photo", str(photo), "--style", "pixel-art", "--seed", "5", "--out", str(out)]  # fmt: skip
    environment = {**os.environ, "MMPP_CACHE_DIR": str(cache_dir), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=environment)
    assert done.returncode == 0, done.stderr
    (written,) = (tmp_path / "out").glob("*.png")
    assert Image.open(written).size == (64, 64)
    with_default = [*command[:5], "default", *command[6:]]
    refused = subprocess.run(with_default, capture_output=True, text=True, timeout=120, env=environment)
    assert refused.returncode == 2 and refused.stderr.startswith("error[INVALID_REQUEST]")


# ---------------------------------------------------------------- planning


def test_the_plan_is_the_style_instruction_in_four_steps_without_guidance(tiny_klein_engine, selfie_bytes) -> None:
    engine = tiny_klein_engine
    style = engine.catalogue.get("watercolor")
    fast = engine.plan(request(selfie_bytes, style="watercolor"))
    assert fast.prompt == style.edit_instruction
    assert (fast.steps, fast.guidance, fast.classifier_free_guidance) == (4, 1.0, False)
    quality = engine.plan(request(selfie_bytes, style="watercolor", mode=Mode.QUALITY, prompt="a woman with red hair"))
    assert quality.steps > fast.steps and quality.guidance == 1.0
    assert quality.prompt == f"{style.edit_instruction} The photo shows a woman with red hair."


@pytest.mark.parametrize(
    ("fields", "code", "words"),
    [
        ({"prompt": "a (cat)1.3"}, ErrorCode.INVALID_REQUEST, "plain words"),
        ({"prompt": "a person++"}, ErrorCode.INVALID_REQUEST, "plain words"),
        ({"guidance": 3.0}, ErrorCode.INVALID_REQUEST, "without guidance"),
        ({"steps": 30, "mode": Mode.QUALITY}, ErrorCode.INVALID_REQUEST, "8 to 16 steps"),
        ({"steps": 2}, ErrorCode.INVALID_REQUEST, "4 to 8 steps"),
        ({"upscale_source": encoded(Image.new("RGB", (64, 64)))}, ErrorCode.MODEL_UNAVAILABLE, "Upscaling"),
    ],
)
def test_what_klein_cannot_do_is_refused_at_plan_time(
    tiny_klein_engine, selfie_bytes: bytes, fields: dict[str, object], code: ErrorCode, words: str
) -> None:
    with pytest.raises(MmppError) as refused:
        tiny_klein_engine.plan(replace(request(selfie_bytes), **fields))
    assert refused.value.code is code and words in refused.value.message


def test_the_base_model_refuses_fast_mode_and_guides_quality(tiny_klein_engine, selfie_bytes) -> None:
    from engine.klein import BASE_GUIDANCE, BASE_STEPS, KleinEngine

    tiny = tiny_klein_engine
    base = KleinEngine(tiny.pipeline, "flux2-klein", tiny.sources, tiny.catalogue, face_analyzer=tiny.face_analyzer)
    base.distilled = False
    with pytest.raises(MmppError) as refused:
        base.plan(request(selfie_bytes))
    assert refused.value.code is ErrorCode.MODEL_UNAVAILABLE and "quality" in refused.value.message
    quality = base.plan(request(selfie_bytes, mode=Mode.QUALITY))
    assert (quality.steps, quality.guidance, quality.classifier_free_guidance) == (BASE_STEPS, BASE_GUIDANCE, True)


def test_a_style_without_an_edit_instruction_is_unavailable_on_klein(tiny_klein_engine, selfie_bytes) -> None:
    from engine.klein import KleinEngine
    from mmpp.catalogue import Catalogue

    bare = Catalogue([replace(style, edit_instruction="") for style in tiny_klein_engine.catalogue])
    engine = KleinEngine(tiny_klein_engine.pipeline, "flux2-klein", tiny_klein_engine.sources, bare,
                         face_analyzer=tiny_klein_engine.face_analyzer)  # fmt: skip
    with pytest.raises(MmppError) as refused:
        engine.plan(request(selfie_bytes))
    assert refused.value.code is ErrorCode.MODEL_UNAVAILABLE and "edit_instruction" in refused.value.message


def test_the_reference_is_upright_centred_on_the_face_with_room_around_it(tiny_klein_engine, selfie_bytes) -> None:
    from engine.klein import KleinEngine

    engine = KleinEngine(tiny_klein_engine.pipeline, "flux2-klein", tiny_klein_engine.sources,
                         tiny_klein_engine.catalogue, face_analyzer=tiny_klein_engine.face_analyzer,
                         resolution=512)  # fmt: skip
    plan = engine.plan(request(selfie_bytes))
    reference = engine.identity_image(request(selfie_bytes), plan)
    assert reference.size == (512, 512)
    face = engine.face_analyzer.pick_face(reference)
    centre_x, centre_y = face.box.center
    assert abs(centre_x - 256) < 40 and abs(centre_y - 256) < 60
    assert abs(face.roll_degrees) < 5
    # Generous: the face takes well under half the width (the SD crop's tight head takes more).
    assert face.box.width < 0.4 * 512
    assert tiny_klein_engine.output_size() == (64, 64)


# ---------------------------------------------------------------- generation


def test_no_face_is_refused_before_any_model_work(tiny_klein_engine, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_model_work(*args: object, **kwargs: object) -> None:
        pytest.fail("a model ran for a photo without a face")

    monkeypatch.setattr(tiny_klein_engine.pipeline, "encode_prompt", no_model_work)
    monkeypatch.setattr(tiny_klein_engine.pipeline.transformer, "forward", no_model_work)
    monkeypatch.setattr(tiny_klein_engine.pipeline.vae, "encode", no_model_work)
    with pytest.raises(MmppError) as refused:
        tiny_klein_engine.generate(request(encoded(Image.new("RGB", (256, 256), (40, 90, 160)))))
    assert refused.value.code is ErrorCode.NO_FACE


def test_same_seed_same_pixels_and_each_picture_keeps_its_seed_in_a_batch(tiny_klein_engine, selfie_bytes) -> None:
    engine = tiny_klein_engine
    progress: list[tuple[int, int]] = []
    pair = engine.generate(
        request(selfie_bytes, count=2), on_progress=lambda done, total: progress.append((done, total))
    )
    assert [picture.seed for picture in pair.pictures] == [11, 12]
    assert progress[-1] == (4, 4) and [done for done, _ in progress] == [1, 2, 3, 4]
    alone = engine.generate(request(selfie_bytes, seed=12))
    again = engine.generate(request(selfie_bytes, seed=12))
    assert again.pictures[0].png == alone.pictures[0].png
    # In a batch, up to rounding: a batch of 2 and of 1 may run different CPU kernels (last bits of float32).
    difference = np.abs(pixels(pair, 1) - pixels(alone))
    assert difference.max() <= 2, difference.max()
    between_seeds = np.abs(pixels(pair, 0) - pixels(pair, 1)).mean()
    assert between_seeds > 10 * max(difference.mean(), 0.01)
    assert pair.model.startswith("tiny-flux2-klein") and pair.test_sized_model and pair.steps == 4


def test_a_different_selfie_changes_the_picture(tiny_klein_engine, selfie_bytes) -> None:
    first = tiny_klein_engine.generate(request(selfie_bytes))
    other = tiny_klein_engine.generate(request(another_selfie(selfie_bytes)))
    assert np.abs(pixels(first) - pixels(other)).mean() > 1.0


def test_a_different_instruction_changes_the_picture(tiny_klein_engine, selfie_bytes) -> None:
    from engine.pipeline import ScaleOverrides

    no_lora = ScaleOverrides(style_scale=0.0)  # only the instructions differ
    anime = tiny_klein_engine.generate(request(selfie_bytes, style="anime"), overrides=no_lora)
    comic = tiny_klein_engine.generate(request(selfie_bytes, style="comic"), overrides=no_lora)
    assert anime.scales["style_lora"] == comic.scales["style_lora"] == 0.0
    assert np.abs(pixels(anime) - pixels(comic)).mean() > 1.0


def test_quality_mode_paints_more_steps(tiny_klein_engine, selfie_bytes) -> None:
    progress: list[tuple[int, int]] = []
    result = tiny_klein_engine.generate(
        request(selfie_bytes, mode=Mode.QUALITY), on_progress=lambda done, total: progress.append((done, total))
    )
    assert result.mode == "quality" and result.steps == 8 and progress[-1] == (8, 8)


def test_a_real_klein_folder_is_served_through_the_default_weights(
    tiny_klein_engine, cache_dir: Path, catalogue
) -> None:
    """MMPP_BASE_MODEL pointing at a klein folder selects the family: the same resolution as real weights."""
    from engine.klein import KleinEngine
    from engine.models import resolve_sources

    settings = make_settings(cache_dir, base_model=tiny_klein_engine.sources.base)
    sources = resolve_sources("default", settings, catalogue.names)
    assert sources.family == "flux2-klein" and sources.ip_adapter is None and sources.lcm_lora is None
    from engine.pipeline import Engine

    engine = Engine.from_sources(sources, catalogue, settings)
    assert isinstance(engine, KleinEngine) and not engine.sources.test_sized


# ---------------------------------------------------------------- style LoRAs (Flux2LoraLoaderMixin)


def test_a_klein_lora_at_scale_zero_is_no_lora_and_a_nonzero_scale_changes_the_pixels(
    tiny_klein_engine, selfie_bytes: bytes, cache_dir: Path, catalogue
) -> None:
    from engine.pipeline import Engine, ScaleOverrides

    assert "anime" in tiny_klein_engine.style_adapters
    with_lora = tiny_klein_engine.generate(request(selfie_bytes, style="anime"))
    assert with_lora.scales["style_lora"] == 1.0
    at_zero = tiny_klein_engine.generate(request(selfie_bytes, style="anime"), overrides=ScaleOverrides(style_scale=0))
    settings = make_settings(cache_dir)
    plain = Engine.from_sources(replace(tiny_klein_engine.sources, style_loras={}), catalogue, settings)
    assert plain.style_adapters == {} and plain.pipeline.get_list_adapters() == {}
    without = plain.generate(request(selfie_bytes, style="anime"))
    assert at_zero.pictures[0].png == without.pictures[0].png
    assert np.abs(pixels(with_lora) - pixels(without)).mean() > 1.0
    half = tiny_klein_engine.generate(request(selfie_bytes, style="anime"), overrides=ScaleOverrides(style_scale=0.5))
    assert half.pictures[0].png not in {with_lora.pictures[0].png, without.pictures[0].png}


def test_klein_style_switches_reproduce_a_style_exactly_without_touching_the_disk(
    tiny_klein_engine, selfie_bytes: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    forbid_weight_reads(monkeypatch, tiny_klein_engine.pipeline)
    first = tiny_klein_engine.generate(request(selfie_bytes, style="pop-art")).pictures[0].png
    other = tiny_klein_engine.generate(request(selfie_bytes, style="fantasy")).pictures[0].png
    again = tiny_klein_engine.generate(request(selfie_bytes, style="pop-art")).pictures[0].png
    assert first == again and other != first


def test_sd_only_scales_are_refused_not_ignored(tiny_klein_engine, selfie_bytes: bytes) -> None:
    from engine.pipeline import ScaleOverrides

    for overrides in (ScaleOverrides(ip_adapter_scale=0.5), ScaleOverrides(portrait_scale=1.0)):
        with pytest.raises(MmppError) as refused:
            tiny_klein_engine.plan(request(selfie_bytes), overrides)
        assert refused.value.code is ErrorCode.INVALID_REQUEST and "IP-Adapter" in refused.value.message


def test_a_klein_job_past_its_deadline_stops_with_timeout(tiny_klein_engine, selfie_bytes: bytes) -> None:
    import time

    with pytest.raises(MmppError) as stopped:
        tiny_klein_engine.generate(request(selfie_bytes), deadline=time.monotonic() - 1)
    assert stopped.value.code is ErrorCode.TIMEOUT
    assert tiny_klein_engine.generate(request(selfie_bytes)).ok  # and the engine serves the next job


def test_a_klein_job_sends_small_jpeg_previews_mid_job_and_the_same_pictures(
    tiny_klein_engine, selfie_bytes: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    from engine.pipeline import PREVIEW_SIDE

    monkeypatch.setattr(tiny_klein_engine, "preview_every_steps", 2)
    monkeypatch.setattr(tiny_klein_engine, "preview_min_seconds", 0.0)
    job = request(selfie_bytes, count=2)
    without = tiny_klein_engine.generate(job)
    previews: list[tuple[int, int, bytes]] = []
    with_previews = tiny_klein_engine.generate(
        job, on_preview=lambda done, total, jpeg: previews.append((done, total, jpeg))
    )
    assert [(done, total) for done, total, _ in previews] == [(2, 4)]
    image = Image.open(io.BytesIO(previews[0][2]))
    assert image.format == "JPEG" and image.size == tiny_klein_engine.output_size()
    assert max(image.size) <= PREVIEW_SIDE and len(previews[0][2]) < 30_000
    assert [p.png for p in with_previews.pictures] == [p.png for p in without.pictures]
    assert with_previews.timings["preview"] > 0 and "preview" not in without.timings


def test_the_klein_preview_projection_shows_the_colours_of_the_latents_the_denoiser_sees(
    tiny_klein_engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tiny klein's random VAE keeps no colour a linear map could find (its GroupNorms remove each
    channel's mean), so the encoder here is a stand-in whose latents are a fixed linear mix of each patch's
    colour: the fit must recover it, and the preview must undo the pipeline's token packing, batch-norm
    scaling and 2x2 patches, which the stand-in's non-trivial statistics make matter."""
    import torch
    from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKLOutput
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    from engine.klein import fit_preview_projection, preview_fit_images

    engine = tiny_klein_engine
    vae, scale = engine.full_vae, engine.pipeline.vae_scale_factor
    channels = vae.config.latent_channels
    mix = torch.randn(channels, 3, generator=torch.Generator().manual_seed(5))

    def linear_encode(images: torch.Tensor) -> AutoencoderKLOutput:
        colours = torch.nn.functional.avg_pool2d(images.float(), scale)
        mean = torch.einsum("bchw,kc->bkhw", colours, mix) + 0.5
        return AutoencoderKLOutput(latent_dist=DiagonalGaussianDistribution(torch.cat([mean, mean * 0], dim=1)))

    monkeypatch.setattr(vae, "encode", linear_encode)
    # The batch-norm statistics are buffers of the session's shared engine: changed in place and put back by
    # hand, because monkeypatch's undo of a module buffer leaves the module without it for the tests after this.
    saved = vae.bn.running_mean.clone(), vae.bn.running_var.clone()
    try:
        with torch.no_grad():
            vae.bn.running_mean.copy_(torch.linspace(-1, 1, channels * 4))
            vae.bn.running_var.copy_(torch.linspace(0.2, 3, channels * 4))
        monkeypatch.setattr(engine, "preview_projection", fit_preview_projection(vae, scale))

        side = engine.output_size()[0]
        fresh = preview_fit_images(2, side, seed=1)  # not the fields it was fitted on
        with torch.inference_mode():
            packed = engine.pipeline._pack_latents(engine.pipeline._encode_vae_image(fresh, generator=None))
        for image, tokens in zip(fresh, packed, strict=True):
            preview = np.asarray(engine._preview_image(tokens[None]), dtype=np.float64)
            truth = ((image.permute(1, 2, 0).numpy() + 1) * 127.5).astype(np.float64)
            error, grey = np.abs(preview - truth).mean(), np.abs(truth - 127.5).mean()
            assert preview.shape == truth.shape and error < 0.2 * grey, (error, grey)
    finally:
        with torch.no_grad():
            vae.bn.running_mean.copy_(saved[0])
            vae.bn.running_var.copy_(saved[1])


def test_mmpp_train_takes_a_klein_base_for_style_loras_and_refuses_the_rest_before_loading(
    tiny_klein_engine, tmp_path: Path
) -> None:
    """A klein folder as ``--base`` trains a style LoRA (tests/engine/train/test_klein_trainer.py trains one);
    a portrait LoRA or text-encoder training, which klein's trainer lacks, is refused from the model's index."""
    from engine.train.trainer import TrainConfig, resolve_training_sources

    base = tiny_klein_engine.sources.base
    config = TrainConfig(data_dir=tmp_path, kind="style", out=tmp_path / "out.safetensors", base=base)
    assert resolve_training_sources(config, make_settings(tmp_path)).family == "flux2-klein"
    for refused_config in (replace(config, kind="portrait"), replace(config, train_text_encoder=True)):
        with pytest.raises(MmppError) as refused:
            resolve_training_sources(refused_config, make_settings(tmp_path))
        assert refused.value.code is ErrorCode.INVALID_REQUEST and "FLUX.2 [klein]" in refused.value.message


def test_each_family_paints_only_the_variants_of_its_own_family(tiny_engine, tiny_klein_engine, selfie_bytes) -> None:
    """The shipped headshot has a klein variant: a klein worker paints it and says so; an SD worker refuses it, and
    any job the bot sent for another family, with ``WRONG_FAMILY`` before any model work."""
    painted = tiny_klein_engine.generate(request(selfie_bytes, style="headshot", variant="photo-edit"))
    assert (painted.variant, painted.family, len(painted.pictures)) == ("photo-edit", "flux2-klein", 1)
    as_written = tiny_engine.generate(request(selfie_bytes, style="headshot"))
    assert (as_written.variant, as_written.family) == ("base", "sd15")
    refusals = [
        (tiny_engine, request(selfie_bytes, style="headshot", variant="photo-edit"), "needs a flux2-klein worker"),
        (tiny_engine, request(selfie_bytes, style="anime", family="flux2-klein"), "needs a flux2-klein worker"),
        (tiny_klein_engine, request(selfie_bytes, style="anime", family="sd15"), "needs a sd15 worker"),
    ]
    for engine, job, complaint in refusals:
        forbid = pytest.MonkeyPatch()
        forbid.setattr(engine, "plan", lambda *arguments, **options: pytest.fail("planned a refused job"))
        try:
            with pytest.raises(MmppError) as raised:
                engine.generate(job)
        finally:
            forbid.undo()
        assert raised.value.code is ErrorCode.WRONG_FAMILY and complaint in raised.value.message
