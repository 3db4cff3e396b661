"""The selfie the bot keeps and sends: upright, at most 1024 px on its long side, a JPEG without metadata.

Why at order time, before the job row is written: every byte of the selfie is paid for several
times over.  It sits in SQLite until the job ends, travels through the broker as base64 inside
JSON that the Redis transport base64-encodes again (about 1.8 times its size), and a phone photo
is several MB; a burst of orders then fills a Redis that refuses writes when full.  The engine
needs far less: it finds the face on a copy of at most 800 px and paints from a face crop of at
most 512 px, so 1024 px on the long side keeps everything it uses.  The copy is made upright (the
EXIF orientation applied, as the worker would) and carries no EXIF: a selfie's camera serial and
GPS position have no business in the database or on the wire.

A photo already small, a plain JPEG and free of metadata is kept byte for byte (a re-encoding would
only lose quality); everything else is decoded once, converted to 8-bit RGB the way the worker's
decoder does (16-bit greys scaled, transparency on white), shrunk with a Lanczos filter and saved as
a quality-90 JPEG.  Large JPEGs are decoded at a reduced scale first (DCT scaling), which makes
shrinking a 12-megapixel photo cost tens of milliseconds.

The checks are the worker's own (:mod:`mmpp.photos`, the limits in :mod:`mmpp.contract`), answered here at once
with the same error codes; the worker still decodes defensively, since anyone who can reach the
broker can send it a payload.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image

from mmpp.contract import MAX_UPLOAD_BYTES, MIN_IMAGE_SIDE
from mmpp.errors import ErrorCode, MmppError
from mmpp.photos import not_an_image, open_photo_header, to_rgb8, upright

#: The long side of the copy the bot keeps and sends.
MAX_SIDE = 1024
JPEG_QUALITY = 90
#: A small JPEG up to this size is kept as sent when it carries nothing but these harmless markers.
MAX_KEPT_BYTES = 1024 * 1024
HARMLESS_JPEG_INFO = frozenset(
    {"jfif", "jfif_version", "jfif_unit", "jfif_density", "dpi", "progressive", "progression"}
    | {"adobe", "adobe_transform"}
)


@dataclass(frozen=True)
class PreparedSelfie:
    """The bytes to store and send, what they replace, and whether they are a new encoding."""

    data: bytes
    received_bytes: int
    width: int
    height: int
    reencoded: bool


def prepare_selfie(data: bytes) -> PreparedSelfie:
    """The copy of an uploaded photo that the job keeps; a one-line :class:`MmppError` if it is not one.

    CPU-bound (a decode and a resize): the core runs it in a thread.
    """
    if len(data) > MAX_UPLOAD_BYTES:
        raise MmppError(ErrorCode.IMAGE_TOO_LARGE, f"The photo is over {MAX_UPLOAD_BYTES // 2**20} MiB.")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        image = open_photo_header(data)
        keep = (
            image.format == "JPEG"
            and max(image.size) <= MAX_SIDE
            and len(data) <= MAX_KEPT_BYTES
            and image.mode in {"RGB", "L"}
            and set(image.info) <= HARMLESS_JPEG_INFO
        )
        if image.format in {"JPEG", "MPO"} and max(image.size) > MAX_SIDE:
            image.draft("RGB", (MAX_SIDE, MAX_SIDE))  # decode at 1/2, 1/4 or 1/8 scale, never below MAX_SIDE
        try:
            image.load()
        except Exception:  # noqa: BLE001 - damaged data makes decoders raise almost anything
            raise not_an_image("The photo is damaged or incomplete.") from None
    if keep:
        return PreparedSelfie(data, len(data), image.width, image.height, reencoded=False)
    rgb = to_rgb8(upright(image))
    shrunk = _shrink(rgb)
    buffer = io.BytesIO()
    shrunk.save(buffer, "JPEG", quality=JPEG_QUALITY)
    return PreparedSelfie(buffer.getvalue(), len(data), shrunk.width, shrunk.height, reencoded=True)


def _shrink(image: Image.Image) -> Image.Image:
    """At most :data:`MAX_SIDE` on the long side, never below the worker's minimum on the short one."""
    long_side, short_side = max(image.size), min(image.size)
    scale = min(1.0, max(MAX_SIDE / long_side, MIN_IMAGE_SIDE / short_side))
    if scale >= 1.0:
        return image
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
