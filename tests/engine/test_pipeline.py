"""The engine on the tiny weights: every part must visibly do its job.

Each test compares pixels or embeddings against a run with the part switched
off, so a LoRA, IP-Adapter or prompt weight that silently did nothing would
fail here.  Fast mode with 4 steps keeps each picture well under a second.
"""

from __future__ import annotations

import dataclasses
import io
import time

import numpy as np
import pytest
import torch
from PIL import Image

from engine.pipeline import LCM_ADAPTER, PORTRAIT_ADAPTER, Engine, ScaleOverrides
from mmpp.contract import GenerateRequest, Mode
from mmpp.errors import ErrorCode, MmppError
from tests.engine.conftest import forbid_weight_reads, make_settings


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)


def request(selfie: bytes, **fields: object) -> GenerateRequest:
    defaults: dict[str, object] = {"style": "anime", "mode": Mode.FAST, "steps": 4, "seed": 7}
    defaults.update(fields)
    return GenerateRequest(selfie=selfie, **defaults)  # type: ignore[arg-type]


def first_picture(engine: Engine, job: GenerateRequest, **options: object) -> np.ndarray:
    return pixels(engine.generate(job, **options).pictures[0].png)  # type: ignore[arg-type]


def test_same_inputs_and_seed_give_the_same_pixels(tiny_engine: Engine, selfie_bytes: bytes) -> None:
    first = tiny_engine.generate(request(selfie_bytes))
    second = tiny_engine.generate(request(selfie_bytes))
    assert first.pictures[0].png == second.pictures[0].png
    other_seed = tiny_engine.generate(request(selfie_bytes, seed=8))
    assert np.abs(pixels(other_seed.pictures[0].png) - pixels(first.pictures[0].png)).mean() > 1


def test_each_picture_of_a_job_has_its_own_reproducible_seed(tiny_engine: Engine, selfie_bytes: bytes) -> None:
    result = tiny_engine.generate(request(selfie_bytes, count=3, seed=100))
    assert [picture.seed for picture in result.pictures] == [100, 101, 102]
    assert len({picture.png for picture in result.pictures}) == 3
    again = tiny_engine.generate(request(selfie_bytes, count=3, seed=100))
    assert [picture.png for picture in again.pictures] == [picture.png for picture in result.pictures]
    # The same seed alone paints the same picture, up to rounding: a batch of 3 and a batch of 1 may run
    # different CPU kernels (with AVX-512 they do), whose sums differ in the last bits of float32.
    alone = tiny_engine.generate(request(selfie_bytes, count=1, seed=102))
    difference = np.abs(pixels(alone.pictures[0].png) - pixels(result.pictures[2].png))
    assert difference.max() <= 2, difference.max()
    between_seeds = np.abs(pixels(result.pictures[1].png) - pixels(result.pictures[2].png)).mean()
    assert between_seeds > 10 * max(difference.mean(), 0.01)


def test_random_seed_is_recorded(tiny_engine: Engine, selfie_bytes: bytes) -> None:
    result = tiny_engine.generate(request(selfie_bytes, seed=None))
    again = tiny_engine.generate(request(selfie_bytes, seed=result.pictures[0].seed))
    assert again.pictures[0].png == result.pictures[0].png


def test_style_lora_changes_pixels_and_scale_zero_restores_the_base(
    tiny_engine: Engine, selfie_bytes: bytes, cache_dir, catalogue
) -> None:
    styled = first_picture(tiny_engine, request(selfie_bytes))
    unstyled = first_picture(tiny_engine, request(selfie_bytes), overrides=ScaleOverrides(style_scale=0.0))
    assert np.abs(styled - unstyled).mean() > 1.0

    # The base result: an engine that never loaded any style LoRA.
    from engine.models import build_tiny_weights

    sources = build_tiny_weights(cache_dir / "tiny", "sd15", catalogue.names)
    sources = dataclasses.replace(sources, style_loras={})
    bare = Engine.from_sources(sources, catalogue, make_settings(cache_dir))
    assert not bare.style_adapters
    base = first_picture(bare, request(selfie_bytes))
    assert np.array_equal(base, unstyled)


def test_adapter_weight_zero_is_exactly_the_adapter_switched_off(tiny_engine: Engine, selfie_bytes: bytes) -> None:
    plan = tiny_engine.plan(request(selfie_bytes))
    style_adapter = tiny_engine.style_adapters["anime"]
    job = request(selfie_bytes)
    tiny_engine.activate({PORTRAIT_ADAPTER: 0.4, style_adapter: 0.0, LCM_ADAPTER: 1.0})
    conditioning = tiny_engine.encode_prompt(plan.prompt, plan.negative_prompt)
    conditioning.update(
        tiny_engine.encode_face(
            tiny_engine.face_analyzer.prepare_selfie(job.selfie).crop, plan.classifier_free_guidance
        )
    )
    arguments = tiny_engine.pipeline_arguments(plan, conditioning, [7])
    tiny_engine.pipeline.scheduler = tiny_engine.scheduler_for(Mode.FAST)
    tiny_engine.pipeline.set_ip_adapter_scale(plan.ip_adapter_scale)
    with_zero = np.asarray(tiny_engine.pipeline(**arguments).images[0])
    tiny_engine.activate({PORTRAIT_ADAPTER: 0.4, LCM_ADAPTER: 1.0})
    tiny_engine.pipeline.scheduler = tiny_engine.scheduler_for(Mode.FAST)
    arguments["generator"] = [torch.Generator("cpu").manual_seed(7)]
    without = np.asarray(tiny_engine.pipeline(**arguments).images[0])
    assert np.array_equal(with_zero, without)


def test_portrait_lora_scale_changes_pixels(tiny_engine: Engine, selfie_bytes: bytes) -> None:
    default = first_picture(tiny_engine, request(selfie_bytes))
    stronger = first_picture(tiny_engine, request(selfie_bytes), overrides=ScaleOverrides(portrait_scale=1.2))
    assert np.abs(default - stronger).mean() > 1.0


def test_ip_adapter_scale_zero_equals_no_ip_adapter(
    tiny_engine: Engine, selfie_bytes: bytes, cache_dir, catalogue
) -> None:
    with_identity = first_picture(tiny_engine, request(selfie_bytes))
    scale_zero = first_picture(tiny_engine, request(selfie_bytes), overrides=ScaleOverrides(ip_adapter_scale=0.0))
    assert np.abs(with_identity - scale_zero).mean() > 1.0

    from engine.models import build_tiny_weights

    sources = dataclasses.replace(build_tiny_weights(cache_dir / "tiny", "sd15", catalogue.names), ip_adapter=None)
    without_adapter = Engine.from_sources(sources, catalogue, make_settings(cache_dir))
    assert not without_adapter.has_ip_adapter
    assert np.array_equal(first_picture(without_adapter, request(selfie_bytes)), scale_zero)


def test_the_selfie_reaches_the_picture_through_the_ip_adapter(tiny_engine: Engine, selfie_bytes: bytes) -> None:
    mirrored = io.BytesIO()
    Image.open(io.BytesIO(selfie_bytes)).transpose(Image.Transpose.FLIP_LEFT_RIGHT).rotate(8).save(mirrored, "JPEG")
    original = first_picture(tiny_engine, request(selfie_bytes))
    other = first_picture(tiny_engine, request(mirrored.getvalue()))
    assert np.abs(original - other).mean() > 0.5


def test_switching_styles_a_b_a_reproduces_a(tiny_engine: Engine, selfie_bytes: bytes) -> None:
    first_a = tiny_engine.generate(request(selfie_bytes, style="anime")).pictures[0].png
    b = tiny_engine.generate(request(selfie_bytes, style="pixel-art")).pictures[0].png
    quality = tiny_engine.generate(request(selfie_bytes, style="headshot", mode=Mode.QUALITY, steps=15))
    second_a = tiny_engine.generate(request(selfie_bytes, style="anime")).pictures[0].png
    assert first_a == second_a
    assert b != first_a
    assert quality.pictures[0].png != first_a


def test_style_switches_never_touch_the_disk(
    tiny_engine: Engine, selfie_bytes: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    forbid_weight_reads(monkeypatch, tiny_engine.pipeline)
    for style in ["watercolor", "cyberpunk", "anime", "pop-art"]:
        assert tiny_engine.generate(request(selfie_bytes, style=style)).ok


def test_fast_mode_runs_exactly_the_configured_unet_calls(tiny_engine: Engine, selfie_bytes: bytes) -> None:
    calls = []
    handle = tiny_engine.pipeline.unet.register_forward_pre_hook(lambda module, args: calls.append(1))
    try:
        tiny_engine.generate(request(selfie_bytes, steps=5))
        assert len(calls) == 5
        calls.clear()
        tiny_engine.generate(request(selfie_bytes, mode=Mode.QUALITY, steps=15, guidance=5.0))
        assert len(calls) == 15
    finally:
        handle.remove()
    from diffusers import DPMSolverMultistepScheduler, LCMScheduler

    assert isinstance(tiny_engine.scheduler_for(Mode.FAST), LCMScheduler)
    quality = tiny_engine.scheduler_for(Mode.QUALITY)
    assert isinstance(quality, DPMSolverMultistepScheduler)
    assert quality.config.use_karras_sigmas and quality.config.algorithm_type == "dpmsolver++"


def test_mode_steps_and_guidance_come_from_the_style(tiny_engine: Engine, selfie_bytes: bytes, catalogue) -> None:
    style = catalogue.get("headshot")
    plan = tiny_engine.plan(GenerateRequest(selfie=selfie_bytes, style="headshot"))
    assert plan.mode is style.mode is Mode.QUALITY
    assert plan.steps == style.quality_steps and plan.guidance == style.quality_guidance
    assert LCM_ADAPTER not in plan.adapters
    fast = tiny_engine.plan(GenerateRequest(selfie=selfie_bytes, style="headshot", mode=Mode.FAST))
    assert fast.steps == style.fast_steps and fast.guidance <= 2 and fast.adapters[LCM_ADAPTER] == 1.0


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"style": "no-such-style"}, ErrorCode.UNKNOWN_STYLE),
        ({"steps": 2}, ErrorCode.INVALID_REQUEST),
        ({"steps": 30}, ErrorCode.INVALID_REQUEST),
        ({"guidance": 7.5}, ErrorCode.INVALID_REQUEST),
        ({"prompt": "x" * 501}, ErrorCode.PROMPT_TOO_LONG),
        ({"count": 5}, ErrorCode.INVALID_REQUEST),
        ({"selfie": b"not an image"}, ErrorCode.NOT_AN_IMAGE),
    ],
)
def test_bad_requests_have_stable_codes(
    tiny_engine: Engine, selfie_bytes: bytes, fields: dict[str, object], code: ErrorCode
) -> None:
    job = request(fields.pop("selfie", selfie_bytes), **fields)  # type: ignore[arg-type]
    with pytest.raises(MmppError) as raised:
        tiny_engine.generate(job)
    assert raised.value.code is code
    assert "\n" not in raised.value.message


def test_a_photo_without_a_face_is_refused(tiny_engine: Engine) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (256, 256), (120, 160, 200)).save(buffer, "PNG")
    with pytest.raises(MmppError) as raised:
        tiny_engine.generate(request(buffer.getvalue()))
    assert raised.value.code is ErrorCode.NO_FACE


def test_progress_is_reported_per_step(tiny_engine: Engine, selfie_bytes: bytes) -> None:
    seen: list[tuple[int, int]] = []
    tiny_engine.generate(request(selfie_bytes, count=2, steps=4), lambda done, total: seen.append((done, total)))
    # Both pictures are painted in one batched call: four steps for the job (split jobs: test_pipeline_fast_mode).
    assert seen == [(step, 4) for step in range(1, 5)]


def test_deadline_stops_the_job_with_timeout(tiny_engine: Engine, selfie_bytes: bytes) -> None:
    with pytest.raises(MmppError) as raised:
        tiny_engine.generate(request(selfie_bytes), deadline=time.monotonic() - 1)
    assert raised.value.code is ErrorCode.TIMEOUT


def test_result_records_scales_timings_and_the_test_sized_model(tiny_engine: Engine, selfie_bytes: bytes) -> None:
    result = tiny_engine.generate(request(selfie_bytes))
    assert result.test_sized_model and "tiny" in result.model
    assert result.scales == {"style_lora": 0.8, "portrait_lora": 0.4, "ip_adapter": 0.6, "lcm_lora": 1.0}
    for stage in ["face", "adapters", "prompt", "denoise", "vae_decode", "encode", "total"]:
        assert result.timings[stage] >= 0
    assert result.timings["denoise"] > 0


def test_pictures_carry_no_metadata_of_the_upload(tiny_engine: Engine, selfie_bytes: bytes) -> None:
    photo = Image.open(io.BytesIO(selfie_bytes))
    exif = Image.Exif()
    exif[0x010F] = "SecretCameraMaker"  # Make
    exif[0x9286] = "private comment"  # UserComment
    tagged = io.BytesIO()
    photo.save(tagged, "JPEG", exif=exif.tobytes())
    png = tiny_engine.generate(request(tagged.getvalue())).pictures[0].png
    assert b"SecretCameraMaker" not in png and b"private comment" not in png
    opened = Image.open(io.BytesIO(png))
    assert opened.format == "PNG"
    assert not opened.getexif()
    assert set(opened.info) <= {"dpi", "gamma"}


def test_compel_weights_move_the_embedding_in_the_expected_direction(tiny_engine: Engine) -> None:
    def embedding(prompt: str) -> torch.Tensor:
        return tiny_engine.encode_prompt(prompt, "")["prompt_embeds"][0]

    plain = embedding("portrait of a person with red hair")
    # Up-weighting a word moves the embedding away from the unweighted one,
    # more for a larger weight; (word)1.0 is a no-op.
    assert torch.equal(embedding("portrait of a person with (red)1.0 hair"), plain)
    up_a_little = (embedding("portrait of a person with (red)1.2 hair") - plain).norm()
    up_a_lot = (embedding("portrait of a person with (red)1.6 hair") - plain).norm()
    plus_plus = (embedding("portrait of a person with red++ hair") - plain).norm()
    assert 0 < up_a_little < up_a_lot
    assert plus_plus > 0
    # Down-weighting moves it the other way: toward the prompt without the word.
    without_red = embedding("portrait of a person with hair")
    down = embedding("portrait of a person with (red)0.3 hair")
    assert (down - plain).norm() > 0
    assert (down[:6] - without_red[:6]).norm() < (plain[:6] - without_red[:6]).norm() + 1e-6


def test_long_prompts_are_not_truncated(tiny_engine: Engine) -> None:
    long_prompt = ", ".join(["portrait of a person with red hair and a blue hat in soft light"] * 12)
    embeds = tiny_engine.encode_prompt(long_prompt, "blurry")
    assert embeds["prompt_embeds"].shape[1] > 77
    assert embeds["prompt_embeds"].shape == embeds["negative_prompt_embeds"].shape
    tail_changed = tiny_engine.encode_prompt(long_prompt + ", green eyes", "blurry")["prompt_embeds"]
    assert not torch.equal(tail_changed[:, -77:], embeds["prompt_embeds"][:, -77:])


def test_negative_prompt_changes_the_picture(tiny_engine: Engine, selfie_bytes: bytes, monkeypatch) -> None:
    """With guidance on (quality mode, or fast mode at guidance > 1) the negative prompt acts."""
    for guided in [request(selfie_bytes, guidance=1.5), request(selfie_bytes, mode=Mode.QUALITY, steps=15)]:
        base = first_picture(tiny_engine, guided)
        style = tiny_engine.catalogue.get("anime")
        monkeypatch.setitem(tiny_engine.catalogue._styles, "anime", dataclasses.replace(style, negative_prompt="green"))
        assert np.abs(first_picture(tiny_engine, guided) - base).mean() > 0.5
        monkeypatch.undo()


def test_fast_mode_without_guidance_skips_the_negative_prompt(
    tiny_engine: Engine, selfie_bytes: bytes, monkeypatch
) -> None:
    """Guidance 1 means one UNet pass per step, so the negative prompt cannot matter (and costs nothing)."""
    unguided = request(selfie_bytes, guidance=1.0)
    base = first_picture(tiny_engine, unguided)
    style = tiny_engine.catalogue.get("anime")
    monkeypatch.setitem(tiny_engine.catalogue._styles, "anime", dataclasses.replace(style, negative_prompt="green"))
    assert np.array_equal(first_picture(tiny_engine, unguided), base)


def test_sdxl_family_runs_with_both_text_encoders_and_pooled_embeddings(
    tiny_sdxl_engine: Engine, selfie_bytes: bytes
) -> None:
    assert tiny_sdxl_engine.family == "sdxl"
    conditioning = tiny_sdxl_engine.encode_prompt("(anime)1.3 portrait of a person", "blurry")
    assert conditioning["prompt_embeds"].shape[-1] == 96  # 32 + 64: both text encoders
    assert conditioning["pooled_prompt_embeds"].shape[-1] == 32
    first = tiny_sdxl_engine.generate(request(selfie_bytes))
    again = tiny_sdxl_engine.generate(request(selfie_bytes))
    assert first.pictures[0].png == again.pictures[0].png
    unstyled = first_picture(tiny_sdxl_engine, request(selfie_bytes), overrides=ScaleOverrides(style_scale=0.0))
    assert np.abs(pixels(first.pictures[0].png) - unstyled).mean() > 1.0


def test_hotswap_mode_matches_resident_adapters(
    tiny_engine: Engine, selfie_bytes: bytes, cache_dir, catalogue, monkeypatch
) -> None:
    """The compile path's hot-swap gives the same pictures as set_adapters."""
    from engine.models import build_tiny_weights

    sources = build_tiny_weights(cache_dir / "tiny", "sd15", catalogue.names)
    swapping = Engine(
        tiny_engine_pipeline_copy(cache_dir, sources),
        "sd15",
        sources,
        catalogue,
        use_hotswap=True,
        tiny_decoder=tiny_engine.tiny_decoder,
    )
    swapping.load_adapters()
    assert swapping.has_lcm and swapping.has_portrait and swapping.style_adapters
    results = {}
    for style in ["anime", "watercolor", "anime"]:
        results.setdefault(style, []).append(first_picture(swapping, request(selfie_bytes, style=style)))
    assert np.array_equal(results["anime"][0], results["anime"][1])
    resident_anime = first_picture(tiny_engine, request(selfie_bytes, style="anime"))
    assert np.abs(results["anime"][0] - resident_anime).max() <= 2
    assert np.abs(results["watercolor"][0] - resident_anime).mean() > 1.0


def tiny_engine_pipeline_copy(cache_dir, sources):
    from engine.pipeline import load_base_pipeline

    pipeline, _ = load_base_pipeline(sources, torch.float32)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def test_a_variant_is_rendered_with_its_own_scales_and_recorded(tiny_engine: Engine, selfie_bytes: bytes) -> None:
    base = tiny_engine.generate(request(selfie_bytes))
    variant = tiny_engine.generate(request(selfie_bytes, variant="more-likeness"))
    assert (base.variant, variant.variant) == ("base", "more-likeness")
    assert (variant.scales["style_lora"], variant.scales["ip_adapter"]) == (0.7, 0.7)
    assert (base.scales["style_lora"], base.scales["ip_adapter"]) == (0.8, 0.6)
    # The tiny models move little for a 0.1 change of two scales, but they move.
    assert np.abs(pixels(variant.pictures[0].png) - pixels(base.pictures[0].png)).mean() > 0.1
    again = tiny_engine.generate(request(selfie_bytes, variant="more-likeness"))
    assert again.pictures[0].png == variant.pictures[0].png
    with pytest.raises(MmppError) as raised:
        tiny_engine.generate(request(selfie_bytes, variant="louder"))
    assert raised.value.code is ErrorCode.INVALID_REQUEST
