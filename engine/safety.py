"""The optional NSFW check on generated pictures.

It uses diffusers' ``StableDiffusionSafetyChecker`` (CLIP concept embeddings)
when its weights are available.  Without them the filter says so plainly, in
the log at start and in every result (``safety_check: "unavailable"``), rather
than pretending to have checked; ``MMPP_SAFETY_CHECKER=required`` makes the
worker refuse jobs instead.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from PIL import Image

from mmpp.errors import ErrorCode, MmppError

logger = logging.getLogger(__name__)


class SafetyFilter:
    def __init__(self, mode: str, checker: Any = None, processor: Any = None, reason: str = "") -> None:
        self.mode = mode
        self.checker = checker
        self.processor = processor
        self.reason = reason

    @property
    def status(self) -> str:
        if self.mode == "off":
            return "off"
        return "passed" if self.checker is not None else "unavailable"

    @classmethod
    def load(cls, mode: str, source: str, device: torch.device, dtype: torch.dtype) -> SafetyFilter:
        if mode == "off":
            return cls("off")
        try:
            from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
            from transformers import CLIPImageProcessor

            checker = StableDiffusionSafetyChecker.from_pretrained(source, dtype=dtype).to(device).eval()
            processor = CLIPImageProcessor.from_pretrained(source)
        except Exception as error:  # noqa: BLE001 - the hub raises many types for "not here"
            reason = f"the safety checker '{source}' could not be loaded ({type(error).__name__})"
            if mode == "required":
                logger.error("NSFW check required but unavailable: %s", reason)
            else:
                logger.warning("NSFW check unavailable: %s; pictures are not checked", reason)
            return cls(mode, reason=reason)
        return cls(mode, checker, processor)

    def flagged(self, images: list[Image.Image]) -> list[bool]:
        """One flag per picture; raises when the check is required but cannot run."""
        if self.mode == "off":
            return [False] * len(images)
        if self.checker is None:
            if self.mode == "required":
                raise MmppError(ErrorCode.MODEL_UNAVAILABLE, f"The NSFW check is required but {self.reason}.")
            return [False] * len(images)
        parameter = next(self.checker.parameters())
        clip_input = self.processor(images=images, return_tensors="pt").pixel_values.to(
            parameter.device, parameter.dtype
        )
        arrays = np.stack([np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0 for image in images])
        with torch.no_grad():
            _, has_nsfw = self.checker(clip_input=clip_input, images=arrays)
        return [bool(flag) for flag in has_nsfw]
