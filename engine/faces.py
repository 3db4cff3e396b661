"""Selfie intake: safe decoding, face detection, alignment, crop and identity embedding.

Everything a worker does with the uploaded photo before diffusion happens here, so that the
pipeline receives one upright, square, 8-bit RGB face crop or a stable :class:`MmppError`.
The photo arrives from strangers on the internet; decoding is therefore defensive (byte and
pixel limits checked before any pixel is decoded, a short list of still formats, truncation
caught).  Face work uses dlib's HOG detector, 5-point landmarks and 128-d ResNet embedding
from ``face_recognition_models``: they run on CPU in tens of milliseconds and need no
network, no torch and no GPU, which keeps this module usable in any worker.
"""

from __future__ import annotations

import importlib.util
import math
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageFilter

from mmpp.contract import MAX_UPLOAD_BYTES
from mmpp.errors import ErrorCode, MmppError
from mmpp.photos import not_an_image, open_photo_header, to_rgb8, too_many_pixels, upright

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = [
    "CONFIDENT_FACE_SCORE",
    "SAME_PERSON_DISTANCE",
    "SIMILAR_FACE_AREA_RATIO",
    "DetectedFace",
    "FaceAnalyzer",
    "FaceBox",
    "PreparedSelfie",
    "decode_image",
    "default_analyzer",
]

#: dlib's documented decision threshold for its 128-d embedding: two faces whose Euclidean
#: distance is below 0.6 are the same person (99.38 % on LFW).  Measured here: the astronaut
#: photo against its mirror image 0.18, against the cameraman in ``skimage.data.camera()`` 0.84.
SAME_PERSON_DISTANCE = 0.6

#: A second face makes the photo ambiguous only if it is about as large as the main one.
#: dlib's HOG detector scans an image pyramid whose levels differ by 6/5 in scale, so box
#: sides are quantised and the area ratio of two boxes only takes the values
#: (5/6)**(2n) = 1, 0.69, 0.48, 0.33, ...  Measured with two copies of the astronaut's head
#: side by side (the second shrunk to k times the side): k = 1 and 0.95 gave 0.99-1.0,
#: k = 0.9 to 0.75 gave 0.69-0.71, k = 0.7 to 0.6 gave 0.48-0.49, k = 0.55 gave 0.34.
#: 0.6 sits between the two upper levels with room on both sides, so a face at least about
#: three quarters the size of the subject's makes the photo ambiguous, and a bystander two
#: thirds the size or smaller is ignored (0.5 would sit only 2 % above the 0.49 level).
SIMILAR_FACE_AREA_RATIO = 0.6

#: dlib scores are margins over its decision threshold (0).  False detections sit just above
#: it, real faces well above: on ``skimage.data.astronaut()`` resized to 192-1024 px, the
#: known false "face" on the suit gets the same box size as the real face (area ratio
#: 1.0-1.01, so size cannot tell them apart) whenever it passes the threshold, with scores
#: 0.01-0.22, while the real face scores 1.06-1.69 (once 0.16, at 320 px).  Weak detections
#: therefore never count as a second face, and are only picked when nothing confident is.
CONFIDENT_FACE_SCORE = 0.5

#: Detection runs on a copy whose longest side is at most this; HOG cost grows with pixel
#: count, and a selfie face is far larger than the detector's 80 px minimum at this size.
DETECTION_SIDE = 800

_MODELS_HINT = "install them with: pip install dlib-bin face_recognition_models"

#: The two dlib model files the analyzer loads, as ``face_recognition_models`` ships them.
PREDICTOR_FILE_NAME = "shape_predictor_5_face_landmarks.dat"
RECOGNIZER_FILE_NAME = "dlib_face_recognition_resnet_model_v1.dat"


def locate_face_model_files() -> tuple[Path, Path]:
    """The 5-point landmark predictor and the 128-d recognizer files, found without importing their package.

    ``face_recognition_models/__init__.py`` imports ``pkg_resources`` only to build these paths,
    and current setuptools releases no longer ship ``pkg_resources`` (84.2.1 has none), so
    importing the package fails in a current environment.  The files are plain package data in
    its ``models`` folder, and ``find_spec`` names that folder without running the ``__init__``.
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise MmppError(ErrorCode.MODEL_UNAVAILABLE, f"The face model files are missing; {_MODELS_HINT}.")
    for location in spec.submodule_search_locations:
        models = Path(location) / "models"
        predictor, recognizer = models / PREDICTOR_FILE_NAME, models / RECOGNIZER_FILE_NAME
        if predictor.is_file() and recognizer.is_file():
            return predictor, recognizer
    raise MmppError(
        ErrorCode.MODEL_UNAVAILABLE, f"The face model files are missing from face_recognition_models; {_MODELS_HINT}."
    )


def decode_image(data: bytes) -> Image.Image:
    """Decode an uploaded photo into a fresh, upright, 8-bit RGB image without metadata.

    Limits are checked in order of cost: byte count, then the size written in the header,
    and only then are pixels decoded, so a small file that claims 30000x30000 pixels is
    refused in microseconds.  Pillow's own decompression-bomb guard stays on as a second
    line.  The result carries no EXIF (location, camera serial) so nothing private can
    travel further into logs or outputs.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise not_an_image()
    data = bytes(data)
    if not data:
        raise not_an_image("The upload is empty.")
    if len(data) > MAX_UPLOAD_BYTES:
        raise MmppError(
            ErrorCode.IMAGE_TOO_LARGE,
            f"The photo is {len(data) / 2**20:.1f} MiB; the limit is {MAX_UPLOAD_BYTES / 2**20:.0f} MiB.",
        )
    # catch_warnings is process-global on Python 3.11; if a concurrent thread restores the
    # filters early the warning merely logs, and the explicit pixel check below still refuses.
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        image = open_photo_header(data)
        try:
            image.load()  # Pillow decodes lazily: force it here so truncation surfaces now.
        except Image.DecompressionBombError:
            raise too_many_pixels(image.size) from None
        except Exception:  # noqa: BLE001 - corrupt data makes decoders raise almost anything.
            raise not_an_image("The photo is damaged or incomplete.") from None
    rgb = to_rgb8(upright(image))
    fresh = Image.new("RGB", rgb.size)
    fresh.paste(rgb)
    return fresh


@dataclass(frozen=True)
class FaceBox:
    """A detected face rectangle in the coordinates of the image it was found in.

    ``right`` and ``bottom`` are exclusive.  ``score`` is dlib's margin over its threshold:
    higher is surer, and anything below :data:`CONFIDENT_FACE_SCORE` may be a false hit.
    """

    left: int
    top: int
    right: int
    bottom: int
    score: float = 0.0

    @property
    def width(self) -> int:
        return self.right - self.left

    @property
    def height(self) -> int:
        return self.bottom - self.top

    @property
    def area(self) -> int:
        return max(self.width, 0) * max(self.height, 0)

    @property
    def center(self) -> tuple[float, float]:
        return ((self.left + self.right) / 2.0, (self.top + self.bottom) / 2.0)


@dataclass(frozen=True)
class DetectedFace:
    """A face box plus dlib's 5 landmarks, in original image pixel coordinates.

    dlib's 5-point order: 0 and 1 are the outer and inner corner of the eye on the image's
    right, 2 and 3 the outer and inner corner of the eye on the image's left, 4 the base of
    the nose (for an upright, unmirrored face).
    """

    box: FaceBox
    landmarks: tuple[tuple[float, float], ...]

    @property
    def left_eye(self) -> tuple[float, float]:
        """Centre of the eye on the image's left (the person's right eye)."""
        (x2, y2), (x3, y3) = self.landmarks[2], self.landmarks[3]
        return ((x2 + x3) / 2.0, (y2 + y3) / 2.0)

    @property
    def right_eye(self) -> tuple[float, float]:
        """Centre of the eye on the image's right (the person's left eye)."""
        (x0, y0), (x1, y1) = self.landmarks[0], self.landmarks[1]
        return ((x0 + x1) / 2.0, (y0 + y1) / 2.0)

    @property
    def nose(self) -> tuple[float, float]:
        return self.landmarks[4]

    @property
    def roll_degrees(self) -> float:
        """Angle of the eye line against the horizontal; positive means the right eye is lower."""
        (lx, ly), (rx, ry) = self.left_eye, self.right_eye
        return math.degrees(math.atan2(ry - ly, rx - lx))


@dataclass(frozen=True)
class PreparedSelfie:
    """A decoded upload, the face chosen in it, and the aligned square crop of that face."""

    image: Image.Image
    face: DetectedFace
    crop: Image.Image


@dataclass(frozen=True)
class _Models:
    detector: Any
    predictor: Any
    recognizer: Any
    dlib: Any


class FaceAnalyzer:
    """dlib face detector, 5-point landmarks and 128-d embedding, loaded once and kept warm.

    Models load on first use rather than at construction so that importing the engine, or
    building the object in a parent process before a worker forks, costs nothing.  dlib's
    detector objects are documented as unsafe for concurrent use, so every model call holds
    one lock; detection takes tens of milliseconds, so serialising threads costs little and
    worker processes each own their instance anyway.
    """

    def __init__(
        self,
        predictor_path: str | None = None,
        recognizer_path: str | None = None,
        detection_side: int = DETECTION_SIDE,
    ) -> None:
        self._predictor_path = predictor_path
        self._recognizer_path = recognizer_path
        self._detection_side = int(detection_side)
        self._models: _Models | None = None
        self._load_lock = threading.Lock()
        self._run_lock = threading.RLock()

    # ------------------------------------------------------------------ loading
    def load(self) -> None:
        """Load the models now, e.g. when a worker starts, instead of on its first job."""
        self._get_models()

    @property
    def loaded(self) -> bool:
        return self._models is not None

    def _get_models(self) -> _Models:
        models = self._models
        if models is not None:
            return models
        with self._load_lock:
            if self._models is None:
                self._models = self._load_models()
            return self._models

    def _load_models(self) -> _Models:
        try:
            import dlib
        except ImportError:
            raise MmppError(ErrorCode.MODEL_UNAVAILABLE, f"The face models need dlib; {_MODELS_HINT}.") from None
        predictor_path, recognizer_path = self._predictor_path, self._recognizer_path
        if predictor_path is None or recognizer_path is None:
            shipped_predictor, shipped_recognizer = locate_face_model_files()
            predictor_path = predictor_path or str(shipped_predictor)
            recognizer_path = recognizer_path or str(shipped_recognizer)
        try:
            return _Models(
                detector=dlib.get_frontal_face_detector(),
                predictor=dlib.shape_predictor(str(predictor_path)),
                recognizer=dlib.face_recognition_model_v1(str(recognizer_path)),
                dlib=dlib,
            )
        except (RuntimeError, OSError):
            raise MmppError(
                ErrorCode.MODEL_UNAVAILABLE, f"The face model files could not be loaded; {_MODELS_HINT}."
            ) from None

    # ---------------------------------------------------------------- detection
    def detect(self, image: Image.Image) -> list[FaceBox]:
        """Find faces, largest first, with boxes in ``image``'s own pixel coordinates.

        The image is shrunk to :data:`DETECTION_SIDE` first (HOG cost grows with pixels).
        If nothing is found, the detector runs once more on a 2x upsampled copy, which finds
        faces down to about 40 px (e.g. a whole-body shot, or a 256 px thumbnail); doing that
        only on a miss keeps the common case at one fast pass.
        """
        models = self._get_models()
        work, scale = self._working_copy(image)
        pixels = _rgb_array(work)
        with self._run_lock:
            rects, scores, _ = models.detector.run(pixels, 0, 0.0)
            if len(rects) == 0:
                rects, scores, _ = models.detector.run(pixels, 1, 0.0)
        width, height = image.size
        boxes = [
            FaceBox(
                left=max(0, round(rect.left() * scale)),
                top=max(0, round(rect.top() * scale)),
                right=min(width, round((rect.right() + 1) * scale)),
                bottom=min(height, round((rect.bottom() + 1) * scale)),
                score=float(score),
            )
            for rect, score in zip(rects, scores, strict=True)
        ]
        boxes = [box for box in boxes if box.area > 0]
        boxes.sort(key=lambda box: (box.area, box.score), reverse=True)
        return boxes

    def _working_copy(self, image: Image.Image) -> tuple[Image.Image, float]:
        longest = max(image.size)
        if longest <= self._detection_side:
            return image, 1.0
        scale = longest / self._detection_side
        size = (max(1, round(image.width / scale)), max(1, round(image.height / scale)))
        small = image.convert("RGB").resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
        return small, image.width / size[0]

    def choose(self, boxes: Sequence[FaceBox]) -> FaceBox:
        """Pick the subject's face from detections, or refuse when the photo is ambiguous.

        Kept separate from :meth:`pick_face` so the rule can be tested without a detector.
        """
        if not boxes:
            raise MmppError(ErrorCode.NO_FACE, "No face was found in the photo; send a clear, front-facing selfie.")
        confident = [box for box in boxes if box.score >= CONFIDENT_FACE_SCORE]
        pool = confident or list(boxes)
        main = max(pool, key=lambda box: (box.area, box.score))
        rivals = [box for box in confident if box is not main and box.area >= SIMILAR_FACE_AREA_RATIO * main.area]
        if rivals:
            raise MmppError(
                ErrorCode.MULTIPLE_FACES,
                f"The photo shows {len(rivals) + 1} faces of similar size; send a selfie with only your face.",
            )
        return main

    def pick_face(self, image: Image.Image) -> DetectedFace:
        """The one face to work with: the largest, unless another is about as large."""
        return self.landmarks(image, self.choose(self.detect(image)))

    def landmarks(self, image: Image.Image, box: FaceBox) -> DetectedFace:
        """dlib's 5 landmarks for a face box (from :meth:`detect` or from elsewhere).

        The predictor runs on a local window around the box, shrunk if the face is huge, so
        a 40-megapixel photo is never copied whole into a numpy array.
        """
        models = self._get_models()
        window, (offset_x, offset_y), scale = _window(image, box, expand=0.5, max_side=600)
        pixels = _rgb_array(window)
        rect = models.dlib.rectangle(
            round((box.left - offset_x) / scale),
            round((box.top - offset_y) / scale),
            round((box.right - offset_x) / scale) - 1,
            round((box.bottom - offset_y) / scale) - 1,
        )
        with self._run_lock:
            shape = models.predictor(pixels, rect)
        points = tuple(
            (offset_x + (part.x + 0.5) * scale - 0.5, offset_y + (part.y + 0.5) * scale - 0.5) for part in shape.parts()
        )
        return DetectedFace(box=box, landmarks=points)

    # ------------------------------------------------------------- crop, embed
    def crop(
        self,
        image: Image.Image,
        face: DetectedFace,
        size: int = 512,
        margin: float = 0.6,
        fill: str | tuple[int, int, int] = "edge",
    ) -> Image.Image:
        """Rotate the eyes level and cut a square around the whole head, resized to ``size``.

        The face width is estimated from the landmarks as the larger of twice the distance
        between the eye centres and 2.8 times the eye-to-nose distance (the second covers
        heads turned sideways, where the eyes look closer together).  ``margin`` adds that
        fraction of the face width on each side: the default 0.6 gives a square of about 4.4
        eye distances, a little looser than FFHQ's four, so that full hair still fits above
        the eyes and the chin and some neck below (checked on the astronaut photo).
        Where the square leaves the photo, ``fill="edge"`` repeats the border pixels and blurs
        them, which reads as out-of-focus background (a mirrored copy would add half faces);
        any other value is taken as a Pillow colour.
        """
        if size < 1:
            raise ValueError("size must be positive")
        (lx, ly), (rx, ry) = face.left_eye, face.right_eye
        nose_x, nose_y = face.nose
        eye_dx, eye_dy = rx - lx, ry - ly
        eye_distance = math.hypot(eye_dx, eye_dy)
        mid_x, mid_y = (lx + rx) / 2.0, (ly + ry) / 2.0
        eye_to_nose = math.hypot(nose_x - mid_x, nose_y - mid_y)
        if eye_distance < 1e-3:
            # Degenerate landmarks: fall back to the box, unrotated.
            ux, uy = 1.0, 0.0
            face_width = float(max(face.box.width, face.box.height))
            centre_x, centre_y = face.box.center
        else:
            ux, uy = eye_dx / eye_distance, eye_dy / eye_distance
            face_width = max(2.0 * eye_distance, 2.8 * eye_to_nose)
            # Centre slightly below the eye line, as FFHQ does (a tenth of eye-to-mouth):
            # eyes sit near mid-height of the head, hair and chin about equally far away.
            drop = 0.05 * face_width
            centre_x, centre_y = mid_x - uy * drop, mid_y + ux * drop
        side = max(face_width * (1.0 + 2.0 * max(margin, 0.0)), 1.0)
        # "Down" in the face's frame: the eye direction turned 90 degrees clockwise on screen.
        vx, vy = -uy, ux
        half = side / 2.0
        corners = [
            (centre_x + sx * half * ux + sy * half * vx, centre_y + sx * half * uy + sy * half * vy)
            for sx, sy in ((-1, -1), (1, -1), (1, 1), (-1, 1))
        ]
        # Work on the bounding window of the rotated square only, padded where it leaves the
        # photo, so a 40-megapixel upload is never padded or rotated whole.
        x0 = math.floor(min(x for x, _ in corners)) - 2
        y0 = math.floor(min(y for _, y in corners)) - 2
        x1 = math.ceil(max(x for x, _ in corners)) + 2
        y1 = math.ceil(max(y for _, y in corners)) + 2
        region = _padded_region(image.convert("RGB") if image.mode != "RGB" else image, x0, y0, x1, y1, fill)
        # Rotate at (at most) native resolution, then downscale with a proper filter:
        # Image.transform does not antialias, resize does.
        out_side = max(size, min(math.ceil(side), 4 * size))
        step = side / out_side
        # Landmarks use pixel-centre coordinates; Pillow's transform uses pixel edges.
        origin_x, origin_y = corners[0][0] - x0 + 0.5, corners[0][1] - y0 + 0.5
        coefficients = (step * ux, step * vx, origin_x, step * uy, step * vy, origin_y)
        rotated = region.transform(
            (out_side, out_side), Image.Transform.AFFINE, coefficients, resample=Image.Resampling.BICUBIC
        )
        if out_side != size:
            rotated = rotated.resize((size, size), Image.Resampling.LANCZOS)
        return rotated

    def embedding(self, image: Image.Image, face: DetectedFace | None = None) -> np.ndarray:
        """dlib's 128-d identity vector for ``face`` (picked from ``image`` when not given).

        Compare two with :meth:`distance`; below :data:`SAME_PERSON_DISTANCE` (0.6) dlib
        calls them the same person.  Used to check that generated portraits kept the
        identity of the selfie.
        """
        if face is None:
            face = self.pick_face(image)
        models = self._get_models()
        # dlib cuts a 150 px chip with 25 % padding; a window twice the box is plenty, and
        # shrinking it to 600 px keeps big photos cheap without hurting a 150 px chip.
        window, (offset_x, offset_y), scale = _window(image, face.box, expand=1.0, max_side=600)
        pixels = _rgb_array(window)
        dlib = models.dlib
        parts = [
            dlib.point(round((x + 0.5 - offset_x) / scale - 0.5), round((y + 0.5 - offset_y) / scale - 0.5))
            for x, y in face.landmarks
        ]
        box = face.box
        rect = dlib.rectangle(
            round((box.left - offset_x) / scale),
            round((box.top - offset_y) / scale),
            round((box.right - offset_x) / scale) - 1,
            round((box.bottom - offset_y) / scale) - 1,
        )
        shape = dlib.full_object_detection(rect, parts)
        with self._run_lock:
            vector = models.recognizer.compute_face_descriptor(pixels, shape)
        return np.asarray(vector, dtype=np.float64)

    @staticmethod
    def distance(a: np.ndarray, b: np.ndarray) -> float:
        """Euclidean distance between two embeddings; < 0.6 means same person to dlib."""
        return float(np.linalg.norm(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)))

    # --------------------------------------------------------------- shortcut
    def prepare_selfie(self, data: bytes, crop_size: int = 512) -> PreparedSelfie:
        """Upload bytes to the aligned face crop the pipeline conditions on."""
        image = decode_image(data)
        face = self.pick_face(image)
        return PreparedSelfie(image=image, face=face, crop=self.crop(image, face, size=crop_size))


def _rgb_array(image: Image.Image) -> np.ndarray:
    """dlib's bindings want a C-contiguous uint8 HxWx3 array."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.ascontiguousarray(np.asarray(image, dtype=np.uint8))


def _window(
    image: Image.Image, box: FaceBox, expand: float, max_side: int
) -> tuple[Image.Image, tuple[int, int], float]:
    """A crop around ``box`` grown by ``expand`` of its size per side, shrunk to ``max_side``.

    Returns the window, its top-left in ``image`` and the scale (original px per window px).
    """
    grow_x, grow_y = round(box.width * expand), round(box.height * expand)
    left, top = max(0, box.left - grow_x), max(0, box.top - grow_y)
    right, bottom = min(image.width, box.right + grow_x), min(image.height, box.bottom + grow_y)
    window = image.crop((left, top, right, bottom))
    longest = max(window.size)
    scale = 1.0
    if longest > max_side:
        scale = longest / max_side
        size = (max(1, round(window.width / scale)), max(1, round(window.height / scale)))
        window = window.resize(size, Image.Resampling.LANCZOS)
        scale = (right - left) / size[0]
    return window, (left, top), scale


def _padded_region(
    image: Image.Image, x0: int, y0: int, x1: int, y1: int, fill: str | tuple[int, int, int]
) -> Image.Image:
    """``image[y0:y1, x0:x1]`` where parts outside the photo repeat its edge or take ``fill``."""
    inner = (max(x0, 0), max(y0, 0), min(x1, image.width), min(y1, image.height))
    if inner == (x0, y0, x1, y1):
        return image.crop(inner)
    if inner[0] >= inner[2] or inner[1] >= inner[3]:
        # The square misses the photo entirely (nonsense landmarks); nothing to repeat.
        colour = (127, 127, 127) if fill == "edge" else fill
        return Image.new("RGB", (x1 - x0, y1 - y0), colour)
    pixels = np.asarray(image.crop(inner))
    pads = ((inner[1] - y0, y1 - inner[3]), (inner[0] - x0, x1 - inner[2]), (0, 0))
    if fill == "edge":
        # Repeated border pixels form streaks; blurring them (and only them) turns the
        # padding into something that reads as out-of-focus background.
        streaks = Image.fromarray(np.pad(pixels, pads, mode="edge"))
        radius = max(2.0, 0.03 * max(x1 - x0, y1 - y0))
        padded = streaks.filter(ImageFilter.GaussianBlur(radius))
        padded.paste(Image.fromarray(pixels), (inner[0] - x0, inner[1] - y0))
        return padded
    canvas = Image.new("RGB", (x1 - x0, y1 - y0), fill)
    canvas.paste(Image.fromarray(pixels), (inner[0] - x0, inner[1] - y0))
    return canvas


_default: FaceAnalyzer | None = None
_default_lock = threading.Lock()


def default_analyzer() -> FaceAnalyzer:
    """The process-wide analyzer, so every job in a worker shares one set of loaded models."""
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = FaceAnalyzer()
    return _default
