"""Training data: a folder of pictures with optional captions, checked, cropped and batched.

Why the data is read completely before training starts: a LoRA data set is small (a
handful to a few hundred pictures), and reading it first means every problem (a damaged
file, a photo without a face, a folder with nothing usable) is reported with its file
name before minutes are spent loading the model, and the data hash written into the
LoRA describes exactly what was trained on.

Why every random choice is derived from ``(seed, batch index)`` instead of a running
random generator: a resumed run must see exactly the batches, crops, flips and noise an
uninterrupted run would have seen.  With counter-based randomness the state to restore
is just two integers, it cannot drift, and a data-parallel run gives each process its
own slice of the same global stream of batches.

This module needs Pillow, numpy and :mod:`engine.faces` only (no torch), so a data
folder can be checked cheaply, e.g. by ``mmpp train`` before it loads any weights.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from PIL import Image

from mmpp.errors import ErrorCode, MmppError

if TYPE_CHECKING:
    from engine.faces import FaceAnalyzer

logger = logging.getLogger(__name__)

Kind = Literal["portrait", "style"]
KINDS: tuple[Kind, ...] = ("portrait", "style")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
CAPTION_SUFFIX = ".txt"

#: Captions for pictures without a ``.txt`` file.  The trigger word is a rare token that
#: the LoRA learns to bind to the subject (portrait) or the look (style); prompts then
#: call it up by name.
CAPTION_TEMPLATES: dict[Kind, str] = {
    "portrait": "a photo of {trigger} person",
    "style": "{trigger} style portrait",
}
DEFAULT_TRIGGERS: dict[Kind, str] = {"portrait": "mmppface", "style": "mmppstyle"}

#: The face crop is cut around the head (about 2.2 face widths, see ``FaceAnalyzer.crop``)
#: and resized to the training resolution.  A face that would have to be blown up more
#: than this to fill it teaches the LoRA blur and JPEG blocks, not a face, so it is skipped.
MAX_FACE_UPSCALE = 2.0
#: A style picture blown up more than this still trains, but the report warns about it.
WARN_UPSCALE = 2.0
#: ``FaceAnalyzer.crop``'s square side in face-box widths (1 + 2 x its default margin 0.6).
FACE_CROP_WIDTHS = 2.2

#: Width/height ratios of the SDXL aspect-ratio buckets: portrait 2:3 and 3:4, square,
#: landscape 4:3 and 3:2.  Each becomes a size of about resolution² pixels with sides
#: a multiple of 64, so no picture is squashed and none loses more than a sliver to the crop.
BUCKET_RATIOS = (2 / 3, 3 / 4, 1.0, 4 / 3, 3 / 2)
BUCKET_MULTIPLE = 64


@dataclass(frozen=True)
class Skipped:
    """A file left out of training, with the engine's error code and the reason."""

    file: str
    code: str
    reason: str


@dataclass
class Example:
    """One training picture, decoded and prepared once.

    ``image`` already covers its bucket (face crops are exactly the bucket size; other
    pictures are resized so the bucket fits inside), so a training step only has to crop
    and maybe flip it.  ``original_size`` is ``(height, width)`` of the source region, as
    SDXL's size conditioning wants it.
    """

    file: str
    image: Image.Image
    caption: str
    caption_from_file: bool
    bucket: tuple[int, int]
    original_size: tuple[int, int]


@dataclass
class Dataset:
    """The prepared examples and a record of everything that was left out and why."""

    root: Path
    kind: Kind
    trigger: str
    resolution: int
    buckets: list[tuple[int, int]]
    examples: list[Example]
    skipped: list[Skipped] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    images_found: int = 0
    data_sha256: str = ""

    def report(self) -> dict[str, Any]:
        """The data report (``data_report.json``): counts, skipped files and why."""
        bucket_counts = Counter(f"{width}x{height}" for width, height in (e.bucket for e in self.examples))
        return {
            "data_dir": str(self.root),
            "kind": self.kind,
            "trigger": self.trigger,
            "resolution": self.resolution,
            "images_found": self.images_found,
            "images_used": len(self.examples),
            "images_skipped": len(self.skipped),
            "skipped": [{"file": s.file, "code": s.code, "reason": s.reason} for s in self.skipped],
            "captions_from_files": sum(e.caption_from_file for e in self.examples),
            "captions_from_template": sum(not e.caption_from_file for e in self.examples),
            "buckets": dict(sorted(bucket_counts.items())),
            "ignored_files": self.ignored,
            "warnings": self.warnings,
            "data_sha256": self.data_sha256,
        }

    def summary_lines(self) -> list[str]:
        """The report for people: one line of counts, then one line per skipped file."""
        lines = [
            f"data: {self.images_found} images in {self.root}, {len(self.examples)} used, "
            f"{len(self.skipped)} skipped; buckets "
            + ", ".join(f"{key} x{count}" for key, count in self.report()["buckets"].items())
        ]
        lines += [f"  skipped {s.file}: {s.code} {s.reason}" for s in self.skipped]
        lines += [f"  warning: {text}" for text in self.warnings]
        return lines


# --------------------------------------------------------------------------- buckets


def _round_to(value: float, multiple: int) -> int:
    return max(multiple, round(value / multiple) * multiple)


def make_buckets(resolution: int, use_buckets: bool) -> list[tuple[int, int]]:
    """``(width, height)`` training sizes: one square, or a few aspect-ratio buckets.

    Buckets keep about ``resolution²`` pixels each, so a batch costs about the same
    whichever bucket it comes from.  Small resolutions collapse to fewer buckets (at
    64 px every ratio rounds to the square).
    """
    if not use_buckets:
        return [(resolution, resolution)]
    buckets: list[tuple[int, int]] = []
    for ratio in BUCKET_RATIOS:
        if ratio == 1.0:
            size = (resolution, resolution)
        else:
            size = (
                _round_to(resolution * math.sqrt(ratio), BUCKET_MULTIPLE),
                _round_to(resolution / math.sqrt(ratio), BUCKET_MULTIPLE),
            )
        if size not in buckets:
            buckets.append(size)
    return buckets


def nearest_bucket(size: tuple[int, int], buckets: list[tuple[int, int]]) -> tuple[int, int]:
    """The bucket whose aspect ratio is closest to ``size``'s (compared in log space)."""
    width, height = size
    ratio = math.log(width / height)
    return min(buckets, key=lambda bucket: (abs(math.log(bucket[0] / bucket[1]) - ratio), bucket))


def cover(image: Image.Image, bucket: tuple[int, int]) -> Image.Image:
    """Resize so the bucket fits inside with at most one side overhanging, for cropping."""
    width, height = image.size
    scale = max(bucket[0] / width, bucket[1] / height)
    size = (max(bucket[0], round(width * scale)), max(bucket[1], round(height * scale)))
    if size == image.size:
        return image
    return image.resize(size, Image.Resampling.LANCZOS if scale < 1 else Image.Resampling.BICUBIC)


# --------------------------------------------------------------------------- reading a folder


def data_hash(root: Path, names: list[str]) -> str:
    """sha256 over the sorted file names and bytes of the images and captions read.

    Names are relative, so the same data in another folder hashes the same; the length
    prefix keeps ``("ab", "c")`` and ``("a", "bc")`` apart.
    """
    digest = hashlib.sha256()
    for name in sorted(names):
        content = (root / name).read_bytes()
        encoded = name.encode()
        digest.update(len(encoded).to_bytes(8, "big") + encoded + len(content).to_bytes(8, "big"))
        digest.update(content)
    return digest.hexdigest()


def load_dataset(
    root: Path,
    kind: Kind,
    resolution: int,
    *,
    use_buckets: bool = False,
    trigger: str | None = None,
    analyzer: FaceAnalyzer | None = None,
) -> Dataset:
    """Read ``root`` into a :class:`Dataset`, or raise an :class:`MmppError` saying why not.

    Pictures are decoded with the engine's defensive decoder (size limits, EXIF
    rotation); for portraits, the one face of each picture is found, aligned and cropped
    exactly as the engine crops selfies, so the LoRA learns faces framed the way it will
    be asked to draw them.  Files that cannot be used are skipped and listed; only a
    folder that leaves nothing to train on is an error.
    """
    from engine import faces

    if kind not in KINDS:
        raise MmppError(ErrorCode.INVALID_REQUEST, f"--kind must be portrait or style, not '{kind}'.")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise MmppError(ErrorCode.INVALID_REQUEST, f"The data folder {root} does not exist or is not a folder.")
    trigger = (trigger or DEFAULT_TRIGGERS[kind]).strip()
    buckets = make_buckets(resolution, use_buckets)
    files = sorted(path for path in root.iterdir() if path.is_file() and not path.name.startswith("."))
    images = [path for path in files if path.suffix.lower() in IMAGE_SUFFIXES]
    caption_files = {path.stem: path for path in files if path.suffix.lower() == CAPTION_SUFFIX}
    if not images:
        raise MmppError(
            ErrorCode.INVALID_REQUEST,
            f"The data folder {root} has no images (.jpg, .jpeg, .png or .webp files).",
        )
    dataset = Dataset(root=root, kind=kind, trigger=trigger, resolution=resolution, buckets=buckets, examples=[])
    dataset.images_found = len(images)
    used_captions = {caption_files[path.stem].name for path in images if path.stem in caption_files}
    dataset.ignored = [path.name for path in files if path not in images and path.name not in used_captions]
    dataset.data_sha256 = data_hash(root, [path.name for path in images] + sorted(used_captions))
    analyzer = analyzer if analyzer is not None or kind != "portrait" else faces.default_analyzer()
    decoded = 0
    for path in images:
        try:
            picture = faces.decode_image(path.read_bytes())
        except OSError as error:
            dataset.skipped.append(
                Skipped(path.name, ErrorCode.NOT_AN_IMAGE.value, f"cannot be read ({error.strerror})")
            )
            continue
        except MmppError as error:
            dataset.skipped.append(Skipped(path.name, error.code.value, error.message))
            continue
        decoded += 1
        if kind == "portrait":
            assert analyzer is not None
            prepared = _face_example(analyzer, picture, resolution, path.name, dataset)
            if prepared is None:
                continue
            image, original_size = prepared
            bucket = (resolution, resolution)
        else:
            bucket = nearest_bucket(picture.size, buckets)
            scale = max(bucket[0] / picture.width, bucket[1] / picture.height)
            if scale > WARN_UPSCALE:
                dataset.warnings.append(
                    f"{path.name} is {picture.width}x{picture.height}; it is enlarged {scale:.1f}x to fill "
                    f"{bucket[0]}x{bucket[1]} and may teach blur"
                )
            image = cover(picture, bucket)
            original_size = (picture.height, picture.width)
        caption, from_file = _caption(caption_files.get(path.stem), kind, trigger)
        dataset.examples.append(
            Example(
                file=path.name,
                image=image,
                caption=caption,
                caption_from_file=from_file,
                bucket=bucket,
                original_size=original_size,
            )
        )
    if not dataset.examples:
        raise _nothing_usable(dataset, decoded)
    return dataset


def _face_example(
    analyzer: FaceAnalyzer, picture: Image.Image, resolution: int, name: str, dataset: Dataset
) -> tuple[Image.Image, tuple[int, int]] | None:
    """The aligned face crop at ``resolution``, or ``None`` after recording why not."""
    try:
        face = analyzer.pick_face(picture)
    except MmppError as error:
        dataset.skipped.append(Skipped(name, error.code.value, error.message))
        return None
    source_side = round(FACE_CROP_WIDTHS * max(face.box.width, face.box.height))
    if source_side * MAX_FACE_UPSCALE < resolution:
        dataset.skipped.append(
            Skipped(
                name,
                ErrorCode.IMAGE_TOO_SMALL.value,
                f"the face is only {face.box.width} px wide; its {source_side} px crop would be enlarged more than "
                f"{MAX_FACE_UPSCALE:g}x to {resolution} px",
            )
        )
        return None
    return analyzer.crop(picture, face, size=resolution), (source_side, source_side)


def _caption(path: Path | None, kind: Kind, trigger: str) -> tuple[str, bool]:
    """The ``.txt`` caption (``{trigger}`` replaced) or the kind's template."""
    if path is not None:
        try:
            text = " ".join(path.read_text(encoding="utf-8", errors="replace").split())
        except OSError:
            text = ""
        if text:
            return text.replace("{trigger}", trigger), True
    return CAPTION_TEMPLATES[kind].format(trigger=trigger), False


def _nothing_usable(dataset: Dataset, decoded: int) -> MmppError:
    reasons = Counter(skip.code for skip in dataset.skipped)
    listing = ", ".join(f"{count} {code}" for code, count in sorted(reasons.items()))
    if decoded == 0:
        return MmppError(
            ErrorCode.NOT_AN_IMAGE,
            f"None of the {dataset.images_found} images in {dataset.root} could be read ({listing}); "
            "use still JPEG, PNG or WebP photos.",
        )
    return MmppError(
        ErrorCode.NO_FACE,
        f"None of the {decoded} readable images in {dataset.root} shows one usable face ({listing}); "
        "portrait training needs photos with exactly one clear face.",
    )


# --------------------------------------------------------------------------- batches


def stream_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed for one independent random stream, e.g. ``(seed, purpose, batch)``.

    numpy's SeedSequence hashes the keys properly, so nearby batch numbers give
    unrelated streams (``seed + batch`` would make run 1's batch 2 equal run 2's batch 1).
    """
    return int(np.random.SeedSequence([seed, *keys]).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


#: Purposes of the random streams (the second key of :func:`stream_seed`).
STREAM_ORDER, STREAM_AUGMENT, STREAM_NOISE = 1, 2, 3


class BatchPlan:
    """Which examples form global batch number ``n``, for any ``n``, without state.

    Each epoch shuffles every bucket on its own, cuts it into batches (the last one of
    a bucket may be smaller), and shuffles the order of the batches; so a batch never
    mixes sizes, and every picture is seen once per epoch.  The order of epoch ``e``
    depends only on ``(seed, e)``.
    """

    def __init__(self, buckets_of: list[tuple[int, int]], batch_size: int, seed: int) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be positive")
        self.batch_size = batch_size
        self.seed = seed
        self._members: dict[tuple[int, int], list[int]] = {}
        for index, bucket in enumerate(buckets_of):
            self._members.setdefault(bucket, []).append(index)
        self.batches_per_epoch = sum(math.ceil(len(m) / batch_size) for m in self._members.values())
        self._cached: tuple[int, list[list[int]]] | None = None

    def epoch(self, epoch: int) -> list[list[int]]:
        if self._cached is not None and self._cached[0] == epoch:
            return self._cached[1]
        rng = np.random.default_rng(stream_seed(self.seed, STREAM_ORDER, epoch))
        batches: list[list[int]] = []
        for bucket in sorted(self._members):
            members = list(self._members[bucket])
            rng.shuffle(members)
            batches += [members[k : k + self.batch_size] for k in range(0, len(members), self.batch_size)]
        order = rng.permutation(len(batches))
        result = [batches[i] for i in order]
        self._cached = (epoch, result)
        return result

    def batch(self, number: int) -> tuple[int, list[int]]:
        """``(epoch, example indices)`` of global batch ``number``."""
        epoch, position = divmod(number, self.batches_per_epoch)
        return epoch, self.epoch(epoch)[position]


@dataclass
class RenderedBatch:
    """Pixels in [-1, 1] as ``(batch, 3, height, width)`` float32, captions, SDXL size ids."""

    pixels: np.ndarray
    captions: list[str]
    #: Per example ``(orig_h, orig_w, crop_top, crop_left, target_h, target_w)``: SDXL's
    #: micro-conditioning, which tells the model how the training picture was cut.
    time_ids: list[tuple[int, int, int, int, int, int]]
    files: list[str]


def render_batch(
    dataset: Dataset,
    indices: list[int],
    number: int,
    seed: int,
    *,
    center_crop: bool = False,
    flip: bool = True,
) -> RenderedBatch:
    """Crop (random or centre) and maybe mirror each example of global batch ``number``.

    The crop position and flip of each example come from ``(seed, number, position)``,
    so a resumed run renders this batch identically.
    """
    arrays, captions, time_ids, files = [], [], [], []
    for position, index in enumerate(indices):
        example = dataset.examples[index]
        rng = np.random.default_rng(stream_seed(seed, STREAM_AUGMENT, number, position))
        target_w, target_h = example.bucket
        width, height = example.image.size
        if center_crop:
            left, top = (width - target_w) // 2, (height - target_h) // 2
        else:
            left = int(rng.integers(0, width - target_w + 1))
            top = int(rng.integers(0, height - target_h + 1))
        mirrored = bool(flip and rng.random() < 0.5)
        image = example.image.crop((left, top, left + target_w, top + target_h))
        if mirrored:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            left = width - target_w - left
        arrays.append(np.asarray(image.convert("RGB"), dtype=np.float32).transpose(2, 0, 1) / 127.5 - 1.0)
        captions.append(example.caption)
        scale_h = example.original_size[0] / height
        scale_w = example.original_size[1] / width
        time_ids.append(
            (
                example.original_size[0],
                example.original_size[1],
                round(top * scale_h),
                round(left * scale_w),
                target_h,
                target_w,
            )
        )
        files.append(example.file)
    return RenderedBatch(pixels=np.stack(arrays), captions=captions, time_ids=time_ids, files=files)
