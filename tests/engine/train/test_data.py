"""The data side of training: reading folders, faces, captions, buckets, batches (no model)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.train.data import (
    BatchPlan,
    cover,
    load_dataset,
    make_buckets,
    nearest_bucket,
    render_batch,
)
from mmpp.errors import ErrorCode, MmppError


def error_of(call) -> MmppError:
    with pytest.raises(MmppError) as caught:
        call()
    return caught.value


def test_portrait_data_crops_faces_and_lists_what_it_skipped(portrait_data: Path) -> None:
    dataset = load_dataset(portrait_data, "portrait", 64)
    used = sorted(example.file for example in dataset.examples)
    assert used == ["mirrored.png", "original.jpg", "rotated.webp", "shifted.jpg"]
    skipped = {skip.file: skip.code for skip in dataset.skipped}
    assert skipped == {"noface.png": "NO_FACE", "broken.jpg": "NOT_AN_IMAGE"}
    assert all(example.image.size == (64, 64) for example in dataset.examples)
    captions = {example.file: example.caption for example in dataset.examples}
    assert captions["original.jpg"] == "a close-up photo of mmppface person, smiling"
    assert captions["mirrored.png"] == "a photo of mmppface person"
    report = dataset.report()
    assert report["images_found"] == 6 and report["images_used"] == 4 and report["images_skipped"] == 2
    assert {(entry["file"], entry["code"]) for entry in report["skipped"]} == {
        ("noface.png", "NO_FACE"),
        ("broken.jpg", "NOT_AN_IMAGE"),
    }
    assert all(entry["reason"] for entry in report["skipped"])
    assert report["ignored_files"] == ["notes.md"]
    assert report["captions_from_files"] == 1 and report["captions_from_template"] == 3
    lines = dataset.summary_lines()
    assert lines[0].startswith("data: 6 images") and any("noface.png: NO_FACE" in line for line in lines)


def test_faces_too_small_for_the_resolution_are_skipped(portrait_data: Path) -> None:
    # The selfie's face crop is about 330 px: more than 2x short of 1024 px, so nothing is left.
    error = error_of(lambda: load_dataset(portrait_data, "portrait", 1024))
    assert error.code is ErrorCode.NO_FACE
    assert "4 IMAGE_TOO_SMALL" in error.message


def test_style_captions_triggers_and_the_data_hash(colour_data: Path, tmp_path: Path) -> None:
    (colour_data / "colour-0.txt").write_text("{trigger} poster, two colours")
    dataset = load_dataset(colour_data, "style", 64, trigger="zqx")
    captions = sorted(example.caption for example in dataset.examples)
    assert captions == ["zqx poster, two colours", *["zqx style portrait"] * 3]
    copy = tmp_path / "elsewhere"
    shutil.copytree(colour_data, copy)
    assert load_dataset(copy, "style", 64).data_sha256 == dataset.data_sha256
    (copy / "colour-0.txt").write_text("{trigger} poster, three colours")
    assert load_dataset(copy, "style", 64).data_sha256 != dataset.data_sha256
    assert len(dataset.data_sha256) == 64


@pytest.mark.parametrize(
    ("make", "kind", "code"),
    [
        (lambda folder: None, "style", ErrorCode.INVALID_REQUEST),  # missing folder
        (lambda folder: folder.mkdir(), "style", ErrorCode.INVALID_REQUEST),  # empty folder
        (
            lambda folder: (
                folder.mkdir(),
                (folder / "a.jpg").write_bytes(b"nope"),
                (folder / "b.png").write_text("x"),
            ),
            "style",
            ErrorCode.NOT_AN_IMAGE,
        ),
        (
            lambda folder: (folder.mkdir(), Image.new("RGB", (96, 96), "red").save(folder / "red.png")),
            "portrait",
            ErrorCode.NO_FACE,
        ),
    ],
    ids=["missing", "empty", "unreadable", "no-faces"],
)
def test_unusable_folders_are_refused_with_a_code(tmp_path: Path, make, kind: str, code: ErrorCode) -> None:
    folder = tmp_path / "data"
    make(folder)
    error = error_of(lambda: load_dataset(folder, kind, 64))  # type: ignore[arg-type]
    assert error.code is code
    assert "\n" not in error.message and str(folder) in error.message


def test_sdxl_buckets_keep_the_area_and_pick_by_aspect_ratio() -> None:
    buckets = make_buckets(1024, True)
    assert (1024, 1024) in buckets and len(buckets) == 5
    for width, height in buckets:
        assert width % 64 == 0 and height % 64 == 0
        assert 0.9 < width * height / 1024**2 < 1.1
    assert nearest_bucket((3000, 4000), buckets) == (896, 1152)
    assert nearest_bucket((4000, 3000), buckets) == (1152, 896)
    assert nearest_bucket((1000, 1010), buckets) == (1024, 1024)
    assert nearest_bucket((2000, 3000), buckets)[0] < nearest_bucket((3000, 4000), buckets)[0]
    assert make_buckets(64, True) == [(64, 64)]
    assert make_buckets(512, False) == [(512, 512)]
    covered = cover(Image.new("RGB", (400, 300)), (1152, 896))
    assert covered.width >= 1152 and covered.height >= 896 and min(covered.width - 1152, covered.height - 896) == 0


def test_batches_cover_each_epoch_once_never_mix_buckets_and_depend_only_on_the_seed() -> None:
    buckets = [(64, 64)] * 5 + [(64, 96)] * 3
    plan = BatchPlan(buckets, batch_size=2, seed=7)
    assert plan.batches_per_epoch == 3 + 2
    for epoch in range(3):
        batches = plan.epoch(epoch)
        assert sorted(index for batch in batches for index in batch) == list(range(8))
        assert all(len({buckets[index] for index in batch}) == 1 for batch in batches)
    again = BatchPlan(buckets, batch_size=2, seed=7)
    assert [again.batch(number) for number in range(12)] == [plan.batch(number) for number in range(12)]
    other = BatchPlan(buckets, batch_size=2, seed=8)
    assert [other.batch(number) for number in range(12)] != [plan.batch(number) for number in range(12)]
    assert plan.batch(5) == (1, plan.epoch(1)[0])


def test_crops_and_flips_are_random_but_reproducible(colour_data: Path) -> None:
    dataset = load_dataset(colour_data, "style", 64)
    first = [render_batch(dataset, [0, 1], number, seed=3) for number in range(8)]
    second = [render_batch(dataset, [0, 1], number, seed=3) for number in range(8)]
    for a, b in zip(first, second, strict=True):
        assert np.array_equal(a.pixels, b.pixels) and a.time_ids == b.time_ids
    assert first[0].pixels.shape == (2, 3, 64, 64) and first[0].pixels.dtype == np.float32
    assert first[0].pixels.min() >= -1.0 and first[0].pixels.max() <= 1.0
    # Example 0 is red on the left and blue on the right: a mirrored crop has blue on the left.
    left_red = [bool(batch.pixels[0, 0, 32, 0] > 0) for batch in first]
    assert True in left_red and False in left_red
    centred = render_batch(dataset, [0], 0, seed=3, center_crop=True, flip=False)
    assert centred.time_ids[0][2:4] == (0, 8)
