"""Upscales on the tiny weights: a picture painted again at twice its size by an image-to-image pass.

Each test compares against the part switched off or changed (the style's scale, the seed, the
strength), so an upscale that ignored its style, seed or source would fail here.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from engine.pipeline import Engine, ScaleOverrides
from engine.tasks import run_job
from mmpp.contract import GenerateRequest, GenerateResult, Mode
from mmpp.errors import ErrorCode, MmppError


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)


@pytest.fixture(scope="module")
def source(tiny_engine: Engine, selfie_bytes: bytes) -> bytes:
    """A picture as the worker paints it (quality mode, like most orders), the input of every upscale here."""
    job = GenerateRequest(selfie=selfie_bytes, style="anime", mode=Mode.QUALITY, steps=15, seed=11)
    return tiny_engine.generate(job).pictures[0].png


def upscale(source: bytes, **fields: object) -> GenerateRequest:
    defaults: dict[str, object] = {"style": "anime", "seed": 11, "steps": 15}
    defaults.update(fields)
    return GenerateRequest(selfie=b"", upscale_source=source, **defaults)  # type: ignore[arg-type]


def test_an_upscale_is_exactly_twice_the_size_and_keeps_the_picture(tiny_engine: Engine, source: bytes) -> None:
    result = tiny_engine.generate(upscale(source))
    original = Image.open(io.BytesIO(source))
    doubled = Image.open(io.BytesIO(result.pictures[0].png))
    assert doubled.format == "PNG"
    assert doubled.size == (original.width * 2, original.height * 2)
    assert result.mode == "quality" and result.pictures[0].seed == 11
    # The picture is where the pass starts: another picture, the same seed, gives another double.  (How close
    # the double stays to its source cannot be judged here: the tiny autoencoder is random, no autoencoder.)
    flipped = io.BytesIO()
    original.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(flipped, "PNG")
    other = tiny_engine.generate(upscale(flipped.getvalue())).pictures[0].png
    assert np.abs(pixels(other) - pixels(result.pictures[0].png)).mean() > 0.5


def test_the_same_seed_gives_the_same_pixels_and_another_seed_others(tiny_engine: Engine, source: bytes) -> None:
    first = tiny_engine.generate(upscale(source)).pictures[0].png
    second = tiny_engine.generate(upscale(source)).pictures[0].png
    assert first == second
    other = tiny_engine.generate(upscale(source, seed=12)).pictures[0].png
    assert np.abs(pixels(other) - pixels(first)).mean() > 0.5


def test_the_style_scale_is_applied_to_the_upscale(tiny_engine: Engine, source: bytes) -> None:
    styled = pixels(tiny_engine.generate(upscale(source)).pictures[0].png)
    unstyled = tiny_engine.generate(upscale(source), overrides=ScaleOverrides(style_scale=0.0))
    assert unstyled.scales["style_lora"] == 0.0
    assert np.abs(styled - pixels(unstyled.pictures[0].png)).mean() > 0.5


def test_the_picture_feeds_the_ip_adapter(tiny_engine: Engine, source: bytes) -> None:
    """Without a selfie (it may be gone), the identity comes from the picture: its strength still counts."""
    with_identity = pixels(tiny_engine.generate(upscale(source)).pictures[0].png)
    without = tiny_engine.generate(upscale(source), overrides=ScaleOverrides(ip_adapter_scale=0.0))
    assert np.abs(with_identity - pixels(without.pictures[0].png)).mean() > 0.2


def test_strength_sets_the_painted_steps_and_progress_counts_them(
    tiny_engine: Engine, source: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    reports: list[tuple[int, int]] = []
    weak = tiny_engine.generate(upscale(source, steps=20), lambda done, total: reports.append((done, total)))
    assert reports[-1] == (6, 6)  # int(20 * 0.3): diffusers skips the first 70 % of the schedule
    monkeypatch.setattr(tiny_engine, "upscale_strength", 0.9)
    reports.clear()
    strong = tiny_engine.generate(upscale(source, steps=20), lambda done, total: reports.append((done, total)))
    assert reports[-1] == (18, 18)
    assert np.abs(pixels(strong.pictures[0].png) - pixels(weak.pictures[0].png)).mean() > 0.5


def test_the_img2img_pipeline_shares_the_loaded_components(tiny_engine: Engine, source: bytes) -> None:
    tiny_engine.generate(upscale(source))
    image_to_image = tiny_engine.image_to_image_pipeline()
    assert image_to_image.unet is tiny_engine.pipeline.unet
    assert image_to_image.text_encoder is tiny_engine.pipeline.text_encoder
    assert image_to_image.vae is tiny_engine.full_vae
    assert image_to_image is tiny_engine.image_to_image_pipeline()


def test_an_upscale_leaves_nothing_behind_for_the_next_job(
    tiny_engine: Engine, selfie_bytes: bytes, source: bytes
) -> None:
    """The img2img pipeline shares the engine's components: a fast job (LCM, tiny decoder) before and after an
    upscale paints the same pixels, and so does the upscale after a job in another style."""
    fast = GenerateRequest(selfie=selfie_bytes, style="watercolor", mode=Mode.FAST, steps=4, seed=2)
    before = tiny_engine.generate(fast).pictures[0].png
    first_upscale = tiny_engine.generate(upscale(source)).pictures[0].png
    assert tiny_engine.generate(fast).pictures[0].png == before
    assert tiny_engine.generate(upscale(source)).pictures[0].png == first_upscale


def test_the_hotswap_path_upscales_as_the_resident_adapters_do(
    tiny_engine: Engine, source: bytes, cache_dir, catalogue
) -> None:
    """Under torch.compile the LoRAs are hot-swapped into fixed slots of the shared UNet; the upscale sees them."""
    from engine.models import build_tiny_weights
    from tests.engine.test_pipeline import tiny_engine_pipeline_copy

    sources = build_tiny_weights(cache_dir / "tiny", "sd15", catalogue.names)
    swapping = Engine(
        tiny_engine_pipeline_copy(cache_dir, sources), "sd15", sources, catalogue, use_hotswap=True,
        tiny_decoder=tiny_engine.tiny_decoder,
    )  # fmt: skip
    swapping.load_adapters()
    swapped = pixels(swapping.generate(upscale(source)).pictures[0].png)
    resident = pixels(tiny_engine.generate(upscale(source)).pictures[0].png)
    assert np.abs(swapped - resident).max() <= 2
    unstyled = swapping.generate(upscale(source), overrides=ScaleOverrides(style_scale=0.0)).pictures[0].png
    assert np.abs(pixels(unstyled) - swapped).mean() > 0.5


def test_an_sdxl_upscale_is_twice_the_size(tiny_sdxl_engine: Engine, selfie_bytes: bytes) -> None:
    job = GenerateRequest(selfie=selfie_bytes, style="anime", mode=Mode.QUALITY, steps=15, seed=3)
    picture = tiny_sdxl_engine.generate(job).pictures[0].png
    doubled = tiny_sdxl_engine.generate(upscale(picture, seed=3)).pictures[0].png
    width, height = Image.open(io.BytesIO(picture)).size
    assert Image.open(io.BytesIO(doubled)).size == (2 * width, 2 * height)
    assert tiny_sdxl_engine.image_to_image_pipeline().text_encoder_2 is tiny_sdxl_engine.pipeline.text_encoder_2


def png_header(width: int, height: int) -> bytes:
    """A PNG that claims a size in its header: the contract must refuse it before anything is decoded."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + header
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(header)) + chunk + struct.pack(">I", zlib.crc32(chunk))


@pytest.mark.parametrize(
    ("data", "fields", "code"),
    [
        (b"GIF89a-not-a-png-at-all-really", {}, ErrorCode.NOT_AN_IMAGE),
        (png_header(4096, 4096), {}, ErrorCode.IMAGE_TOO_LARGE),
        (png_header(100, 100), {}, ErrorCode.INVALID_REQUEST),
        (png_header(64, 64), {"count": 2}, ErrorCode.INVALID_REQUEST),
        (png_header(64, 64), {"seed": None}, ErrorCode.INVALID_REQUEST),
        (png_header(64, 64), {}, ErrorCode.NOT_AN_IMAGE),  # the header passes, the pixels are missing
    ],
)
def test_a_bad_source_is_refused_with_its_code(
    tiny_engine: Engine, data: bytes, fields: dict[str, object], code: ErrorCode
) -> None:
    with pytest.raises(MmppError) as raised:
        tiny_engine.generate(upscale(data, **fields))
    assert raised.value.code is code


def test_the_worker_task_round_trips_an_upscale(
    tiny_engine: Engine, source: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the payload the bot sends and the task body the worker runs (base64 both ways)."""
    import engine.tasks

    monkeypatch.setattr(engine.tasks, "_engine", tiny_engine)
    result = GenerateResult.from_payload(run_job(upscale(source).to_payload(), "upscale-1"))
    assert result.ok, result.error_message
    assert Image.open(io.BytesIO(result.pictures[0].png)).size == (128, 128)
    refused = GenerateResult.from_payload(run_job({**upscale(source).to_payload(), "upscale_source_b64": "!!"}, "x"))
    assert refused.error_code is ErrorCode.NOT_AN_IMAGE
