"""Tests for engine/evaluate/scorers.py and inception.py: FID/KID against closed forms, CLIP, Inception.

The Fréchet distance between Gaussians has a closed form when the
covariances commute, and reduces to the squared mean distance when they are
equal; KID is checked against a direct double sum.  CLIP and Inception run
on random weights with the real architectures: their numbers are
meaningless, but the code paths (loading, preprocessing, labels) are real.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.evaluate.scorers import (
    MetricUnavailableError,
    clip_text,
    feature_statistics,
    fid_from_features,
    frechet_distance,
    kernel_inception_distance,
    load_clip_scorer,
    polynomial_mmd2_unbiased,
)


def random_spd(rng: np.random.Generator, size: int) -> np.ndarray:
    a = rng.normal(size=(size, size))
    return a @ a.T + size * np.eye(size) * 0.1


def symmetric_sqrt(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh(matrix)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def direct_frechet(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    """The textbook form, independent of the implementation: tr(S1 + S2 - 2 (S1^½ S2 S1^½)^½)."""
    root1 = symmetric_sqrt(s1)
    cross = symmetric_sqrt(root1 @ s2 @ root1)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * cross))


# --------------------------------------------------------------------------- Fréchet distance


def test_frechet_distance_of_identical_gaussians_is_zero() -> None:
    rng = np.random.default_rng(1)
    mu, sigma = rng.normal(size=6), random_spd(rng, 6)
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-8)


def test_frechet_distance_with_different_means_only_is_the_squared_mean_distance() -> None:
    rng = np.random.default_rng(2)
    sigma = random_spd(rng, 5)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    assert frechet_distance(mu1, sigma, mu2, sigma) == pytest.approx(float(np.sum((mu1 - mu2) ** 2)), rel=1e-8)


def test_frechet_distance_matches_closed_form_for_diagonal_covariances() -> None:
    # Commuting covariances: tr(S1 + S2 - 2 sqrt(S1 S2)) = sum (sqrt(a_i) - sqrt(b_i))².
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 16.0])
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    expected = 1.0 + 4.0 + (1 + 1 + 1)  # |Δμ|² = 5; (1-2)² + (2-1)² + (3-4)² = 3
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)
    # One dimension: N(0, 2²) vs N(3, 5²) → 3² + (2 - 5)² = 18.
    assert frechet_distance(np.array([0.0]), np.array([[4.0]]), np.array([3.0]), np.array([[25.0]])) == pytest.approx(
        18.0
    )


def test_frechet_distance_matches_direct_formula_with_and_without_scipy(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(3)
    mu1, mu2 = rng.normal(size=4), rng.normal(size=4)
    s1, s2 = random_spd(rng, 4), random_spd(rng, 4)
    expected = direct_frechet(mu1, s1, mu2, s2)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-7)
    monkeypatch.setitem(sys.modules, "scipy", None)  # the engine does not depend on scipy
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-7)


def test_fid_from_features_uses_sample_statistics() -> None:
    rng = np.random.default_rng(4)
    real = rng.normal(size=(400, 3))
    same = rng.normal(size=(400, 3))
    shifted = rng.normal(size=(400, 3)) + np.array([2.0, 0.0, 0.0])
    mu, sigma = feature_statistics(real)
    assert np.allclose(mu, real.mean(axis=0))
    assert sigma.shape == (3, 3) and np.allclose(sigma, np.cov(real, rowvar=False))
    assert fid_from_features(real, same) < 0.1
    assert fid_from_features(real, shifted) == pytest.approx(4.0, rel=0.15)
    with pytest.raises(ValueError, match="at least 2"):
        feature_statistics(real[:1])


def test_fid_survives_singular_covariances() -> None:
    # Fewer samples than dimensions, as in a small sweep: the covariances are singular.
    rng = np.random.default_rng(5)
    value = fid_from_features(rng.normal(size=(4, 16)), rng.normal(size=(3, 16)) + 1.0)
    assert np.isfinite(value) and value > 0


# --------------------------------------------------------------------------- KID


def test_polynomial_mmd_matches_a_direct_double_sum() -> None:
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(5, 3)), rng.normal(size=(4, 3)) + 0.5

    def k(a: np.ndarray, b: np.ndarray) -> float:
        return (a @ b / 3 + 1) ** 3

    xx = sum(k(x[i], x[j]) for i in range(5) for j in range(5) if i != j) / (5 * 4)
    yy = sum(k(y[i], y[j]) for i in range(4) for j in range(4) if i != j) / (4 * 3)
    xy = sum(k(x[i], y[j]) for i in range(5) for j in range(4)) / (5 * 4)
    assert polynomial_mmd2_unbiased(x, y) == pytest.approx(xx + yy - 2 * xy, rel=1e-10)


def test_kid_of_identical_sets_is_about_zero_and_of_shifted_sets_positive() -> None:
    rng = np.random.default_rng(7)
    features = rng.normal(size=(300, 32))
    same = kernel_inception_distance(features, features.copy(), subsets=20, subset_size=100)
    nudged = kernel_inception_distance(features, features + 0.3, subsets=20, subset_size=100)
    shifted = kernel_inception_distance(features, features + 1.0, subsets=20, subset_size=100)
    # Subsets of one finite set share elements, which biases the estimate slightly below 0
    # (by O(1/n)); against any real difference it is nothing.
    assert abs(same.mean) < 0.01 * shifted.mean
    assert abs(same.mean) < nudged.mean < shifted.mean
    assert shifted.subset_size == 100 and shifted.subsets == 20
    independent = kernel_inception_distance(features, rng.normal(size=(300, 32)), subsets=20, subset_size=100)
    assert abs(independent.mean) < 3 * independent.std


def test_kid_shrinks_the_subset_to_the_smaller_set() -> None:
    rng = np.random.default_rng(8)
    result = kernel_inception_distance(rng.normal(size=(6, 4)), rng.normal(size=(5, 4)), subsets=5)
    assert result.subset_size == 5 and np.isfinite(result.mean)
    with pytest.raises(ValueError, match="at least 2"):
        kernel_inception_distance(rng.normal(size=(1, 4)), rng.normal(size=(5, 4)))


# --------------------------------------------------------------------------- CLIP


def test_clip_text_drops_compel_weighting_syntax() -> None:
    assert clip_text("(oil painting)1.2 portrait of a person, vivid++ colors") == (
        "oil painting portrait of a person, vivid colors"
    )
    assert clip_text("anime portrait, (soft light)- , clean") == "anime portrait, soft light , clean"


def test_clip_score_on_a_test_sized_clip(tiny_clip: Path) -> None:
    scorer = load_clip_scorer(str(tiny_clip))
    assert scorer.test_sized and "test-sized" in scorer.label
    images = [Image.new("RGB", (64, 64), (200, 30, 30)), Image.new("RGB", (48, 80), (10, 10, 240))]
    scores = scorer.score(images, ["anime portrait of a person", "(oil painting)1.2 portrait of a person"])
    assert len(scores) == 2 and all(0.0 <= score <= 100.0 for score in scores)
    assert scorer.score(images, ["anime portrait of a person"] * 2)[0] == pytest.approx(scores[0], abs=1e-4)


def test_clip_model_from_environment_and_missing_models_give_reasons(
    tiny_clip: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MMPP_CLIP_MODEL", str(tiny_clip))
    assert load_clip_scorer().source == str(tiny_clip)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MetricUnavailableError, match="could not be loaded from the local Hugging Face cache"):
        load_clip_scorer("mmpp-tests/no-such-clip")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MetricUnavailableError, match=r"no config\.json"):
        load_clip_scorer(str(tmp_path / "empty"))


# --------------------------------------------------------------------------- Inception


def test_inception_is_unavailable_without_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from engine.evaluate.inception import find_inception_weights, load_inception

    monkeypatch.delenv("MMPP_INCEPTION_WEIGHTS", raising=False)
    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    try:
        assert find_inception_weights() is None
        with pytest.raises(MetricUnavailableError, match="Inception weights unavailable"):
            load_inception()
    finally:
        torch.hub.set_dir(previous)
    with pytest.raises(MetricUnavailableError, match="does not exist"):
        load_inception(tmp_path / "pt_inception-2015-12-05-6726825d.pth")
    wrong = tmp_path / "wrong.pth"
    torch.save({"fc.weight": torch.zeros(3, 3)}, wrong)
    with pytest.raises(MetricUnavailableError, match="do not fit"):
        load_inception(wrong)


def test_inception_features_from_a_local_weight_file(random_inception_weights: Path) -> None:
    from engine.evaluate.inception import FEATURES, load_inception

    extractor = load_inception(random_inception_weights)
    assert not extractor.standard and "NON-STANDARD" in extractor.label
    images = [Image.new("RGB", (40, 40), (90, 120, 200)), Image.new("RGB", (64, 32), (250, 250, 10))]
    features = extractor.features(images)
    assert features.shape == (2, FEATURES) and np.isfinite(features).all()
    assert not np.allclose(features[0], features[1], rtol=1e-3, atol=0.0)


def test_tensorflow_resize_keeps_constants_and_native_size() -> None:
    import torch

    from engine.evaluate.inception import resize_like_tensorflow1

    constant = torch.full((1, 3, 20, 30), 77.0)
    assert torch.allclose(resize_like_tensorflow1(constant, 299), torch.full((1, 3, 299, 299), 77.0))
    native = torch.rand(1, 3, 299, 299)
    assert torch.equal(resize_like_tensorflow1(native, 299), native)
