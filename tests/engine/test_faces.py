"""Tests for engine/faces.py: upload decoding, face choice, alignment, crop and embedding.

Real dlib models and real photographs (scikit-image's public-domain samples) are used
throughout: the rules under test (which detection is a face, how large is "similar") are
only meaningful against the real detector.  The analyzer loads once per module.
"""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.faces import (
    CONFIDENT_FACE_SCORE,
    SAME_PERSON_DISTANCE,
    SIMILAR_FACE_AREA_RATIO,
    DetectedFace,
    FaceAnalyzer,
    FaceBox,
    decode_image,
    default_analyzer,
)
from mmpp.contract import MAX_UPLOAD_BYTES
from mmpp.errors import ErrorCode, MmppError

skimage_data = pytest.importorskip("skimage.data")

SAMPLE_SELFIE = Path(__file__).resolve().parents[2] / "engine" / "assets" / "sample_selfie.jpg"
#: Where dlib's detector sees the cameraman's (three-quarter profile) face in
#: ``skimage.data.camera()``: found only below dlib's default threshold (score -0.46), so the
#: box is given by hand to obtain a second, different person's embedding.
CAMERAMAN_FACE = FaceBox(left=205, top=125, right=278, bottom=198)


# --------------------------------------------------------------------------- helpers
def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def refused(data: bytes) -> MmppError:
    with pytest.raises(MmppError) as caught:
        decode_image(data)
    return caught.value


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def blank_bilevel_png(width: int, height: int) -> bytes:
    """A valid, all-black 1-bit PNG built row by row: huge in pixels, small in bytes."""
    row = b"\x00" * (1 + (width + 7) // 8)
    compressor = zlib.compressobj(9)
    stream = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", stream) + png_chunk(b"IEND", b"")


def mirrored(image: Image.Image) -> Image.Image:
    return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)


# -------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def analyzer() -> FaceAnalyzer:
    face_analyzer = FaceAnalyzer()
    face_analyzer.load()
    return face_analyzer


@pytest.fixture(scope="module")
def astronaut() -> Image.Image:
    return Image.fromarray(skimage_data.astronaut())


@pytest.fixture(scope="module")
def head(astronaut: Image.Image) -> Image.Image:
    """The astronaut's head enlarged to 390 px, so two fit side by side below 800 px."""
    return astronaut.crop((110, 10, 340, 240)).resize((390, 390), Image.Resampling.LANCZOS)


def side_by_side(left: Image.Image, right: Image.Image) -> Image.Image:
    canvas = Image.new("RGB", (800, 400), (200, 200, 200))
    canvas.paste(left, (0, 5))
    canvas.paste(right, (400, 5))
    return canvas


# ------------------------------------------------------------------ face detection
def test_astronaut_gives_one_face_and_a_square_crop_of_the_asked_size(
    analyzer: FaceAnalyzer, astronaut: Image.Image
) -> None:
    face = analyzer.pick_face(astronaut)
    # The face (not the false hit on the suit, lower down) is in the upper half.
    assert 150 < face.box.center[0] < 290 and face.box.center[1] < 200
    assert face.box.score >= CONFIDENT_FACE_SCORE
    assert len(face.landmarks) == 5
    for x, y in face.landmarks:
        assert face.box.left - 10 <= x <= face.box.right + 10 and face.box.top - 10 <= y <= face.box.bottom + 10
    for size in (512, 300):
        crop = analyzer.crop(astronaut, face, size=size)
        assert crop.size == (size, size) and crop.mode == "RGB"


def test_crop_frames_the_whole_head_in_the_centre(analyzer: FaceAnalyzer, astronaut: Image.Image) -> None:
    crop = analyzer.crop(astronaut, analyzer.pick_face(astronaut), size=512)
    [inner] = [box for box in analyzer.detect(crop) if box.score >= CONFIDENT_FACE_SCORE]
    # dlib's box spans brows to chin; with hair, ears and neck around it, it should cover
    # roughly a third to a half of the crop's width, centred horizontally.
    assert 0.3 < inner.width / 512 < 0.6
    assert abs(inner.center[0] - 256) < 40
    # dlib's box ends about at the chin: a fifth of the crop above it is left for hair,
    # and some neck shows below it.
    assert inner.top > 0.2 * 512 and inner.bottom < 0.9 * 512


def test_crop_levels_a_tilted_face(analyzer: FaceAnalyzer, astronaut: Image.Image) -> None:
    upright = analyzer.pick_face(astronaut).roll_degrees
    tilted_image = astronaut.rotate(20, resample=Image.Resampling.BICUBIC, fillcolor=(128, 128, 128))
    tilted = analyzer.pick_face(tilted_image)
    # Pillow rotates counter-clockwise, which raises the eye on the image's right.
    assert tilted.roll_degrees == pytest.approx(upright - 20, abs=3)
    crop = analyzer.crop(tilted_image, tilted, size=512)
    assert abs(analyzer.pick_face(crop).roll_degrees) < 3


def test_crop_pads_where_the_square_leaves_the_photo(analyzer: FaceAnalyzer, astronaut: Image.Image) -> None:
    near_top_left = astronaut.crop((150, 60, 512, 512))
    face = analyzer.pick_face(near_top_left)
    filled = np.asarray(analyzer.crop(near_top_left, face, size=256, fill=(0, 255, 0)))
    assert tuple(filled[0, 0]) == (0, 255, 0)
    edge = np.asarray(analyzer.crop(near_top_left, face, size=256))
    assert edge.shape == (256, 256, 3)
    # The default fill continues the photo instead of painting a colour block.
    assert tuple(edge[0, 0]) != (0, 255, 0)
    assert np.abs(edge[0, 0].astype(int) - np.asarray(near_top_left)[0, 0].astype(int)).max() < 80


@pytest.mark.parametrize("kind", ["coffee", "flat"])
def test_photo_without_a_face_is_refused(analyzer: FaceAnalyzer, kind: str) -> None:
    image = Image.fromarray(skimage_data.coffee()) if kind == "coffee" else Image.new("RGB", (400, 300), (90, 140, 90))
    with pytest.raises(MmppError) as caught:
        analyzer.pick_face(image)
    assert caught.value.code is ErrorCode.NO_FACE
    assert "front-facing selfie" in caught.value.message


def test_two_faces_of_the_same_size_are_refused(analyzer: FaceAnalyzer, head: Image.Image) -> None:
    with pytest.raises(MmppError) as caught:
        analyzer.pick_face(side_by_side(head, mirrored(head)))
    assert caught.value.code is ErrorCode.MULTIPLE_FACES


def test_a_slightly_smaller_second_face_is_still_ambiguous(analyzer: FaceAnalyzer, head: Image.Image) -> None:
    smaller = mirrored(head).resize((312, 312), Image.Resampling.LANCZOS)  # 0.8 of the side
    image = side_by_side(head, smaller)
    areas = sorted((box.area for box in analyzer.detect(image) if box.score >= CONFIDENT_FACE_SCORE), reverse=True)
    assert len(areas) == 2 and areas[1] / areas[0] >= SIMILAR_FACE_AREA_RATIO
    with pytest.raises(MmppError) as caught:
        analyzer.pick_face(image)
    assert caught.value.code is ErrorCode.MULTIPLE_FACES


def test_a_much_smaller_second_face_is_ignored_and_the_largest_is_used(
    analyzer: FaceAnalyzer, head: Image.Image
) -> None:
    bystander = mirrored(head).resize((234, 234), Image.Resampling.LANCZOS)  # 0.6 of the side
    image = side_by_side(head, bystander)
    confident = [box for box in analyzer.detect(image) if box.score >= CONFIDENT_FACE_SCORE]
    assert len(confident) == 2, "the bystander must be detected for this test to mean anything"
    face = analyzer.pick_face(image)
    assert face.box.right <= 400
    assert face.box.area == max(box.area for box in confident)


def test_the_false_face_on_the_suit_is_not_a_second_face(analyzer: FaceAnalyzer, astronaut: Image.Image) -> None:
    # At 384 px dlib reports the suit as a face exactly as large as the real one.
    image = astronaut.resize((384, 384), Image.Resampling.LANCZOS)
    boxes = analyzer.detect(image)
    weak = [box for box in boxes if box.score < CONFIDENT_FACE_SCORE]
    strong = [box for box in boxes if box.score >= CONFIDENT_FACE_SCORE]
    assert len(weak) == 1 and len(strong) == 1
    assert weak[0].area >= SIMILAR_FACE_AREA_RATIO * strong[0].area and weak[0].top > strong[0].bottom
    assert analyzer.pick_face(image).box == strong[0]


def test_choice_rules_on_synthetic_boxes(analyzer: FaceAnalyzer) -> None:
    def box(side: int, score: float, left: int = 0) -> FaceBox:
        return FaceBox(left, 0, left + side, side, score)

    main = box(100, 1.2)
    assert analyzer.choose([main, box(76, 1.0, 200)]) == main  # area ratio 0.58
    with pytest.raises(MmppError) as caught:
        analyzer.choose([main, box(78, 1.0, 200)])  # area ratio 0.61
    assert caught.value.code is ErrorCode.MULTIPLE_FACES
    # A large but weak detection neither wins nor makes the photo ambiguous.
    assert analyzer.choose([box(150, 0.1, 300), main]) == main
    # With nothing confident the largest weak detection is still used.
    assert analyzer.choose([box(60, 0.2), box(90, 0.1, 100)]).width == 90
    with pytest.raises(MmppError) as caught:
        analyzer.choose([])
    assert caught.value.code is ErrorCode.NO_FACE


def test_small_faces_in_small_images_are_found_by_upsampling(analyzer: FaceAnalyzer, astronaut: Image.Image) -> None:
    small = astronaut.resize((256, 256), Image.Resampling.LANCZOS)
    face = analyzer.pick_face(small)
    assert face.box.width < 80  # below the HOG detector's native 80 px window
    assert face.box.center[1] < 100


def test_large_photos_are_detected_on_a_smaller_copy_and_mapped_back(
    analyzer: FaceAnalyzer, astronaut: Image.Image
) -> None:
    big = astronaut.resize((2048, 2048), Image.Resampling.LANCZOS)
    small_box, big_box = analyzer.pick_face(astronaut).box, analyzer.pick_face(big).box
    for small_edge, big_edge in zip(
        (small_box.left, small_box.top, small_box.right, small_box.bottom),
        (big_box.left, big_box.top, big_box.right, big_box.bottom),
        strict=True,
    ):
        assert abs(big_edge - 4 * small_edge) < 40


# ------------------------------------------------------------------------ identity
def test_embedding_tells_same_person_from_another(analyzer: FaceAnalyzer, astronaut: Image.Image) -> None:
    original = analyzer.embedding(astronaut)
    assert original.shape == (128,) and original.dtype == np.float64
    mirror = analyzer.embedding(mirrored(astronaut))
    cameraman_image = Image.fromarray(skimage_data.camera()).convert("RGB")
    cameraman = analyzer.embedding(cameraman_image, analyzer.landmarks(cameraman_image, CAMERAMAN_FACE))
    same = analyzer.distance(original, mirror)
    different = analyzer.distance(original, cameraman)
    assert same < SAME_PERSON_DISTANCE == 0.6
    assert different > SAME_PERSON_DISTANCE
    assert same < different


def test_embedding_does_not_depend_on_photo_resolution(analyzer: FaceAnalyzer, astronaut: Image.Image) -> None:
    big = astronaut.resize((1536, 1536), Image.Resampling.LANCZOS)
    assert analyzer.distance(analyzer.embedding(astronaut), analyzer.embedding(big)) < 0.15


def test_prepare_selfie_decodes_picks_and_crops(analyzer: FaceAnalyzer, astronaut: Image.Image) -> None:
    selfie = analyzer.prepare_selfie(encode(astronaut, "JPEG", quality=90), crop_size=256)
    assert selfie.image.size == (512, 512)
    assert isinstance(selfie.face, DetectedFace)
    assert selfie.crop.size == (256, 256)


def test_sample_selfie_asset_has_exactly_one_face(analyzer: FaceAnalyzer) -> None:
    data = SAMPLE_SELFIE.read_bytes()
    assert len(data) <= 100 * 1024
    image = decode_image(data)
    assert image.size == (512, 512)
    assert len(analyzer.detect(image)) == 1
    selfie = analyzer.prepare_selfie(data)
    assert selfie.crop.size == (512, 512)
    with Image.open(SAMPLE_SELFIE) as raw:
        assert raw.format == "JPEG" and not raw.getexif() and "exif" not in raw.info


# ------------------------------------------------------------------- model loading
def test_models_load_lazily_once_and_missing_files_are_reported() -> None:
    lazy = FaceAnalyzer()
    assert not lazy.loaded
    broken = FaceAnalyzer(predictor_path="/nonexistent/shape_predictor.dat", recognizer_path="/nonexistent/r.dat")
    with pytest.raises(MmppError) as caught:
        broken.detect(Image.new("RGB", (100, 100)))
    assert caught.value.code is ErrorCode.MODEL_UNAVAILABLE
    assert "face_recognition_models" in caught.value.message
    assert default_analyzer() is default_analyzer()


def test_model_files_are_found_and_load_without_pkg_resources() -> None:
    """A current setuptools ships no pkg_resources: the models must still be found and loaded."""
    code = """
import importlib.abc, sys
class BlockPkgResources(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "pkg_resources" or name.startswith("pkg_resources."):
            raise ModuleNotFoundError("No module named 'pkg_resources'", name=name)
        return None
sys.meta_path.insert(0, BlockPkgResources())
sys.modules.pop("pkg_resources", None)
try:
    import face_recognition_models
except ModuleNotFoundError as error:
    print("package import fails:", error.name)
from PIL import Image
from engine.faces import FaceAnalyzer, locate_face_model_files
predictor, recognizer = locate_face_model_files()
print(predictor.name, predictor.stat().st_size > 0, recognizer.name, recognizer.stat().st_size > 0)
analyzer = FaceAnalyzer()
print("faces:", len(analyzer.detect(Image.open(sys.argv[1]).convert("RGB"))))
print("pkg_resources imported:", "pkg_resources" in sys.modules)
"""
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-c", code, str(SAMPLE_SELFIE)], cwd=root, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "package import fails: pkg_resources",  # the blocker works: the package's own __init__ cannot run
        "shape_predictor_5_face_landmarks.dat True dlib_face_recognition_resnet_model_v1.dat True",
        "faces: 1",
        "pkg_resources imported: False",
    ]


def test_faces_module_stays_free_of_heavy_and_chat_imports() -> None:
    code = (
        "import sys, engine.faces;"
        "bad = [m for m in ('torch', 'diffusers', 'discord', 'telegram', 'bot') if m in sys.modules];"
        "print(','.join(bad))"
    )
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


# ------------------------------------------------------------------------ decoding
@pytest.mark.parametrize(
    ("orientation", "transpose"), [(6, Image.Transpose.ROTATE_90), (8, Image.Transpose.ROTATE_270)]
)
def test_exif_orientation_is_applied(
    analyzer: FaceAnalyzer, astronaut: Image.Image, orientation: int, transpose: Image.Transpose
) -> None:
    upright = astronaut.crop((0, 0, 512, 384))
    stored = upright.transpose(transpose)  # how a phone held sideways stores the pixels
    assert stored.size == (384, 512)
    assert not [box for box in analyzer.detect(stored) if box.score >= CONFIDENT_FACE_SCORE]
    exif = Image.Exif()
    exif[0x0112] = orientation
    decoded = decode_image(encode(stored, "JPEG", quality=92, exif=exif))
    assert decoded.size == (512, 384)
    face = analyzer.pick_face(decoded)
    assert face.box.center[1] < 200 and abs(face.roll_degrees) < 10


def test_decoded_image_carries_no_metadata() -> None:
    exif = Image.Exif()
    exif[0x010F] = "PhoneMaker"  # Make
    exif[0x0112] = 1
    source = Image.new("RGB", (100, 80), (10, 20, 30))
    data = encode(source, "JPEG", exif=exif, icc_profile=b"", comment=b"secret place")
    with Image.open(io.BytesIO(data)) as raw:
        assert raw.getexif().get(0x010F) == "PhoneMaker"
    decoded = decode_image(data)
    assert decoded.info == {}
    assert len(decoded.getexif()) == 0
    assert decoded.mode == "RGB" and decoded.size == (100, 80)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_accepted_still_formats_decode(astronaut: Image.Image, fmt: str) -> None:
    decoded = decode_image(encode(astronaut, fmt))
    assert decoded.size == (512, 512) and decoded.mode == "RGB"
    assert np.abs(np.asarray(decoded, dtype=int) - np.asarray(astronaut, dtype=int)).mean() < 8


def test_multi_picture_jpeg_counts_as_a_still_photo(astronaut: Image.Image) -> None:
    first, second = astronaut.resize((128, 128)), Image.new("RGB", (128, 128), (0, 0, 0))
    decoded = decode_image(encode(first, "MPO", save_all=True, append_images=[second]))
    assert decoded.size == (128, 128)
    assert np.asarray(decoded).mean() > 40  # the first picture, not the black second one


def test_truncated_jpeg_is_not_an_image(astronaut: Image.Image) -> None:
    data = encode(astronaut, "JPEG", quality=90)
    error = refused(data[: len(data) // 2])
    assert error.code is ErrorCode.NOT_AN_IMAGE
    assert "damaged" in error.message


@pytest.mark.parametrize("where", ["header", "pixels"])
def test_corrupt_png_is_not_an_image(astronaut: Image.Image, where: str) -> None:
    data = bytearray(encode(astronaut, "PNG"))
    if where == "header":
        data[20] ^= 0xFF  # inside IHDR: its checksum no longer matches
    else:
        middle = len(data) // 2
        data[middle : middle + 64] = b"\xff" * 64  # inside the compressed pixel stream
    assert refused(bytes(data)).code is ErrorCode.NOT_AN_IMAGE


@pytest.mark.parametrize("data", [b"", b"hello, this is a text file\n" * 40, b"\x00" * 1000])
def test_text_and_empty_uploads_are_not_images(data: bytes) -> None:
    error = refused(data)
    assert error.code is ErrorCode.NOT_AN_IMAGE
    assert "JPEG, PNG or WebP" in error.message


@pytest.mark.parametrize("fmt", ["GIF", "PNG", "WEBP"])
def test_animated_images_are_refused(astronaut: Image.Image, fmt: str) -> None:
    frames = [astronaut.resize((128, 128)), mirrored(astronaut.resize((128, 128)))]
    data = encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)
    error = refused(data)
    assert error.code is ErrorCode.NOT_AN_IMAGE
    assert "JPEG, PNG or WebP" in error.message


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "TIFF"])
def test_other_formats_are_refused_by_name(astronaut: Image.Image, fmt: str) -> None:
    error = refused(encode(astronaut.resize((128, 128)), fmt))
    assert error.code is ErrorCode.NOT_AN_IMAGE
    assert fmt in error.message


def test_decompression_bomb_is_refused_from_the_header_quickly() -> None:
    data = blank_bilevel_png(30_000, 30_000)
    assert len(data) < 200_000
    started = time.perf_counter()
    error = refused(data)
    assert error.code is ErrorCode.IMAGE_TOO_LARGE
    assert time.perf_counter() - started < 0.5


def test_pixel_limit_is_ours_not_only_pillows(monkeypatch: pytest.MonkeyPatch) -> None:
    # 49 megapixels: above our 40 MP limit, below Pillow's own warning level (89 MP).
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    started = time.perf_counter()
    error = refused(blank_bilevel_png(7_000, 7_000))
    assert error.code is ErrorCode.IMAGE_TOO_LARGE
    assert "7000x7000" in error.message
    assert time.perf_counter() - started < 0.5


def test_upload_over_the_byte_limit_is_refused() -> None:
    error = refused(b"\xff\xd8\xff" + b"\x00" * MAX_UPLOAD_BYTES)
    assert error.code is ErrorCode.IMAGE_TOO_LARGE


@pytest.mark.parametrize("size", [(16, 16), (400, 63)])
def test_tiny_images_are_refused(size: tuple[int, int]) -> None:
    assert refused(encode(Image.new("RGB", size, (1, 2, 3)), "PNG")).code is ErrorCode.IMAGE_TOO_SMALL


def test_smallest_allowed_image_decodes() -> None:
    assert decode_image(encode(Image.new("RGB", (64, 64), (1, 2, 3)), "PNG")).size == (64, 64)


def test_cmyk_jpeg_becomes_rgb(astronaut: Image.Image) -> None:
    decoded = decode_image(encode(astronaut.convert("CMYK"), "JPEG", quality=95))
    assert decoded.mode == "RGB"
    assert np.abs(np.asarray(decoded, dtype=int) - np.asarray(astronaut, dtype=int)).mean() < 8


def test_sixteen_bit_png_is_scaled_not_clipped() -> None:
    ramp = np.linspace(0, 65535, 128 * 256).reshape(128, 256).astype(np.uint16)
    data = encode(Image.fromarray(ramp), "PNG")
    with Image.open(io.BytesIO(data)) as raw:
        assert raw.mode.startswith("I")
    decoded = np.asarray(decode_image(data))
    assert decoded.dtype == np.uint8 and decoded.shape == (128, 256, 3)
    assert decoded.min() == 0 and decoded.max() == 255
    assert 120 < decoded.mean() < 135  # clipping would make almost everything 255
    assert decoded[64, 128, 0] == pytest.approx(ramp[64, 128] / 257, abs=1)


@pytest.mark.parametrize(
    "image",
    [
        Image.new("RGBA", (80, 80), (255, 0, 0, 0)),
        Image.new("LA", (80, 80), (0, 0)),
    ],
    ids=["RGBA", "LA"],
)
def test_transparency_is_composited_on_white(image: Image.Image) -> None:
    decoded = decode_image(encode(image, "PNG"))
    assert decoded.mode == "RGB" and decoded.getpixel((40, 40)) == (255, 255, 255)


def test_palette_and_greyscale_become_rgb() -> None:
    palette = Image.new("P", (80, 80), 1)
    palette.putpalette([0, 0, 0, 200, 30, 40] + [0, 0, 0] * 254)
    assert decode_image(encode(palette, "PNG")).getpixel((5, 5)) == (200, 30, 40)
    transparent = Image.new("P", (80, 80), 0)
    transparent.putpalette([0, 0, 0] * 256)
    assert decode_image(encode(transparent, "PNG", transparency=0)).getpixel((5, 5)) == (255, 255, 255)
    grey = decode_image(encode(Image.new("L", (80, 80), 77), "JPEG", quality=100))
    assert grey.mode == "RGB" and grey.getpixel((5, 5)) == (77, 77, 77)
    bilevel = decode_image(encode(Image.new("1", (80, 80), 1), "PNG"))
    assert bilevel.getpixel((5, 5)) == (255, 255, 255)
