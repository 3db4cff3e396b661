"""The identity metric on real photographs: the same person must score closer than another.

The astronaut (``engine/assets/sample_selfie.jpg``) against its mirror image
is the same person; scikit-image's cameraman is another.  dlib's HOG detector
only finds the cameraman's three-quarter face below its threshold, so his
box is given by hand (as in tests/engine/test_faces.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.evaluate.scorers import IdentityScorer
from engine.faces import SAME_PERSON_DISTANCE, FaceAnalyzer, FaceBox

skimage_data = pytest.importorskip("skimage.data")

SAMPLE_SELFIE = Path(__file__).resolve().parents[3] / "engine" / "assets" / "sample_selfie.jpg"
CAMERAMAN_FACE = FaceBox(left=205, top=125, right=278, bottom=198)


@pytest.fixture(scope="module")
def scorer() -> IdentityScorer:
    analyzer = FaceAnalyzer()
    analyzer.load()
    return IdentityScorer(analyzer)


def test_mirror_image_is_closer_than_another_person(scorer: IdentityScorer) -> None:
    astronaut = Image.open(SAMPLE_SELFIE).convert("RGB")
    reference = scorer.reference(astronaut)
    mirror = scorer.score(reference, astronaut.transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    cameraman_image = Image.fromarray(skimage_data.camera()).convert("RGB")
    cameraman = scorer.score(
        reference, cameraman_image, face=scorer.analyzer.landmarks(cameraman_image, CAMERAMAN_FACE)
    )
    assert mirror.face_found and cameraman.face_found
    assert mirror.distance is not None and cameraman.distance is not None
    assert mirror.distance < cameraman.distance
    assert mirror.same_person and mirror.distance < SAME_PERSON_DISTANCE
    assert not cameraman.same_person


def test_a_picture_without_a_face_scores_no_face(scorer: IdentityScorer) -> None:
    astronaut = Image.open(SAMPLE_SELFIE).convert("RGB")
    reference = scorer.reference(astronaut)
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, size=(128, 128, 3), dtype=np.uint8))
    score = scorer.score(reference, noise)
    assert not score.face_found and score.faces == 0
    assert score.distance is None and not score.same_person
