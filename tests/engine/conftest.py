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


def forbid_weight_reads(monkeypatch: pytest.MonkeyPatch, pipeline: object) -> None:
    """Make every way a job could read weights from disk fail the test: a style switch must come from
    the adapters already in memory (the engine loads every style's LoRA once, at start-up)."""
    import safetensors
    import safetensors.torch
    import torch

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("weights were read from disk during a job")

    monkeypatch.setattr(safetensors, "safe_open", forbidden)
    monkeypatch.setattr(safetensors.torch, "load_file", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(pipeline, "load_lora_weights", forbidden)
