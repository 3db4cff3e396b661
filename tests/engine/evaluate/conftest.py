"""Fixtures for the evaluation tests: a tiny random CLIP and random Inception weights.

Both have the real architectures and on-disk formats, so the real loading
code runs on them; their numbers mean nothing, and the reports say so.
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.support.tiny_clip import build_tiny_clip

    return build_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


@pytest.fixture(scope="session")
def random_inception_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A state dict of a randomly initialised FID Inception (95 MB; not the standard weights)."""
    import torch

    from engine.evaluate.inception import FIDInceptionV3

    path = tmp_path_factory.mktemp("inception") / "random-inception.pth"
    with torch.random.fork_rng():
        torch.manual_seed(0)
        torch.save(FIDInceptionV3().state_dict(), path)
    return path
