"""The bot and the worker refuse the same photos with the same words: both read them through :mod:`mmpp.photos`."""

from __future__ import annotations

import io
import zlib

import pytest
from PIL import Image

from bot.core.selfies import prepare_selfie
from engine.faces import decode_image
from mmpp.errors import ErrorCode, MmppError
from mmpp.photos import open_photo_header, sniff_format, to_rgb8


def _encoded(image: Image.Image, file_format: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, file_format, **options)
    return buffer.getvalue()


def _photo(size: tuple[int, int] = (128, 128)) -> Image.Image:
    return Image.new("RGB", size, (200, 120, 80))


def _animated_webp() -> bytes:
    frames = [_photo(), Image.new("RGB", (128, 128), (10, 20, 30))]
    return _encoded(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=100)


def _half_a_jpeg() -> bytes:
    """A JPEG whose header is whole and whose pixel data stops halfway: refused when decoded."""
    noisy = Image.effect_noise((256, 256), 80).convert("RGB")
    data = _encoded(noisy, "JPEG", quality=95)
    return data[: len(data) // 2]


BAD_UPLOADS = {
    "gif": (_encoded(_photo(), "GIF"), ErrorCode.NOT_AN_IMAGE, "GIF files are not accepted."),
    "pdf": (b"%PDF-1.7\n" + b"0" * 200, ErrorCode.NOT_AN_IMAGE, "PDF files are not accepted."),
    "text": (b"hello, this is not a photo at all", ErrorCode.NOT_AN_IMAGE, "not a photo we can read"),
    "cut header": (_encoded(_photo(), "JPEG")[:300], ErrorCode.NOT_AN_IMAGE, "damaged or incomplete"),
    "cut pixels": (_half_a_jpeg(), ErrorCode.NOT_AN_IMAGE, "damaged or incomplete"),
    "animated webp": (_animated_webp(), ErrorCode.NOT_AN_IMAGE, "Animated images are not accepted."),
    "too small": (_encoded(_photo((20, 200)), "PNG"), ErrorCode.IMAGE_TOO_SMALL, "20x200 pixels"),
}


@pytest.mark.parametrize("name", list(BAD_UPLOADS))
def test_bot_and_worker_refuse_alike(name: str) -> None:
    data, code, words = BAD_UPLOADS[name]
    refusals = []
    for reader in (prepare_selfie, decode_image):
        with pytest.raises(MmppError) as caught:
            reader(data)
        refusals.append((caught.value.code, str(caught.value)))
    assert refusals[0] == refusals[1], f"the bot and the worker disagree about {name}"
    assert refusals[0][0] is code
    assert words in refusals[0][1]
    assert "\n" not in refusals[0][1]


def test_header_is_refused_before_pixels_are_decoded() -> None:
    # A valid PNG header (checksum and all) that claims 30000 x 30000 pixels: refused from the header alone.
    header = _encoded(_photo((128, 128)), "PNG")
    chunk = b"IHDR" + (30000).to_bytes(4, "big") * 2 + header[24:29]
    claimed = header[:12] + chunk + zlib.crc32(chunk).to_bytes(4, "big") + header[33:]
    with pytest.raises(MmppError) as caught:
        open_photo_header(claimed)
    assert caught.value.code is ErrorCode.IMAGE_TOO_LARGE


def test_sixteen_bit_grey_is_scaled_not_clipped() -> None:
    grey = Image.new("I;16", (64, 64), 32768)  # half of the 16-bit range
    converted = to_rgb8(grey)
    assert converted.mode == "RGB"
    assert 120 <= converted.getpixel((0, 0))[0] <= 135  # clipping would give 255


def test_transparency_becomes_white() -> None:
    clear = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    assert to_rgb8(clear).getpixel((0, 0)) == (255, 255, 255)


@pytest.mark.parametrize(
    ("prefix", "name"),
    [
        (b"\x89PNG\r\n\x1a\n", "PNG"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "WEBP"),
        (b"\x00\x00\x00\x18ftypheic", "HEIC/AVIF"),
    ],
)
def test_sniff_names_the_format(prefix: bytes, name: str) -> None:
    assert sniff_format(prefix + b"\x00" * 16) == name
