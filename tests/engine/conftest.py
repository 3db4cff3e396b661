from __future__ import annotations

from pathlib import Path

import pytest


def make_settings(cache_dir: Path, **overrides: object):
    from engine.settings import EngineSettings

    return EngineSettings(_env_file=None, cache_dir=cache_dir, **overrides)


@pytest.fixture(scope="session")
def catalogue():
    from mmpp.catalogue import load_catalogue

    return load_catalogue()


@pytest.fixture(scope="session")
def tiny_engine(cache_dir: Path, catalogue):
    from engine.pipeline import Engine

    return Engine.from_settings(make_settings(cache_dir), weights="tiny", catalogue=catalogue)


@pytest.fixture(scope="session")
def tiny_sdxl_engine(cache_dir: Path, catalogue):
    from engine.pipeline import Engine

    return Engine.from_settings(make_settings(cache_dir), weights="tiny-sdxl", catalogue=catalogue)


@pytest.fixture(scope="session")
def tiny_klein_engine(cache_dir: Path, catalogue):
    from engine.pipeline import Engine

    return Engine.from_settings(make_settings(cache_dir), weights="tiny-klein", catalogue=catalogue)
