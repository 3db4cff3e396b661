"""Reading an uploaded photo's header and pixels the same way on both sides of the queue.

The bot checks a selfie when it is ordered, so a person hears at once what is wrong with it; the
worker checks it again, because anyone who can reach the broker can send it a payload.  Both must
refuse the same files with the same codes and convert the pixels the same way (the bot keeps a copy
that shows the worker what the original would), so the checks live here, once, with Pillow only:
the bot installs no numpy or torch.
"""

from __future__ import annotations

import io

from PIL import Image, ImageOps, UnidentifiedImageError

from mmpp.contract import ACCEPTED_PHOTO_TYPES, MAX_IMAGE_PIXELS, MIN_IMAGE_SIDE, accepted_photos_text
from mmpp.errors import ErrorCode, MmppError

#: Pillow format names we decode.  Everything else is refused before a decoder for it runs,
#: which also keeps rarely used (and historically buggy) Pillow plugins away from uploads.
#: A JPEG with extra pictures appended (MPO, written by many phones) opens through the JPEG
#: plugin under the format name "MPO" and is accepted as the still photo it is.
ACCEPTED_FORMATS = tuple(photo.pillow_format for photo in ACCEPTED_PHOTO_TYPES)
_HIGH_BIT_DEPTH = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})
_WITH_ALPHA = frozenset({"RGBA", "LA", "La", "RGBa", "PA"})
_ORIENTATION_TAG = 0x0112
_SIGNATURES = {
    b"\xff\xd8\xff": "JPEG",
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"GIF87a": "GIF",
    b"GIF89a": "GIF",
    b"BM": "BMP",
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
    b"%PDF": "PDF",
}


def not_an_image(detail: str = "") -> MmppError:
    """The one-line refusal of a file that is no photo we read, naming what we do read."""
    prefix = f"{detail} " if detail else "The file is not a photo we can read. "
    return MmppError(ErrorCode.NOT_AN_IMAGE, f"{prefix}Send a still {accepted_photos_text()} photo.")


def too_many_pixels(size: tuple[int, int]) -> MmppError:
    width, height = size
    return MmppError(
        ErrorCode.IMAGE_TOO_LARGE,
        f"The photo is {width}x{height} pixels; the limit is {MAX_IMAGE_PIXELS / 1e6:.0f} megapixels.",
    )


def sniff_format(data: bytes) -> str | None:
    """The format named by the file's magic bytes, so a refusal can say what the file was."""
    for magic, name in _SIGNATURES.items():
        if data.startswith(magic):
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[4:8] == b"ftyp" and data[8:12] in (b"heic", b"heix", b"mif1", b"msf1", b"hevc", b"avif"):
        return "HEIC/AVIF"
    return None


def open_photo_header(data: bytes) -> Image.Image:
    """The photo opened lazily, refused by format, animation and pixel count before any pixel is decoded.

    Callers run this inside ``warnings.catch_warnings`` with ``DecompressionBombWarning`` made an
    error, so Pillow's own guard stays on as a second line behind the explicit pixel check.
    """
    try:
        image = Image.open(io.BytesIO(data), formats=list(ACCEPTED_FORMATS))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise MmppError(
            ErrorCode.IMAGE_TOO_LARGE,
            f"The photo has too many pixels; the limit is {MAX_IMAGE_PIXELS / 1e6:.0f} megapixels.",
        ) from None
    except UnidentifiedImageError:
        sniffed = sniff_format(data)
        if sniffed in ACCEPTED_FORMATS:
            raise not_an_image("The photo is damaged or incomplete.") from None
        if sniffed:
            raise not_an_image(f"{sniffed} files are not accepted.") from None
        raise not_an_image() from None
    except Exception:  # noqa: BLE001 - a damaged header raises SyntaxError, struct.error, ...
        raise not_an_image("The photo is damaged or incomplete.") from None
    # MPO (a JPEG with a depth map or preview appended, written by many phones) is a still photo.
    if image.format != "MPO" and (getattr(image, "is_animated", False) or getattr(image, "n_frames", 1) > 1):
        raise not_an_image("Animated images are not accepted.")
    width, height = image.size
    if width * height > MAX_IMAGE_PIXELS:
        raise too_many_pixels(image.size)
    if min(width, height) < MIN_IMAGE_SIDE:
        raise MmppError(
            ErrorCode.IMAGE_TOO_SMALL,
            f"The photo is {width}x{height} pixels; each side needs at least {MIN_IMAGE_SIDE}.",
        )
    return image


def to_rgb8(image: Image.Image) -> Image.Image:
    """8-bit RGB from any mode Pillow gives for our formats, without losing contrast.

    16- and 32-bit greys are scaled to 0..255 (Pillow's ``convert`` would clip them, turning a
    16-bit photo almost white); transparency is composited on white, because a transparent
    background usually means "no background" and black would darken the face crop.
    """
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in _HIGH_BIT_DEPTH:
        wide = image.convert("I") if mode.startswith("I;16") else image
        highest = wide.getextrema()[1]
        brightest = float(highest) if isinstance(highest, int | float) else 0.0
        top = 65535.0 if mode.startswith("I;16") or brightest > 255 else 255.0
        return wide.point(lambda value: value * (255.0 / top)).convert("L").convert("RGB")
    if mode in _WITH_ALPHA or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def upright(image: Image.Image) -> Image.Image:
    """The EXIF orientation applied: phones store portraits sideways and say so in a tag."""
    try:
        orientation = image.getexif().get(_ORIENTATION_TAG, 1)
        return ImageOps.exif_transpose(image) if orientation != 1 else image
    except Exception:  # noqa: BLE001 - a broken EXIF block is no reason to refuse the pixels
        return image
