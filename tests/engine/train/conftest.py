"""Fixtures for the training tests: tiny data sets built in tmp folders, one thread.

The tiny models are far too small for intra-op threads to pay; on shared CPUs a
second torch thread mostly spins (measured here: 10 tiny training steps took 1.7 s
with one thread and 12.7 s with two on a loaded 2-core machine), so these tests run
torch single-threaded and put the setting back afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

REPO = Path(__file__).resolve().parents[3]
SAMPLE_SELFIE = REPO / "engine" / "assets" / "sample_selfie.jpg"
COLOURS = [
    ((200, 30, 30), (30, 30, 200)),
    ((30, 200, 30), (240, 240, 240)),
    ((20, 20, 20), (220, 220, 40)),
    ((200, 120, 20), (60, 160, 160)),
]


@pytest.fixture(scope="package", autouse=True)
def one_torch_thread() -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def train_settings(cache_dir: Path):
    from engine.settings import EngineSettings

    # The safety checker would try to download its weights; the tiny pictures need none.
    return EngineSettings(_env_file=None, cache_dir=cache_dir, safety_checker="off")


def make_colour_data(folder: Path) -> Path:
    """Four two-colour pictures, wider than tall, so random crops and flips both matter."""
    folder.mkdir(parents=True, exist_ok=True)
    for index, (left, right) in enumerate(COLOURS):
        pixels = np.zeros((64, 80, 3), dtype=np.uint8)
        pixels[:, :40] = left
        pixels[:, 40:] = right
        Image.fromarray(pixels).save(folder / f"colour-{index}.png")
    return folder


def make_portrait_data(folder: Path) -> Path:
    """The sample selfie mirrored, rotated and shifted, plus a picture without a face and a broken file."""
    folder.mkdir(parents=True, exist_ok=True)
    selfie = Image.open(SAMPLE_SELFIE).convert("RGB")
    selfie.save(folder / "original.jpg")
    ImageOps.mirror(selfie).save(folder / "mirrored.png")
    selfie.rotate(8, resample=Image.Resampling.BICUBIC, fillcolor=(128, 128, 128)).save(folder / "rotated.webp")
    Image.fromarray(np.roll(np.asarray(selfie), (30, -40), axis=(0, 1))).save(folder / "shifted.jpg")
    Image.new("RGB", (200, 160), (90, 140, 200)).save(folder / "noface.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (folder / "original.txt").write_text("a close-up photo of {trigger} person, smiling\n")
    (folder / "notes.md").write_text("not a picture")
    return folder


@pytest.fixture
def colour_data(tmp_path: Path) -> Path:
    return make_colour_data(tmp_path / "colours")


@pytest.fixture
def portrait_data(tmp_path: Path) -> Path:
    return make_portrait_data(tmp_path / "portraits")
