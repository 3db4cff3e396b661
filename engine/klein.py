"""The FLUX.2 [klein] family: the selfie itself, restyled by an edit instruction.

SD 1.5 and SDXL paint a new picture from noise and a prompt, and get the
person in through an IP-Adapter fed with a tight face crop.  Klein is an
instruction-editing model: it takes the photo as a *reference image* and an
instruction ("turn the person in this photo into a watercolour ..."), and
keeps face, pose and framing by itself.  So this family replaces exactly the
parts of :class:`engine.pipeline.Engine`'s story that differ, as hooks, and
keeps the story (plan → face → adapters → denoise → decode → safety →
encode), the batching, progress, deadline, safety and encoding as they are:

- plan: its own steps and guidance (4 distilled steps, no guidance; quality
  = more steps), the style's ``edit_instruction`` as the prompt, Compel's
  weighting syntax refused (``INVALID_REQUEST``), and what it cannot do
  (upscales, fast mode on the undistilled base model, compile) refused
  with ``MODEL_UNAVAILABLE`` before any model work;
- face: the upright selfie centred on the chosen face with a generous
  margin (head and shoulders), at the model's preferred size;
- adapters: only style LoRAs (``klein_lora``, Flux2LoraLoaderMixin), and a
  fresh flow-matching scheduler per job;
- conditioning: Qwen3 hidden states through the pipeline's own
  ``encode_prompt``, once per job; the reference image goes in the call.

- previews: no TAESD-like tiny decoder exists for klein's latents, so a
  live preview is a linear latent→RGB projection (what several diffusion UIs
  show), fitted when the engine is built by encoding a few synthetic colour
  fields with the model's own VAE: right for whichever weights are loaded,
  with nothing extra to download; a preview costs a matrix multiply, and
  ``MMPP_PREVIEW_EVERY_STEPS`` / ``MMPP_PREVIEW_MIN_SECONDS`` apply as for SD.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch
from PIL import Image

from engine import faces
from engine.models import KLEIN, ModelSources, WeightSource, model_unavailable
from engine.pipeline import PREVIEW_SIDE, Engine, JobPlan, ScaleOverrides, embedding_in_range
from mmpp.catalogue import Style
from mmpp.contract import GenerateRequest, Mode
from mmpp.errors import ErrorCode, MmppError
from mmpp.prompts import clean_prompt, has_prompt_weights

logger = logging.getLogger(__name__)

#: Steps per mode on the step-distilled model: it is trained for 4; more steps refine a little.
DISTILLED_STEPS = {Mode.FAST: 4, Mode.QUALITY: 8}
DISTILLED_STEP_BOUNDS = {Mode.FAST: (4, 8), Mode.QUALITY: (8, 16)}
#: The undistilled base model (``FLUX.2-klein-base-4B``) needs guidance and many steps: quality mode only.
BASE_STEPS = 28
BASE_STEP_BOUNDS = (15, 50)
BASE_GUIDANCE = 4.0
BASE_GUIDANCE_BOUNDS = (1.0, 8.0)
#: Face widths of margin on each side of the face in the reference: head, hair and shoulders, the framing
#: a profile picture keeps (the SD families' IP-Adapter crop uses 0.6, a tight head).
REFERENCE_MARGIN = 1.0
#: The preview projection is fitted on this many synthetic colour fields, each this many latent pixels a side
#: (128 px on the real VAE): a few thousand latent pixels for 3 x (channels + 1) unknowns, one small encode.
PREVIEW_FIT_IMAGES = 8
PREVIEW_FIT_LATENT_SIDE = 16
#: Colour cells a side of each field: smooth fields, so that a latent pixel's colour is its image patch's.
PREVIEW_FIT_CELLS = 4


def preview_fit_images(count: int, side: int, seed: int = 0) -> torch.Tensor:
    """Smooth random colour fields in [-1, 1], ``(count, 3, side, side)``, the same every time (own generator)."""
    generator = torch.Generator("cpu").manual_seed(seed)
    cells = torch.rand(count, 3, PREVIEW_FIT_CELLS, PREVIEW_FIT_CELLS, generator=generator) * 2 - 1
    return torch.nn.functional.interpolate(cells, size=(side, side), mode="bilinear", align_corners=False)


def fit_preview_projection(vae: Any, scale_factor: int) -> torch.Tensor:
    """Least-squares ``(channels + 1, 3)`` map from one raw VAE latent pixel (and 1) to the mean colour of the
    image patch it encodes, fitted on :func:`preview_fit_images`.

    Fitted on the loaded VAE rather than shipped as constants, so that it is
    right for any klein weights; the raw (unpatchified, unnormalised) latent
    space is the one ``vae.decode`` reads, so one small matrix serves every
    patch position.
    """
    parameter = next(vae.parameters())
    images = preview_fit_images(PREVIEW_FIT_IMAGES, PREVIEW_FIT_LATENT_SIDE * scale_factor)
    with torch.inference_mode():
        latents = vae.encode(images.to(parameter.device, parameter.dtype)).latent_dist.mode()
    latents = latents.double().cpu()
    colours = torch.nn.functional.avg_pool2d(images.double(), scale_factor)
    features = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1])
    features = torch.cat([features, torch.ones(len(features), 1, dtype=features.dtype)], dim=1)
    targets = colours.permute(0, 2, 3, 1).reshape(-1, 3)
    return torch.linalg.lstsq(features, targets).solution.float()


def load_klein_pipeline(sources: ModelSources, dtype: torch.dtype) -> Any:
    """``Flux2KleinPipeline`` from a Hub id or a local diffusers folder (klein ships no single files here)."""
    from diffusers import Flux2KleinPipeline

    try:
        return Flux2KleinPipeline.from_pretrained(sources.base, dtype=dtype)
    except Exception as error:
        logger.exception("loading the FLUX.2 [klein] model %s failed", sources.base)
        raise model_unavailable(sources.base, error) from None


class KleinEngine(Engine):
    """The engine of family ``flux2-klein``: :class:`Engine`'s story with klein's hooks."""

    def __init__(self, pipeline: Any, family: str, sources: ModelSources, *args: Any, **kwargs: Any) -> None:
        super().__init__(pipeline, family, sources, *args, **kwargs)
        #: The 4-step distilled model ignores guidance; the base model needs it (and many steps).
        self.distilled = bool(getattr(pipeline.config, "is_distilled", False))
        #: The live previews' latent→RGB map (:func:`fit_preview_projection`), or ``None``: no previews.
        self.preview_projection: torch.Tensor | None = None
        started = time.perf_counter()
        try:
            self.preview_projection = fit_preview_projection(self.full_vae, pipeline.vae_scale_factor)
        except Exception:  # previews are best effort: a VAE that cannot be fitted costs them, not the engine
            logger.warning("the klein preview projection could not be fitted; no live previews", exc_info=True)
        else:
            logger.info("klein preview projection fitted in %.3fs", time.perf_counter() - started)

    @property
    def previews_available(self) -> bool:
        return self.preview_projection is not None

    def _preview_image(self, latents: torch.Tensor) -> Image.Image:
        """The projection's view of one picture's packed latents ``(1, tokens, channels x 4)``, undone as the
        pipeline undoes them before decoding (tokens row by row, batch-norm statistics, 2x2 patches), at the
        output's shape, at most ``PREVIEW_SIDE`` a side."""
        projection = self.preview_projection
        if projection is None:
            raise RuntimeError("no preview projection was fitted")
        width, height = self.output_size()
        patch = self.pipeline.vae_scale_factor * 2
        with torch.inference_mode():
            tokens = latents[0].float().reshape(height // patch, width // patch, -1).permute(2, 0, 1).unsqueeze(0)
            norm = self.full_vae.bn
            std = torch.sqrt(norm.running_var.float() + self.full_vae.config.batch_norm_eps).view(1, -1, 1, 1)
            raw = self.pipeline._unpatchify_latents(tokens * std + norm.running_mean.float().view(1, -1, 1, 1))[0]
            projection = projection.to(raw.device)
            colours = torch.einsum("chw,cr->rhw", raw, projection[:-1]) + projection[-1].view(3, 1, 1)
            pixels = ((colours.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).cpu()
        scale = min(1.0, PREVIEW_SIDE / max(width, height))
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        return Image.fromarray(pixels.numpy()).resize(size, Image.Resampling.BILINEAR)

    # ------------------------------------------------------------------ construction

    def _build_compel(self) -> Any:
        """Klein's text encoder reads plain words; Compel's weighting has no meaning for it."""
        return None

    def load_adapters(self) -> None:
        """Each style's klein LoRA, once, as a named adapter; one that does not load makes only its style
        unavailable.  No IP-Adapter, portrait or LCM LoRA: the reference image and distillation do that work."""
        self._load_style_loras()

    def _style_source(self, style: Style) -> WeightSource | None:
        """The style's klein LoRA: an SD LoRA (``lora``) cannot load into klein's transformer."""
        if style.name in self.sources.style_loras:
            return self.sources.style_loras[style.name]
        return WeightSource.parse(style.klein_lora) if style.klein_lora else None

    def compile(self) -> None:
        raise MmppError(
            ErrorCode.MODEL_UNAVAILABLE,
            f"MMPP_COMPILE is not supported for the {KLEIN} family yet; unset it to run klein eagerly.",
        )

    # ------------------------------------------------------------------ planning

    def plan(self, request: GenerateRequest, overrides: ScaleOverrides | None = None) -> JobPlan:
        """Every setting fixed and checked, nothing loaded or computed: what klein cannot do is refused here."""
        request.validate()
        style = self.catalogue.get(request.style).with_variant(request.variant)
        if request.upscale_source is not None:
            raise MmppError(
                ErrorCode.MODEL_UNAVAILABLE, f"Upscaling is not available on {KLEIN} workers yet; ask an SD worker."
            )
        if style.name in self.unavailable_styles:
            raise MmppError(
                ErrorCode.MODEL_UNAVAILABLE,
                f"The style '{style.name}' is unavailable on this worker: its LoRA "
                f"{self.unavailable_styles[style.name]} could not be loaded.",
            )
        if not style.edit_instruction:
            raise MmppError(
                ErrorCode.MODEL_UNAVAILABLE,
                f"The style '{style.name}' has no edit_instruction, which {KLEIN} workers paint from.",
            )
        if overrides is not None and (overrides.portrait_scale is not None or overrides.ip_adapter_scale is not None):
            raise MmppError(
                ErrorCode.INVALID_REQUEST,
                f"{KLEIN} has no portrait LoRA or IP-Adapter: only the style LoRA's scale can be swept on it.",
            )
        mode = request.mode or style.mode
        steps, guidance = self._steps_and_guidance(mode, request)
        style_scale = (
            style.klein_lora_scale if overrides is None or overrides.style_scale is None else overrides.style_scale
        )
        adapters: dict[str, float] = {}
        if style.name in self.style_adapters and style_scale > 0:
            adapters[self.style_adapters[style.name]] = style_scale
        seeds, batches = self.seeds_and_batches(request)
        return JobPlan(
            style=style,
            mode=mode,
            steps=steps,
            guidance=guidance,
            prompt=self.compose_instruction(style, request.prompt),
            negative_prompt="",
            seeds=seeds,
            adapters=adapters,
            ip_adapter_scale=0.0,
            scales={"style_lora": style_scale if style.name in self.style_adapters else 0.0},
            decoder="full",
            batches=batches,
        )

    def _steps_and_guidance(self, mode: Mode, request: GenerateRequest) -> tuple[int, float]:
        if self.distilled:
            steps = request.steps if request.steps is not None else DISTILLED_STEPS[mode]
            low, high = DISTILLED_STEP_BOUNDS[mode]
            if request.guidance is not None and request.guidance != 1.0:
                raise MmppError(
                    ErrorCode.INVALID_REQUEST,
                    f"The step-distilled {KLEIN} model runs without guidance; leave guidance out (or 1).",
                )
            guidance = 1.0
        else:
            if mode is Mode.FAST:
                raise MmppError(
                    ErrorCode.MODEL_UNAVAILABLE,
                    f"Fast mode needs the 4-step distilled {KLEIN} model, and this worker runs the base model; "
                    "ask for mode quality.",
                )
            steps = request.steps if request.steps is not None else BASE_STEPS
            low, high = BASE_STEP_BOUNDS
            guidance = request.guidance if request.guidance is not None else BASE_GUIDANCE
            low_guidance, high_guidance = BASE_GUIDANCE_BOUNDS
            if not low_guidance <= guidance <= high_guidance:
                raise MmppError(
                    ErrorCode.INVALID_REQUEST,
                    f"{KLEIN} quality mode takes guidance {low_guidance:g} to {high_guidance:g}, not {guidance:g}.",
                )
        if not low <= steps <= high:
            raise MmppError(
                ErrorCode.INVALID_REQUEST, f"{KLEIN} {mode.value} mode takes {low} to {high} steps, not {steps}."
            )
        return steps, guidance

    @staticmethod
    def compose_instruction(style: Style, subject: str) -> str:
        """The style's edit instruction, and who is in the photo when the person said so.

        Weighting syntax is refused, not stripped: Qwen3 would read ``cat++`` or
        ``(cat)1.3`` literally, and a silently rewritten prompt is not the one
        that was asked for; the person learns in one line to write it plainly.
        """
        subject = clean_prompt(subject)
        if has_prompt_weights(subject):
            raise MmppError(
                ErrorCode.INVALID_REQUEST,
                f"Prompt weights ('word++', '(word)1.2') are read only by SD workers; {KLEIN} reads plain words, "
                "so write the prompt without them.",
            )
        if not subject:
            return style.edit_instruction
        return f"{style.edit_instruction} The photo shows {subject}."

    # ------------------------------------------------------------------ face, adapters, conditioning

    def reference_side(self) -> int:
        """The model's preferred side (its VAE's sample size, 1024 for klein 4B), or ``MMPP_RESOLUTION``, in
        whole latent patches."""
        multiple = self.pipeline.vae_scale_factor * 2
        side = self.resolution or int(self.pipeline.vae.config.sample_size)
        return max(multiple, side - side % multiple)

    def output_size(self) -> tuple[int, int]:
        side = self.reference_side()
        return side, side

    def identity_image(self, request: GenerateRequest, plan: JobPlan) -> Image.Image:
        """The reference: the upright decoded selfie (EXIF applied), eyes level, centred on the chosen face with
        room for hair and shoulders, at the model's size.  ``NO_FACE`` and friends come from here, before any
        model work."""
        image = faces.decode_image(request.selfie)
        face = self.face_analyzer.pick_face(image)
        return self.face_analyzer.crop(image, face, size=self.reference_side(), margin=REFERENCE_MARGIN)

    def configure(self, plan: JobPlan) -> None:
        """Style LoRA and a fresh scheduler (schedulers keep per-run state); klein has one decoder."""
        self.activate(plan.adapters)
        self.pipeline.scheduler = self.scheduler_for(plan.mode)

    def scheduler_for(self, mode: Mode) -> Any:
        """The model's own flow-matching scheduler in both modes: the modes differ in steps, not in solver."""
        from diffusers import FlowMatchEulerDiscreteScheduler

        return FlowMatchEulerDiscreteScheduler.from_config(self._scheduler_config)

    def encode_prompt(self, prompt: str, negative_prompt: str) -> dict[str, torch.Tensor]:
        """The instruction's Qwen3 embedding through the pipeline's own ``encode_prompt``, once per job; on the
        base model also the empty prompt guidance subtracts.  Out-of-range values fail as for SD."""
        arguments: dict[str, torch.Tensor] = {}
        with torch.inference_mode():
            arguments["prompt_embeds"] = self.pipeline.encode_prompt(prompt=prompt)[0]
            if not self.distilled:
                arguments["negative_prompt_embeds"] = self.pipeline.encode_prompt(prompt=negative_prompt)[0]
        for name, embedding in arguments.items():
            if not embedding_in_range(embedding):
                raise MmppError(ErrorCode.INVALID_REQUEST, f"The instruction's embedding ({name}) is out of range.")
        return arguments

    def encode_face(self, face_crop: Image.Image, guided: bool) -> dict[str, Any]:
        """The reference image goes into the call as it is: the pipeline encodes it with its VAE (the mode of
        the latent distribution, so no randomness) and attends to it at every step."""
        return {"image": face_crop}

    def pipeline_arguments(self, plan: JobPlan, conditioning: dict[str, Any], seeds: list[int]) -> dict[str, Any]:
        """One batched ``Flux2KleinPipeline`` call, one generator per picture (the benchmark reuses them)."""
        width, height = self.output_size()
        return {
            **conditioning,
            "num_inference_steps": plan.steps,
            "guidance_scale": plan.guidance,
            "num_images_per_prompt": len(seeds),
            "generator": [torch.Generator("cpu").manual_seed(seed) for seed in seeds],
            "output_type": "pil",
            "width": width,
            "height": height,
        }
