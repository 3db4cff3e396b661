"""``mmpp bench soak`` (bench/soak.py): a small run through its real pieces reports figures that add up, and bad
options are refused in one line.  The figures of a full run are in docs/benchmarks.md."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bench import soak


def test_a_small_soak_delivers_everything_and_reports_the_broker_figures(
    tiny_weights_cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    arguments = ["--jobs", "4", "--maxmemory-mb", "8", "--broker-max-jobs", "2", "--broker-max-bytes-mb", "2"]
    assert soak.main([*arguments, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["delivered"], result["failed"], result["duplicated"], result["lost"]) == (4, 0, 0, 0)
    assert result["redis_peak_bytes"] < result["redis_maxmemory_bytes"] == 8 * 2**20
    assert result["redis_refused_writes"] == 0 and result["results_left_in_backend"] == 0
    assert 1 <= result["most_jobs_in_broker"] <= 2
    assert result["kept_selfie_bytes"] < result["photo_bytes"] / 4 and result["pass"] is True


@pytest.fixture
def tiny_weights_cache(cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The session's tiny weights, built before the soak's worker starts (it reads MMPP_CACHE_DIR)."""
    from engine.models import build_tiny_weights
    from mmpp.catalogue import load_catalogue

    build_tiny_weights(cache_dir / "tiny", "sd15", load_catalogue().names)
    monkeypatch.setenv("MMPP_CACHE_DIR", str(cache_dir))
    return cache_dir


@pytest.mark.parametrize("option", [["--jobs", "0"], ["--maxmemory-mb", "1"], ["--broker-max-jobs", "x"]])
def test_bad_options_are_refused_in_one_line(option: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert soak.main(option) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error[INVALID_REQUEST]: mmpp bench soak:")
