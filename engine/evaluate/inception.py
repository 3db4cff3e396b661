"""The FID Inception v3 feature extractor, ported so it needs torch only.

Published FID and KID figures use the TensorFlow Inception v3 graph of
2015-12-05; pytorch-fid and torch-fidelity ship PyTorch ports of it whose
blocks differ from torchvision's Inception in a few places (average pools
that ignore padding, a max pool in the last block).  Both libraries require
torchvision, which pulls a 5.5 GB CUDA torch into this CPU project, so the
network is reproduced here.  The architecture, the block patches and the
TensorFlow-1.x-exact bilinear resize are adapted from torch-fidelity 0.4.0
(``feature_extractor_inceptionv3.py``, ``interpolate_compat_tensorflow.py``;
Copyright 2020 Anton Obukhov, Apache License 2.0), which itself adapts
pytorch-fid's ``inception.py`` (Copyright Maximilian Seitzer, Apache License
2.0).

The weights are never downloaded: ``MMPP_INCEPTION_WEIGHTS`` names a local
``pt_inception-2015-12-05-6726825d.pth`` (pytorch-fid) or
``weights-inception-2015-12-05-6726825d.pth`` (torch-fidelity) file; both use
the parameter names of this module.  Failing that, torch hub's checkpoint
folder is searched for those names, where either library leaves them.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the conventional name
from torch import nn

from engine.evaluate.scorers import MetricUnavailableError

if TYPE_CHECKING:
    from PIL import Image

#: File names under which pytorch-fid and torch-fidelity store the standard weights.
STANDARD_WEIGHT_NAMES = ("pt_inception-2015-12-05-6726825d.pth", "weights-inception-2015-12-05-6726825d.pth")
#: torch hub names checkpoints after the first hex digits of their SHA-256.
STANDARD_SHA256_PREFIX = "6726825d"
INPUT_SIZE = 299
FEATURES = 2048


class BasicConv2d(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, **kwargs: object) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


def _avg_pool_tf(x: torch.Tensor) -> torch.Tensor:
    # TensorFlow's average pool leaves the zero padding out of the average.
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    def __init__(self, in_channels: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch5x5 = self.branch5x5_2(self.branch5x5_1(x))
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), branch5x5, branch3x3dbl, self.branch_pool(_avg_pool_tf(x))], 1)


class InceptionB(nn.Module):
    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), branch3x3dbl, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionC(nn.Module):
    def __init__(self, in_channels: int, channels_7x7: int) -> None:
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch7x7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        branch7x7dbl = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            branch7x7dbl = layer(branch7x7dbl)
        return torch.cat([self.branch1x1(x), branch7x7, branch7x7dbl, self.branch_pool(_avg_pool_tf(x))], 1)


class InceptionD(nn.Module):
    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch3x3 = self.branch3x3_2(self.branch3x3_1(x))
        branch7x7x3 = self.branch7x7x3_1(x)
        for layer in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            branch7x7x3 = layer(branch7x7x3)
        return torch.cat([branch3x3, branch7x7x3, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionE(nn.Module):
    """Both E blocks; the TF graph's second one pools by max instead of average (``max_pool``)."""

    def __init__(self, in_channels: int, *, max_pool: bool) -> None:
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(in_channels, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch3x3 = self.branch3x3_1(x)
        branch3x3 = torch.cat([self.branch3x3_2a(branch3x3), self.branch3x3_2b(branch3x3)], 1)
        branch3x3dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        branch3x3dbl = torch.cat([self.branch3x3dbl_3a(branch3x3dbl), self.branch3x3dbl_3b(branch3x3dbl)], 1)
        pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.max_pool else _avg_pool_tf(x)
        return torch.cat([self.branch1x1(x), branch3x3, branch3x3dbl, self.branch_pool(pooled)], 1)


class FIDInceptionV3(nn.Module):
    """Inception v3 up to the 2048-d pool features (the ``fc`` layer is kept so the weight files load)."""

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, max_pool=False)
        self.Mixed_7c = InceptionE(2048, max_pool=True)
        self.fc = nn.Linear(2048, 1008)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: [N, 3, 299, 299] float pixel values in 0-255; returns [N, 2048] pool features."""
        x = (x - 128.0) / 128.0
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for block in (
            self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
            self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c,
        ):  # fmt: skip
            x = block(x)
        return torch.flatten(F.adaptive_avg_pool2d(x, output_size=(1, 1)), 1)


def resize_like_tensorflow1(image: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize of [N, C, H, W] to ``size`` x ``size`` as TF 1.x did it (align_corners=False).

    The FID graph resized with TensorFlow's kernel, whose sampling grid
    differs from PyTorch's ``interpolate``; matching it matters for
    comparable figures (torch-fidelity's "slow", bit-exact-on-CPU variant).
    """
    _, _, height, width = image.shape
    scale_x, scale_y = width / size, height / size
    grid_x = torch.arange(size, dtype=image.dtype) * scale_x
    x_lo = grid_x.long()
    x_hi = (x_lo + 1).clamp_max(width - 1)
    dx = (grid_x - x_lo.to(image.dtype)).view(1, 1, 1, size)
    grid_y = torch.arange(size, dtype=image.dtype) * scale_y
    y_lo = grid_y.long()
    y_hi = (y_lo + 1).clamp_max(height - 1)
    dy = (grid_y - y_lo.to(image.dtype)).view(1, 1, size, 1)
    top = image[:, :, y_lo, :]
    bottom = image[:, :, y_hi, :]
    top = top[:, :, :, x_lo] + (top[:, :, :, x_hi] - top[:, :, :, x_lo]) * dx
    bottom = bottom[:, :, :, x_lo] + (bottom[:, :, :, x_hi] - bottom[:, :, :, x_lo]) * dx
    return top + (bottom - top) * dy


class InceptionFeatures:
    """Images → 2048-d Inception pool features, the input of FID and KID."""

    name = "inception-v3-2015-12-05"

    def __init__(self, model: FIDInceptionV3, weights: Path, *, standard: bool, batch_size: int = 16) -> None:
        self.model = model
        self.weights = weights
        self.standard = standard
        self.batch_size = batch_size

    @property
    def label(self) -> str:
        if self.standard:
            return f"Inception v3 (2015-12-05 FID weights, {self.weights.name})"
        return (
            f"Inception v3 with NON-STANDARD weights {self.weights.name} (SHA-256 does not start with "
            f"{STANDARD_SHA256_PREFIX}): FID/KID not comparable with published figures"
        )

    def features(self, images: Sequence[Image.Image]) -> np.ndarray:
        """[len(images), 2048] float64; each image is resized on its own, so sizes may differ."""
        rows: list[np.ndarray] = []
        for start in range(0, len(images), self.batch_size):
            batch = []
            for image in images[start : start + self.batch_size]:
                pixels = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32).copy())
                batch.append(resize_like_tensorflow1(pixels.permute(2, 0, 1).unsqueeze(0), INPUT_SIZE))
            with torch.inference_mode():
                rows.append(self.model(torch.cat(batch)).double().numpy())
        return np.concatenate(rows) if rows else np.zeros((0, FEATURES))


def find_inception_weights() -> Path | None:
    """``MMPP_INCEPTION_WEIGHTS``, else a standard file in torch hub's checkpoint folder, else ``None``."""
    configured = os.environ.get("MMPP_INCEPTION_WEIGHTS", "").strip()
    if configured:
        return Path(configured).expanduser()
    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    for name in STANDARD_WEIGHT_NAMES:
        if (checkpoints / name).is_file():
            return checkpoints / name
    return None


def load_inception(weights: Path | None = None) -> InceptionFeatures:
    """Load the extractor from a local weight file; :class:`MetricUnavailableError` when there is none."""
    weights = weights or find_inception_weights()
    hint = (
        f"put {STANDARD_WEIGHT_NAMES[0]} (pytorch-fid's release) on this machine and set MMPP_INCEPTION_WEIGHTS to it"
    )
    if weights is None:
        raise MetricUnavailableError(f"Inception weights unavailable: none configured or cached; {hint}")
    if not weights.is_file():
        raise MetricUnavailableError(f"Inception weights unavailable: {weights} does not exist; {hint}")
    try:
        state = torch.load(str(weights), map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - pickle, zip and torch errors alike mean "not a weight file"
        raise MetricUnavailableError(f"Inception weights unreadable: {weights.name} ({type(error).__name__})") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    model = FIDInceptionV3()
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except (RuntimeError, TypeError, AttributeError) as error:
        raise MetricUnavailableError(f"Inception weights do not fit: {weights.name} ({type(error).__name__})") from None
    missing = [key for key in missing if not key.endswith("num_batches_tracked")]
    unexpected = [
        key for key in unexpected if not (key.startswith("AuxLogits.") or key.endswith("num_batches_tracked"))
    ]
    if missing or unexpected:
        raise MetricUnavailableError(
            f"Inception weights do not fit: {weights.name} lacks {len(missing)} and has {len(unexpected)} "
            f"unexpected tensors (e.g. {(missing or unexpected)[0]})"
        )
    model.eval().requires_grad_(False)
    digest = hashlib.sha256()
    with weights.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return InceptionFeatures(model, weights, standard=digest.hexdigest().startswith(STANDARD_SHA256_PREFIX))
