"""The numbers a sweep is judged by: identity, prompt alignment (CLIP), FID/KID.

Why our own Fréchet distance and KID instead of torchmetrics, clean-fid or
pytorch-fid: all of them require torchvision (torchmetrics' image metrics go
through torch-fidelity, which does too), and torchvision pulls a 5.5 GB CUDA
build of torch into this CPU-only project.  The formulas are short; they
follow pytorch-fid's ``calculate_frechet_distance`` and torch-fidelity's KID
(polynomial-kernel MMD, unbiased estimator, averaged over random subsets),
including how those handle numerical trouble, and the tests check them
against closed forms.

A metric whose model cannot be had raises :class:`MetricUnavailableError` with
the reason; callers print that reason where the number would stand, never a
made-up value.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.faces import SAME_PERSON_DISTANCE
from mmpp.errors import MmppError

if TYPE_CHECKING:
    from PIL import Image

    from engine.faces import DetectedFace, FaceAnalyzer

logger = logging.getLogger(__name__)

#: The CLIP used when ``MMPP_CLIP_MODEL`` is not set: the text encoder family of SD 1.5.
DEFAULT_CLIP_MODEL = "openai/clip-vit-large-patch14"
#: A file that the tests' tiny random CLIP (``tests/support/tiny_clip.py``) leaves in its folder,
#: so any CLIP loaded from there is labelled test-sized wherever its numbers are shown.
TEST_SIZED_MARKER = "mmpp-test-sized.json"
#: torchmetrics' CLIPScore scale: 100 x cosine, floored at 0.
CLIP_SCORE_SCALE = 100.0


class MetricUnavailableError(Exception):
    """A metric's model or library cannot be had here; ``reason`` says why, for the report."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = " ".join(reason.split())


# --------------------------------------------------------------------------- Fréchet distance and KID


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased, N-1) covariance of ``features`` [N, D], as pytorch-fid computes them."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"need at least 2 feature vectors in an [N, D] array, got shape {features.shape}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def _trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray, eps: float) -> float:
    """``tr(sqrtm(sigma1 @ sigma2))`` the way pytorch-fid does it, with its fallbacks.

    With scipy: ``scipy.linalg.sqrtm`` of the product; if that is not finite
    (singular covariances, e.g. fewer samples than dimensions) ``eps`` is added
    to both diagonals and it is tried again; an imaginary part larger than
    1e-3 on the diagonal is an error, a smaller one is numerical noise and
    dropped.  Without scipy (it is not a runtime dependency of the engine) the
    same trace comes from symmetric eigen-decompositions:
    ``tr sqrt(S1 S2) = tr sqrt(S1^½ S2 S1^½)``, which is exact for positive
    semi-definite matrices.
    """
    try:
        from scipy import linalg
    except ImportError:
        values, vectors = np.linalg.eigh(sigma1)
        root1 = (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T
        inner = root1 @ sigma2 @ root1
        inner_values = np.linalg.eigvalsh((inner + inner.T) / 2.0)
        return float(np.sqrt(np.clip(inner_values, 0.0, None)).sum())
    with warnings.catch_warnings():
        # Singular covariances are normal for small sets (fewer pictures than dimensions);
        # the result is checked below, so scipy's warning would only alarm.
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(sigma1.dot(sigma2))
        if not np.isfinite(covmean).all():
            logger.info("fid: singular product of covariances; adding %g to the diagonals", eps)
            offset = np.eye(sigma1.shape[0]) * eps
            covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            largest = np.max(np.abs(covmean.imag))
            raise ValueError(f"the matrix square root has an imaginary component of {largest:.3g}")
        covmean = covmean.real
    return float(np.trace(covmean))


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6
) -> float:
    """Fréchet distance between two Gaussians: ``|mu1-mu2|² + tr(S1 + S2 - 2 sqrt(S1 S2))``.

    This is FID when the Gaussians are fitted to Inception pool features of
    two image sets.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, dtype=np.float64)), np.atleast_1d(np.asarray(mu2, dtype=np.float64))
    sigma1, sigma2 = (
        np.atleast_2d(np.asarray(sigma1, dtype=np.float64)),
        np.atleast_2d(np.asarray(sigma2, dtype=np.float64)),
    )
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise ValueError("means and covariances of both sets must have matching dimensions")
    diff = mu1 - mu2
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2.0 * _trace_sqrt_product(sigma1, sigma2, eps))


def fid_from_features(features1: np.ndarray, features2: np.ndarray) -> float:
    """FID between two feature sets [N, D] (each N >= 2; far more than D for a trustworthy figure)."""
    return frechet_distance(*feature_statistics(features1), *feature_statistics(features2))


def polynomial_mmd2_unbiased(
    x: np.ndarray, y: np.ndarray, degree: int = 3, gamma: float | None = None, coef0: float = 1.0
) -> float:
    """Unbiased MMD² with the kernel ``k(a, b) = (gamma a·b + coef0)^degree``, gamma = 1/D by default.

    The estimator of Bińkowski et al. (2018) as torch-fidelity computes it:
    the within-set sums leave out the diagonal (``k(a, a)``), the cross term
    keeps every pair.  Sets may differ in size.
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    m, n = x.shape[0], y.shape[0]
    if m < 2 or n < 2:
        raise ValueError("each set needs at least 2 feature vectors")
    gamma = 1.0 / x.shape[1] if gamma is None else gamma
    k_xx = (gamma * x @ x.T + coef0) ** degree
    k_yy = (gamma * y @ y.T + coef0) ** degree
    k_xy = (gamma * x @ y.T + coef0) ** degree
    within_x = (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
    within_y = (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
    return float(within_x + within_y - 2.0 * k_xy.mean())


@dataclass(frozen=True)
class KidResult:
    """KID as mean and standard deviation of MMD² over ``subsets`` random subsets of ``subset_size``."""

    mean: float
    std: float
    subsets: int
    subset_size: int


def kernel_inception_distance(
    features1: np.ndarray,
    features2: np.ndarray,
    subsets: int = 100,
    subset_size: int = 1000,
    degree: int = 3,
    gamma: float | None = None,
    coef0: float = 1.0,
    seed: int = 0,
) -> KidResult:
    """KID between two feature sets, as torch-fidelity computes it (same defaults).

    torch-fidelity refuses sets smaller than ``subset_size``; here the subset
    size shrinks to the smaller set instead and the result says which size
    was used, because a sweep of a few dozen pictures is the normal case and
    the report shows the sample size next to the figure.
    """
    features1, features2 = np.asarray(features1, dtype=np.float64), np.asarray(features2, dtype=np.float64)
    size = min(subset_size, features1.shape[0], features2.shape[0])
    if size < 2:
        raise ValueError("KID needs at least 2 feature vectors in each set")
    rng = np.random.RandomState(seed)
    values = np.empty(subsets)
    for index in range(subsets):
        part1 = features1[rng.choice(features1.shape[0], size, replace=False)]
        part2 = features2[rng.choice(features2.shape[0], size, replace=False)]
        values[index] = polynomial_mmd2_unbiased(part1, part2, degree=degree, gamma=gamma, coef0=coef0)
    return KidResult(mean=float(values.mean()), std=float(values.std()), subsets=subsets, subset_size=size)


# --------------------------------------------------------------------------- identity


@dataclass(frozen=True)
class IdentityScore:
    """How well a picture kept the selfie's person.

    ``distance`` is dlib's Euclidean distance between 128-d face embeddings
    (``None`` when no face was found); ``same_person`` is ``distance < 0.6``,
    dlib's documented same-person threshold, and is false without a face.
    """

    face_found: bool
    faces: int
    distance: float | None
    same_person: bool


class IdentityScorer:
    """Face found? Same person as the selfie?  On the engine's own dlib models.

    A style that turns faces into buildings scores low twice: no face is
    detected, and where one is, its embedding lies far from the selfie's.
    """

    def __init__(self, analyzer: FaceAnalyzer) -> None:
        self.analyzer = analyzer

    def reference(self, image: Image.Image, face: DetectedFace | None = None) -> np.ndarray:
        """The selfie's embedding (raises ``MmppError`` NO_FACE / MULTIPLE_FACES like the engine)."""
        return self.analyzer.embedding(image, face)

    def score(self, reference: np.ndarray, picture: Image.Image, face: DetectedFace | None = None) -> IdentityScore:
        """Score one generated picture against a selfie embedding from :meth:`reference`.

        Unlike a selfie, a generated picture with two similar faces is not refused:
        the largest confident face is taken, since that is the one a viewer sees.
        """
        if face is None:
            boxes = self.analyzer.detect(picture)
            if not boxes:
                return IdentityScore(face_found=False, faces=0, distance=None, same_person=False)
            try:
                box = self.analyzer.choose(boxes)
            except MmppError:
                box = boxes[0]
            face = self.analyzer.landmarks(picture, box)
            count = len(boxes)
        else:
            count = 1
        distance = self.analyzer.distance(reference, self.analyzer.embedding(picture, face))
        return IdentityScore(
            face_found=True, faces=count, distance=distance, same_person=distance < SAME_PERSON_DISTANCE
        )


# --------------------------------------------------------------------------- CLIP score


_COMPEL_WEIGHT = re.compile(r"\)\s*[0-9]*\.?[0-9]+")
_COMPEL_SIGNS = re.compile(r"(?<=[\w)])[+\-]+(?=\s|,|$)")


def clip_text(prompt: str) -> str:
    """The prompt without Compel's weighting syntax, which CLIP would read as words.

    ``(oil painting)1.2 portrait, vivid++`` becomes ``oil painting portrait, vivid``.
    """
    text = _COMPEL_WEIGHT.sub(")", prompt)
    text = _COMPEL_SIGNS.sub("", text)
    text = re.sub(r"[()\[\]]", "", text)
    return " ".join(text.split())


def _offline() -> bool:
    return any(os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"} for name in (
        "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))  # fmt: skip


class ClipScorer:
    """CLIP score of (picture, prompt) pairs: ``100 * max(0, cos(image embedding, text embedding))``.

    The definition is torchmetrics' ``CLIPScore`` (Hessel et al. 2021 with
    w = 100 instead of 2.5), so figures compare with that library's.  Higher
    means the picture matches its prompt better; typical values for SD 1.5
    with ViT-L/14 lie around 25-35.
    """

    def __init__(self, model: Any, processor: Any, source: str, *, test_sized: bool) -> None:
        self.model = model
        self.processor = processor
        self.source = source
        self.test_sized = test_sized

    @property
    def label(self) -> str:
        if self.test_sized:
            return f"{self.source} (test-sized random CLIP: its scores are meaningless)"
        return self.source

    def score(self, images: Sequence[Image.Image], texts: Sequence[str]) -> list[float]:
        """One score per (image, text) pair; texts are cleaned of Compel syntax and cut at 77 tokens."""
        import torch

        if len(images) != len(texts):
            raise ValueError("one text per image")
        if not images:
            return []
        inputs = self.processor(
            text=[clip_text(text) for text in texts],
            images=[image.convert("RGB") for image in images],
            return_tensors="pt",
            padding=True,
            truncation=True,
        )
        with torch.inference_mode():
            output = self.model(**inputs)
        image_embeds = torch.nn.functional.normalize(output.image_embeds.float(), dim=-1)
        text_embeds = torch.nn.functional.normalize(output.text_embeds.float(), dim=-1)
        cosine = (image_embeds * text_embeds).sum(dim=-1)
        return [float(value) for value in (CLIP_SCORE_SCALE * cosine.clamp(min=0)).tolist()]


def load_clip_scorer(source: str | None = None) -> ClipScorer:
    """Load CLIP from a local folder or Hub id (``MMPP_CLIP_MODEL``, default ViT-L/14).

    The Hugging Face cache is tried first with ``local_files_only``; the Hub
    is asked only when ``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE`` are unset
    (without a network that attempt costs about a minute of retries, so set
    ``HF_HUB_OFFLINE=1`` on offline machines).  Raises
    :class:`MetricUnavailableError` with the reason when nothing loads.
    """
    source = source or os.environ.get("MMPP_CLIP_MODEL", "").strip() or DEFAULT_CLIP_MODEL
    try:
        from transformers import CLIPModel, CLIPProcessor
    except ImportError as error:
        raise MetricUnavailableError(f"transformers' CLIP classes cannot be imported ({error})") from None
    path = Path(source).expanduser()
    local = path.exists()
    if local and not (path / "config.json").exists():
        raise MetricUnavailableError(f"{path} has no config.json, so it is not a transformers CLIP folder")
    attempts = [True] if local or _offline() else [True, False]
    failure = ""
    for local_only in attempts:
        try:
            location = str(path) if local else source
            model = CLIPModel.from_pretrained(location, local_files_only=local_only)
            processor = CLIPProcessor.from_pretrained(location, local_files_only=local_only)
        except Exception as error:  # noqa: BLE001 - hub and loaders raise many types for "not here"
            failure = type(error).__name__
            continue
        model.eval()
        test_sized = local and (path / TEST_SIZED_MARKER).exists()
        return ClipScorer(model, processor, str(path) if local else source, test_sized=test_sized)
    where = "the local folder" if local else ("the local Hugging Face cache (offline)" if len(attempts) == 1 else
                                             "the local Hugging Face cache or the Hub")  # fmt: skip
    raise MetricUnavailableError(
        f"CLIP model '{source}' could not be loaded from {where} ({failure}); download it "
        f"(hf download {DEFAULT_CLIP_MODEL}) or set MMPP_CLIP_MODEL to a local folder"
    )
