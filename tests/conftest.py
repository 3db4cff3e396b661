"""Shared fixtures: the tiny engines are built once per test session.

The tiny model cache goes to ``MMPP_CACHE_DIR`` when set (``make test`` sets
it to ``var/cache`` so reruns skip the build) or to a session temp folder.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLE_SELFIE = REPO / "engine" / "assets" / "sample_selfie.jpg"


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    configured = os.environ.get("MMPP_CACHE_DIR")
    path = Path(configured) if configured else tmp_path_factory.mktemp("mmpp-cache")
    os.environ["MMPP_CACHE_DIR"] = str(path)
    return path


@pytest.fixture(scope="session")
def selfie_bytes() -> bytes:
    return SAMPLE_SELFIE.read_bytes()
