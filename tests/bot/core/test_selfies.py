"""The copy of a selfie the bot keeps and sends (bot/core/selfies.py): upright, at most 1024 px, no EXIF, and
the same to the worker as the original; through the core, the job stores and sends the copy."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from bot.core import ChatCore
from bot.core.selfies import MAX_SIDE, prepare_selfie
from bot.storage import Storage
from mmpp.contract import GenerateRequest
from mmpp.errors import ErrorCode, MmppError
from tests.bot.conftest import ScriptedQueue, order
from tests.conftest import SAMPLE_SELFIE
from tests.images import decompression_bomb, encoded

ORIENTATION = 0x0112
GPS_INFO = 0x8825
CAMERA_MAKE = 0x010F


def marked_photo(width: int, height: int) -> Image.Image:
    """Grey with a red block in the top-left corner, so a rotation shows where the corner went."""
    image = Image.new("RGB", (width, height), (128, 128, 128))
    image.paste((255, 0, 0), (0, 0, width // 4, height // 4))
    return image


def phone_jpeg(image: Image.Image, orientation: int) -> bytes:
    """A JPEG as a phone writes it: pixels stored sideways, an orientation tag, the camera and a GPS block."""
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    exif[CAMERA_MAKE] = "PhoneMaker"
    exif.get_ifd(GPS_INFO)[2] = (52.0, 31.0, 12.0)  # latitude
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=95, exif=exif.tobytes())
    return buffer.getvalue()


def reddish(pixel: tuple[int, ...]) -> bool:
    red, green, blue = pixel[:3]
    return red > 200 and green < 60 and blue < 60


def test_a_large_sideways_phone_photo_becomes_an_upright_small_jpeg_without_exif() -> None:
    # Stored 4000x3000 with orientation 6: shown rotated 90 degrees clockwise, i.e. as a 3000x4000 portrait
    # whose top-right corner holds the stored top-left corner.
    original = phone_jpeg(marked_photo(4000, 3000), orientation=6)
    prepared = prepare_selfie(original)
    copy = Image.open(io.BytesIO(prepared.data))
    assert copy.format == "JPEG" and copy.size == (768, 1024) and (prepared.width, prepared.height) == copy.size
    assert prepared.reencoded and prepared.received_bytes == len(original) and len(prepared.data) < len(original)
    assert "exif" not in copy.info and dict(copy.getexif()) == {}
    assert reddish(copy.getpixel((copy.width - 20, 20))) and not reddish(copy.getpixel((20, 20)))


def test_what_the_worker_sees_is_kept() -> None:
    """The worker's decoder (engine/faces.py) gives the same upright picture for the copy as for the original,
    down to JPEG noise, at the copy's size."""
    from engine.faces import decode_image

    source = Image.open(SAMPLE_SELFIE).resize((2048, 2048), Image.Resampling.LANCZOS)
    original = phone_jpeg(source, orientation=3)  # upside down
    worker_view_of_original = decode_image(original).resize((1024, 1024), Image.Resampling.LANCZOS)
    worker_view_of_copy = decode_image(prepare_selfie(original).data)
    assert worker_view_of_copy.size == (1024, 1024)
    difference = [
        abs(a - b) for a, b in zip(worker_view_of_copy.tobytes(), worker_view_of_original.tobytes(), strict=True)
    ]
    assert sum(difference) / len(difference) < 3.0


@pytest.mark.parametrize(
    ("image", "kind"),
    [
        (Image.new("RGBA", (1500, 900), (0, 0, 255, 0)), "PNG"),  # transparent: white, as the worker composites it
        (Image.new("I;16", (1200, 1200), 65535), "PNG"),  # 16-bit: scaled, not clipped
        (Image.new("RGB", (2000, 1000), (10, 200, 30)), "WEBP"),
    ],
)
def test_other_formats_and_modes_become_8_bit_rgb_jpegs_as_the_worker_would_read_them(
    image: Image.Image, kind: str
) -> None:
    from engine.faces import decode_image

    copy = Image.open(io.BytesIO(prepare_selfie(encoded(image, kind)).data))
    assert copy.format == "JPEG" and copy.mode == "RGB" and max(copy.size) == MAX_SIDE
    worker = decode_image(encoded(image, kind))
    expected = worker.getpixel((worker.width // 2, worker.height // 2))
    seen = copy.getpixel((copy.width // 2, copy.height // 2))
    assert all(abs(a - b) <= 3 for a, b in zip(seen, expected, strict=True))


def test_a_small_plain_jpeg_is_kept_byte_for_byte() -> None:
    sample = SAMPLE_SELFIE.read_bytes()
    prepared = prepare_selfie(sample)
    assert prepared.data == sample and not prepared.reencoded and (prepared.width, prepared.height) == (512, 512)


def test_a_small_jpeg_with_exif_loses_it() -> None:
    original = phone_jpeg(marked_photo(600, 400), orientation=1)
    copy = Image.open(io.BytesIO(prepare_selfie(original).data))
    assert copy.size == (600, 400) and dict(copy.getexif()) == {}


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"", ErrorCode.NOT_AN_IMAGE),
        (b"Dear diary, today I sent a text file as a photo.", ErrorCode.NOT_AN_IMAGE),
        (SAMPLE_SELFIE.read_bytes()[:9000], ErrorCode.NOT_AN_IMAGE),  # truncated
        (encoded(Image.new("RGB", (100, 100)), "GIF"), ErrorCode.NOT_AN_IMAGE),
        (encoded(Image.new("RGB", (100, 100)), "BMP"), ErrorCode.NOT_AN_IMAGE),
        (encoded(Image.new("RGB", (16, 16)), "PNG"), ErrorCode.IMAGE_TOO_SMALL),
        (b"\xff\xd8\xff\xe0" + bytes(21 * 2**20), ErrorCode.IMAGE_TOO_LARGE),
    ],
)
def test_what_is_not_a_usable_photo_is_refused_in_one_line(data: bytes, code: ErrorCode) -> None:
    with pytest.raises(MmppError) as raised:
        prepare_selfie(data)
    assert raised.value.code is code and "\n" not in raised.value.message


def test_bombs_and_animations_are_refused_before_their_pixels_are_decoded() -> None:
    with pytest.raises(MmppError) as bomb:
        prepare_selfie(decompression_bomb())
    assert bomb.value.code is ErrorCode.IMAGE_TOO_LARGE
    frames = [Image.new("RGB", (100, 100), (255, 0, 0)), Image.new("RGB", (100, 100), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, "PNG", save_all=True, append_images=frames[1:])  # an animated PNG
    with pytest.raises(MmppError) as animated:
        prepare_selfie(buffer.getvalue())
    assert animated.value.code is ErrorCode.NOT_AN_IMAGE


async def test_the_job_stores_and_sends_the_small_copy(core: ChatCore, storage: Storage, queue: ScriptedQueue) -> None:
    original = phone_jpeg(marked_photo(3000, 2000), orientation=1)
    job, _ = await core.order_profile(order(photo=original))
    stored = await storage.selfie(job.id)
    assert stored is not None and Image.open(io.BytesIO(stored)).size == (1024, 683)
    await core.wait_idle(timeout=5)
    assert GenerateRequest.from_payload(queue.submitted[job.task_id]).selfie == stored


async def test_an_unreadable_photo_is_refused_before_anything_is_stored(
    core: ChatCore, storage: Storage, queue: ScriptedQueue
) -> None:
    with pytest.raises(MmppError) as raised:
        await core.order_profile(order(photo=b"\xff\xd8\xff\xe0 not really a jpeg"))
    assert raised.value.code is ErrorCode.NOT_AN_IMAGE and "\n" not in raised.value.message
    assert await storage.count("jobs") == 0 and not queue.submitted
