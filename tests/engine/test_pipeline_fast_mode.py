"""Fast mode as it really runs: the scheduler, steps, guidance, batch and decoder that ``generate`` uses.

Each test watches the pipeline while ``Engine.generate`` runs (forward hooks on
the UNet, the decoders and the image encoder), so a fast mode that silently got
the quality scheduler, ran guidance it should not, painted pictures one call
at a time or decoded with the wrong VAE would fail here.
"""

from __future__ import annotations

import dataclasses
import io
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
from PIL import Image

from engine.pipeline import PREVIEW_SIDE, Engine, ScaleOverrides
from mmpp.contract import GenerateRequest, Mode
from tests.engine.conftest import make_settings


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)


def request(selfie: bytes, **fields: Any) -> GenerateRequest:
    defaults: dict[str, Any] = {"style": "anime", "seed": 11}
    defaults.update(fields)
    return GenerateRequest(selfie=selfie, **defaults)


@dataclasses.dataclass
class Observed:
    unet_batches: list[int] = dataclasses.field(default_factory=list)
    schedulers: set[str] = dataclasses.field(default_factory=set)
    guidance: set[float] = dataclasses.field(default_factory=set)
    tiny_decodes: int = 0
    full_decodes: int = 0
    face_encodings: int = 0


@contextmanager
def watching(engine: Engine) -> Iterator[Observed]:
    seen = Observed()
    pipeline = engine.pipeline

    def on_unet(module: Any, args: Any, kwargs: Any) -> None:
        sample = args[0] if args else kwargs["sample"]
        seen.unet_batches.append(int(sample.shape[0]))
        seen.schedulers.add(type(pipeline.scheduler).__name__)
        seen.guidance.add(float(pipeline.guidance_scale))

    def count(attribute: str) -> Any:
        def hook(*_: Any) -> None:
            setattr(seen, attribute, getattr(seen, attribute) + 1)

        return hook

    handles = [pipeline.unet.register_forward_pre_hook(on_unet, with_kwargs=True)]
    original_tiny = engine.tiny_decoder.decode if engine.tiny_decoder is not None else None
    original_full = engine.full_vae.decode

    def tiny_decode(*args: Any, **kwargs: Any) -> Any:
        seen.tiny_decodes += 1
        return original_tiny(*args, **kwargs)

    def full_decode(*args: Any, **kwargs: Any) -> Any:
        seen.full_decodes += 1
        return original_full(*args, **kwargs)

    if engine.tiny_decoder is not None:
        engine.tiny_decoder.decode = tiny_decode
    engine.full_vae.decode = full_decode
    if pipeline.image_encoder is not None:
        handles.append(pipeline.image_encoder.register_forward_pre_hook(count("face_encodings")))
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()
        if engine.tiny_decoder is not None:
            del engine.tiny_decoder.decode
        del engine.full_vae.decode


def test_fast_mode_is_lcm_four_steps_without_guidance_and_the_tiny_decoder(
    tiny_engine: Engine, selfie_bytes: bytes
) -> None:
    assert tiny_engine.tiny_decoder is not None, "the tiny weights must include an AutoencoderTiny"
    with watching(tiny_engine) as seen:
        result = tiny_engine.generate(request(selfie_bytes, mode=Mode.FAST))
    assert result.steps == 4 and result.guidance == 1.0
    assert seen.schedulers == {"LCMScheduler"}
    assert seen.guidance == {1.0}
    assert seen.unet_batches == [1] * 4, "guidance 1 runs the UNet once per step, on one picture"
    assert (seen.tiny_decodes, seen.full_decodes) == (1, 0)


def test_quality_mode_keeps_guidance_its_scheduler_and_the_full_vae(tiny_engine: Engine, selfie_bytes: bytes) -> None:
    with watching(tiny_engine) as seen:
        result = tiny_engine.generate(request(selfie_bytes, style="headshot", count=2, steps=15))
    assert result.mode == "quality" and result.guidance == 6.0
    assert seen.schedulers == {"DPMSolverMultistepScheduler"}
    assert seen.guidance == {6.0}
    assert seen.unet_batches == [4] * 15, "two pictures, each with its negative pass: batch 4, one call per step"
    assert (seen.tiny_decodes, seen.full_decodes) == (0, 1)


def test_a_style_that_needs_its_negative_prompt_runs_fast_mode_with_guidance(
    tiny_engine: Engine, selfie_bytes: bytes
) -> None:
    with watching(tiny_engine) as seen:
        tiny_engine.generate(request(selfie_bytes, style="pencil-sketch", mode=Mode.FAST))
    assert seen.guidance == {1.5} and seen.unet_batches == [2] * 4


def test_a_job_is_one_batched_call_with_one_face_embedding(tiny_engine: Engine, selfie_bytes: bytes) -> None:
    with watching(tiny_engine) as one:
        tiny_engine.generate(request(selfie_bytes, count=1, seed=40))
    with watching(tiny_engine) as seen:
        result = tiny_engine.generate(request(selfie_bytes, count=3, seed=40))
    assert seen.unet_batches == [3] * 4
    # One pass of the image encoder a job, whatever the count (the blank face of guidance is cached).
    assert seen.face_encodings == one.face_encodings == 1, "the IP-Adapter embedding is computed once per job"
    assert seen.tiny_decodes == 1
    assert [picture.seed for picture in result.pictures] == [40, 41, 42]
    assert len({picture.png for picture in result.pictures}) == 3
    again = tiny_engine.generate(request(selfie_bytes, count=3, seed=40))
    assert [picture.png for picture in again.pictures] == [picture.png for picture in result.pictures]


def test_each_picture_of_a_batch_comes_from_its_own_seed(tiny_engine: Engine, selfie_bytes: bytes) -> None:
    """The batch changes nothing about a picture but floating-point rounding: same seed, same picture."""
    batch = tiny_engine.generate(request(selfie_bytes, count=3, seed=40))
    alone = tiny_engine.generate(request(selfie_bytes, count=1, seed=42))
    difference = np.abs(pixels(batch.pictures[2].png) - pixels(alone.pictures[0].png))
    assert difference.max() <= 2
    other = tiny_engine.generate(request(selfie_bytes, count=1, seed=43))
    assert np.abs(pixels(other.pictures[0].png) - pixels(alone.pictures[0].png)).mean() > 1


def test_the_batch_size_limit_splits_larger_jobs(
    tiny_engine: Engine, selfie_bytes: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = tiny_engine.generate(request(selfie_bytes, count=3, seed=5))
    monkeypatch.setattr(tiny_engine, "max_batch_size", 2)
    progress: list[tuple[int, int]] = []
    with watching(tiny_engine) as seen:
        split = tiny_engine.generate(request(selfie_bytes, count=3, seed=5), lambda d, t: progress.append((d, t)))
    assert seen.unet_batches == [2] * 4 + [1] * 4
    assert seen.face_encodings == 1, "one face embedding for both calls"
    assert progress == [(step, 8) for step in range(1, 9)]
    assert [picture.seed for picture in split.pictures] == [5, 6, 7]
    for mine, theirs in zip(split.pictures, whole.pictures, strict=True):
        assert np.abs(pixels(mine.png) - pixels(theirs.png)).max() <= 2


def test_the_face_embedding_is_diffusers_own_and_the_blank_face_is_encoded_once(
    tiny_engine: Engine, selfie_bytes: bytes
) -> None:
    """Our once-per-job embedding equals diffusers' ``prepare_ip_adapter_image_embeds``, with and without guidance."""
    import torch

    crop = tiny_engine.face_analyzer.prepare_selfie(selfie_bytes).crop
    for job in [request(selfie_bytes, mode=Mode.FAST), request(selfie_bytes, style="headshot", steps=15)]:
        plan = tiny_engine.plan(job)
        ours = tiny_engine.encode_face(crop, plan.classifier_free_guidance)["ip_adapter_image_embeds"]
        with torch.inference_mode():
            theirs = tiny_engine.pipeline.prepare_ip_adapter_image_embeds(
                crop, None, tiny_engine.pipeline.device, 1, plan.classifier_free_guidance
            )
        assert len(ours) == len(theirs) == 1 and ours[0].shape == theirs[0].shape
        assert torch.equal(ours[0], theirs[0])
    with watching(tiny_engine) as seen:
        tiny_engine.generate(request(selfie_bytes, style="headshot", steps=15))
    assert seen.face_encodings == 1, "with guidance too: the blank face comes from the cache"


def test_two_non_zero_style_scales_give_different_pictures_the_larger_further_from_zero(
    tiny_engine: Engine, selfie_bytes: bytes
) -> None:
    def picture(scale: float) -> np.ndarray:
        job = request(selfie_bytes)
        return pixels(tiny_engine.generate(job, overrides=ScaleOverrides(style_scale=scale)).pictures[0].png)

    zero, half, full = picture(0.0), picture(0.5), picture(1.5)
    assert np.abs(half - full).mean() > 0.5
    assert np.abs(full - zero).mean() > np.abs(half - zero).mean() + 0.5


def test_without_the_tiny_decoder_fast_mode_uses_the_full_vae_with_one_log_line(
    cache_dir: Any, catalogue: Any, selfie_bytes: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    from engine.models import WeightSource, build_tiny_weights

    sources = build_tiny_weights(cache_dir / "tiny", "sd15", catalogue.names)
    missing = dataclasses.replace(sources, tiny_decoder=WeightSource(str(cache_dir / "no-such-taesd")))
    with caplog.at_level(logging.INFO, logger="engine.pipeline"):
        engine = Engine.from_sources(missing, catalogue, make_settings(cache_dir))
    lines = [record for record in caplog.records if "tiny decoder" in record.getMessage()]
    assert len(lines) == 1 and "full VAE" in lines[0].getMessage()
    assert engine.tiny_decoder is None
    previews: list[bytes] = []
    with watching(engine) as seen:
        result = engine.generate(
            request(selfie_bytes, mode=Mode.FAST), on_preview=lambda d, t, jpeg: previews.append(jpeg)
        )
    assert result.ok and (seen.tiny_decodes, seen.full_decodes) == (0, 1)
    assert previews == [], "previews need the tiny decoder"


def test_previews_are_small_jpegs_and_change_nothing_else(
    tiny_engine: Engine, selfie_bytes: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tiny_engine, "preview_every_steps", 2)
    monkeypatch.setattr(tiny_engine, "preview_min_seconds", 0.0)
    job = request(selfie_bytes, mode=Mode.FAST, steps=8, count=2)
    without = tiny_engine.generate(job)
    previews: list[tuple[int, int, bytes]] = []
    with_previews = tiny_engine.generate(job, on_preview=lambda done, total, jpeg: previews.append((done, total, jpeg)))
    assert [(done, total) for done, total, _ in previews] == [(2, 8), (4, 8), (6, 8)]
    for _, _, jpeg in previews:
        image = Image.open(io.BytesIO(jpeg))
        assert image.format == "JPEG" and max(image.size) <= PREVIEW_SIDE and len(jpeg) <= 30_000
    assert [p.png for p in with_previews.pictures] == [p.png for p in without.pictures]
    assert with_previews.timings["preview"] > 0 and "preview" not in without.timings


def test_previews_are_throttled_by_time(tiny_engine: Engine, selfie_bytes: bytes, monkeypatch) -> None:
    monkeypatch.setattr(tiny_engine, "preview_every_steps", 1)
    monkeypatch.setattr(tiny_engine, "preview_min_seconds", 3600.0)
    previews: list[int] = []
    tiny_engine.generate(request(selfie_bytes, steps=8), on_preview=lambda done, total, jpeg: previews.append(done))
    assert previews == []


def test_a_failing_preview_never_fails_the_job(tiny_engine: Engine, selfie_bytes: bytes, monkeypatch) -> None:
    monkeypatch.setattr(tiny_engine, "preview_min_seconds", 0.0)

    def broken(done: int, total: int, jpeg: bytes) -> None:
        raise ConnectionError("the result backend went away")

    expected = tiny_engine.generate(request(selfie_bytes, steps=6))
    result = tiny_engine.generate(request(selfie_bytes, steps=6), on_preview=broken)
    assert result.ok and result.pictures[0].png == expected.pictures[0].png


@pytest.mark.slow
def test_torch_compile_runs_for_real_without_recompiling_and_matches_eager(
    cache_dir: Any, catalogue: Any, selfie_bytes: bytes, tiny_engine: Engine
) -> None:
    """The seed project's open problem: the UNet compiled (gcc on CPU), then styles, counts and modes switch freely.

    Recompilation is made an error after start-up, so any guard that a style
    switch, a batch size or an IP-Adapter strength would trip fails the test.
    """
    import torch
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    compiled = Engine.from_settings(make_settings(cache_dir, compile=True), weights="tiny", catalogue=catalogue)
    assert compiled.compiled and compiled.use_hotswap
    graphs_after_start = counters["stats"]["unique_graphs"]
    assert graphs_after_start > 0, "nothing was compiled"
    jobs = [
        request(selfie_bytes, style="anime", count=1),
        request(selfie_bytes, style="watercolor", count=2),
        request(selfie_bytes, style="pixel-art", count=1),
        request(selfie_bytes, style="headshot", count=1, steps=15),
        request(selfie_bytes, style="anime", count=2),
    ]
    results = []
    with torch._dynamo.config.patch(error_on_recompile=True):
        for job in jobs:
            results.append(compiled.generate(job))
    assert counters["stats"]["unique_graphs"] == graphs_after_start, "a job compiled a new graph"
    # Compiled kernels fuse and reorder floating-point work: equal within a few grey levels.
    for job, result in zip(jobs, results, strict=True):
        eager = tiny_engine.generate(job)
        for mine, theirs in zip(result.pictures, eager.pictures, strict=True):
            assert mine.seed == theirs.seed
            assert np.abs(pixels(mine.png) - pixels(theirs.png)).mean() <= 2.0
    torch._dynamo.reset()
