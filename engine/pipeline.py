"""The generation engine: one object per worker process, composed on diffusers.

Why a composition and not a subclass of a diffusers pipeline: everything we
add (adapter choice per style, Compel conditioning, the selfie's face crop,
scheduler per mode) happens *around* a plain pipeline call, so that call can
be benchmarked against the engine on identical work (``mmpp bench engine``)
and the engine can never silently drift from what diffusers does.

Adapters are loaded once and stay resident; a style switch only changes
which adapters are active and at what weight (``set_adapters``), so no job
ever touches the disk.  With ``torch.compile`` on, the same switch is done by
diffusers' LoRA hot-swap into fixed slots instead, because changing the set
of active adapters would make the compiled graph recompile; for the same
reason the IP-Adapter's strength is then folded into its value projections
rather than set as a Python float the compiled blocks would guard on.

One job is one story, in this order: plan (every setting fixed and checked)
→ face (the selfie's aligned crop) → adapters (LoRAs, IP-Adapter strength,
scheduler, decoder) → conditioning (prompt and face embedded once per job)
→ denoise and decode (one batched pipeline call per ``max_batch_size``
pictures, one generator per picture) → safety → encode.  An upscale tells the same story from a
picture instead of noise: its plan holds the picture at twice its size, the IP-Adapter sees the picture
(see :class:`UpscalePlan`), and the denoising is diffusers' img2img pipeline made from the same loaded
components, in quality mode, for the last ``strength`` of the schedule.

Families: :class:`Engine` tells the story and is the SD 1.5 / SDXL family (Compel, IP-Adapter, portrait
LoRA, LCM stay here).  Another family is a subclass that replaces the story's hooks, nothing else:
``plan``, ``identity_image``, ``configure``, ``encode_prompt``, ``encode_face``, ``pipeline_arguments`` and
``output_size`` (with ``load_adapters`` at load time); :func:`engine_class_for` picks it from the family
the weights declare.  FLUX.2 [klein] is ``engine/klein.py``.
"""

from __future__ import annotations

import io
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from engine import faces
from engine.models import KLEIN, ModelSources, WeightSource, detect_family, model_unavailable, resolve_sources
from engine.safety import SafetyFilter
from engine.settings import EngineSettings
from mmpp.catalogue import GUIDANCE_BOUNDS, STEP_BOUNDS, Catalogue, Style, load_catalogue
from mmpp.contract import UPSCALE_FACTOR, GenerateRequest, GenerateResult, Mode, Picture, png_size
from mmpp.errors import ErrorCode, MmppError
from mmpp.prompts import MAX_PROMPT_WEIGHT, MIN_PROMPT_WEIGHT

logger = logging.getLogger(__name__)

#: ``on_progress(done_steps, total_steps)``; called from the denoising loop.
ProgressCallback = Callable[[int, int], None]
#: ``on_preview(done_steps, total_steps, jpeg)``: a small picture of the first image so far.
PreviewCallback = Callable[[int, int, bytes], None]

#: Longest side and JPEG quality of a live preview: small enough (~10-30 KB) to
#: ride along with a progress report through the result backend.
PREVIEW_SIDE = 256
PREVIEW_QUALITY = 70

PORTRAIT_ADAPTER = "portrait"
LCM_ADAPTER = "lcm"
STYLE_SLOT = "style"


def style_adapter_name(style_name: str) -> str:
    # peft keeps adapters in ModuleDicts, whose keys may not contain dots.
    return "style_" + style_name.replace("-", "_").replace(".", "_")


@dataclass(frozen=True)
class ScaleOverrides:
    """Per-call replacements for a style's scales (sweeps and tests use them)."""

    style_scale: float | None = None
    portrait_scale: float | None = None
    ip_adapter_scale: float | None = None


@dataclass
class JobPlan:
    """Everything decided about a job before any pixel is computed."""

    style: Style
    mode: Mode
    steps: int
    guidance: float
    prompt: str
    negative_prompt: str
    seeds: list[int]
    adapters: dict[str, float]
    ip_adapter_scale: float
    scales: dict[str, float] = field(default_factory=dict)
    #: "tiny" (AutoencoderTiny, fast mode when its weights are there) or "full" (the model's VAE).
    decoder: str = "full"
    #: The seeds split into pipeline calls of at most ``max_batch_size`` pictures each.
    batches: list[list[int]] = field(default_factory=list)
    #: An upscale job's input (``None`` for a picture painted from noise).
    upscale: UpscalePlan | None = None

    @property
    def classifier_free_guidance(self) -> bool:
        """Whether each step runs the UNet twice (guidance > 1); the negative prompt only matters then."""
        return self.guidance > 1.0

    @property
    def painted_steps(self) -> int:
        """The denoising steps one pipeline call runs: an image-to-image pass skips the first ``1 - strength``
        of its schedule (diffusers' ``int(steps * strength)``), so its progress counts only the rest."""
        return int(self.steps * self.upscale.strength) if self.upscale is not None else self.steps

    @property
    def total_steps(self) -> int:
        return self.painted_steps * len(self.batches)


@dataclass
class UpscalePlan:
    """What an upscale starts from: its picture at twice the size, and how much of it is painted again.

    ``identity`` feeds the IP-Adapter in place of the selfie's face crop.  It is the picture itself, not
    the selfie: the selfie may be deleted after its retention while the picture stays, and the picture
    already holds the identity the first pass put there, in the style, so an upscale is the same
    whether or not the selfie is still kept.  It is not face-detected either (a detector misses many
    stylised faces); the image encoder sees the whole portrait, which the first pass framed on the face.
    """

    image: Image.Image
    identity: Image.Image
    strength: float


def pick_device(requested: str = "auto") -> torch.device:
    if requested != "auto":
        return torch.device(requested)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_dtype(requested: str, device: torch.device) -> torch.dtype:
    """Half precision where the device runs it well; fp32 on CPU by default.

    bf16 on CPU is faster on recent processors but changes the pixels, so it
    is an explicit choice (``MMPP_DTYPE=bfloat16``), not a default.
    """
    if requested != "auto":
        return getattr(torch, requested)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.float32


def load_base_pipeline(sources: ModelSources, dtype: torch.dtype):  # noqa: ANN201 - SD, SDXL or klein pipeline
    """Load the base model from a Hub id, a diffusers folder or a single file."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    family = sources.family or detect_family(sources.base)
    if family == KLEIN:
        from engine.klein import load_klein_pipeline

        return load_klein_pipeline(sources, dtype), family
    pipeline_class = StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline
    options: dict[str, Any] = {}
    if family == "sd15":
        # The NSFW check is a separate, optional stage (see the deployment
        # docs); loading the checker here would cost 1.2 GB per worker.
        options.update(safety_checker=None, requires_safety_checker=False)
    base = Path(sources.base).expanduser()
    try:
        if base.is_file():
            if sources.base_config:
                options["config"] = sources.base_config
            # Single-file loading still takes the older ``torch_dtype`` name.
            return pipeline_class.from_single_file(str(base), torch_dtype=dtype, **options), family
        return pipeline_class.from_pretrained(sources.base, dtype=dtype, **options), family
    except MmppError:
        raise
    except Exception as error:
        logger.exception("loading the base model %s failed", sources.base)
        raise model_unavailable(sources.base, error) from None


class Engine:
    """Selfie + style → profile pictures, with everything loaded once.

    Not thread-safe for concurrent jobs (one pipeline, one set of active
    adapters): a lock serialises ``generate``; Celery runs one job per worker
    process anyway (prefetch 1).
    """

    def __init__(
        self,
        pipeline: Any,
        family: str,
        sources: ModelSources,
        catalogue: Catalogue,
        *,
        face_analyzer: faces.FaceAnalyzer | None = None,
        use_hotswap: bool = False,
        resolution: int = 0,
        max_batch_size: int = 4,
        tiny_decoder: Any = None,
        preview_every_steps: int = 2,
        preview_min_seconds: float = 1.0,
        upscale_strength: float = 0.3,
    ) -> None:
        self.pipeline = pipeline
        self.family = family
        self.sources = sources
        self.catalogue = catalogue
        self.face_analyzer = face_analyzer or faces.default_analyzer()
        self.use_hotswap = use_hotswap
        self.resolution = resolution
        self.max_batch_size = max(1, max_batch_size)
        #: The model's own VAE, and the tiny one (or ``None``): a job picks one by swapping ``pipeline.vae``.
        self.full_vae = pipeline.vae
        self.tiny_decoder = tiny_decoder
        self.preview_every_steps = preview_every_steps
        self.preview_min_seconds = preview_min_seconds
        self.upscale_strength = upscale_strength
        #: The image-to-image pipeline of upscales, built on first use from this pipeline's own components.
        self._image_to_image: Any = None
        #: Under compile, the IP-Adapter's value projections at strength 1, to scale in place.
        self._ip_value_weights: list[tuple[torch.nn.Parameter, torch.Tensor]] = []
        self._ip_strength: float | None = None
        self._blank_face: tuple[Any, torch.Tensor] | None = None
        self.compiled = False
        self.unavailable_styles: dict[str, str] = {}
        self.style_adapters: dict[str, str] = {}
        self.has_portrait = False
        self.has_lcm = False
        self.has_ip_adapter = False
        self._lock = threading.Lock()
        self._scheduler_config = dict(pipeline.scheduler.config)
        self._hotswap_state: dict[str, dict[str, torch.Tensor]] = {}
        self._hotswap_loaded: dict[str, tuple[str, float]] = {}
        self._lora_enabled = True
        self._compel = self._build_compel()
        self.load_timings: dict[str, float] = {}
        self.safety = SafetyFilter("off")

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_settings(
        cls,
        settings: EngineSettings | None = None,
        *,
        weights: str | None = None,
        catalogue: Catalogue | None = None,
    ) -> Engine:
        """Build the engine the environment asks for.

        ``auto`` tries the real weights first and falls back to the tiny
        test-sized weights, logging plainly that the pictures will be noise, so that
        ``make run`` works on a fresh machine without a download.
        """
        settings = settings or EngineSettings()
        catalogue = catalogue or load_catalogue(settings.styles_file)
        weights = weights or settings.weights
        if weights == "auto":
            try:
                return cls.from_sources(resolve_sources("default", settings, catalogue.names), catalogue, settings)
            except MmppError as error:
                if error.code is not ErrorCode.MODEL_UNAVAILABLE:
                    raise
                logger.warning(
                    "Real weights unavailable (%s). Falling back to the TINY test-sized model: "
                    "its pictures are random noise, useful only to try the plumbing.",
                    error.message,
                )
                weights = "tiny"
        return cls.from_sources(resolve_sources(weights, settings, catalogue.names), catalogue, settings)

    @classmethod
    def from_sources(cls, sources: ModelSources, catalogue: Catalogue, settings: EngineSettings) -> Engine:
        quiet_libraries()
        started = time.perf_counter()
        device = pick_device(settings.device)
        dtype = pick_dtype(settings.dtype, device)
        pipeline, family = load_base_pipeline(sources, dtype)
        pipeline.set_progress_bar_config(disable=True)
        pipeline.to(device)
        base_seconds = time.perf_counter() - started
        engine = engine_class_for(family, cls)(
            pipeline,
            family,
            sources,
            catalogue,
            use_hotswap=settings.compile,
            resolution=settings.resolution,
            max_batch_size=settings.max_batch_size,
            tiny_decoder=load_tiny_decoder(sources.tiny_decoder, device, dtype),
            preview_every_steps=settings.preview_every_steps,
            preview_min_seconds=settings.preview_min_seconds,
            upscale_strength=settings.upscale_strength,
        )
        engine.safety = SafetyFilter.load(settings.safety_checker, settings.safety_checker_model, device, dtype)
        engine.load_adapters()
        if settings.compile:
            engine.compile()
        engine.load_timings = {"base": base_seconds, "total": time.perf_counter() - started}
        logger.info(
            "engine ready: %s on %s/%s in %.1fs",
            sources.label or sources.base,
            device,
            dtype,
            time.perf_counter() - started,
        )
        return engine

    def _build_compel(self) -> Any:
        import pyparsing
        from compel import CompelForSD, CompelForSDXL

        # Compel's prompt grammar backtracks: without pyparsing's memo its time grows exponentially with the
        # nesting of parentheses (six levels take seconds, ten hours).  Process-wide and idempotent.
        pyparsing.ParserElement.enable_packrat()
        if self.family == "sdxl":
            return CompelForSDXL(self.pipeline)
        return CompelForSD(self.pipeline)

    def load_adapters(self) -> None:
        """Load the IP-Adapter and every LoRA once, as named adapters.

        A style whose LoRA cannot be loaded stays listed but answers
        ``MODEL_UNAVAILABLE``, so one bad download does not take the other
        styles down with it.  A missing IP-Adapter or LCM-LoRA likewise only
        disables what needs it.
        """
        pipeline = self.pipeline
        if self.sources.ip_adapter is not None:
            source = self.sources.ip_adapter
            subfolder, weight_name = source.weights.split_subfolder()
            try:
                pipeline.load_ip_adapter(
                    source.weights.location,
                    subfolder=subfolder,
                    weight_name=weight_name,
                    image_encoder_folder=source.image_encoder_folder,
                )
                self.has_ip_adapter = True
            except Exception as error:  # noqa: BLE001
                logger.warning(
                    "IP-Adapter %s not loaded (%s): identity will rely on the prompt alone",
                    source.weights.describe(),
                    type(error).__name__,
                )
        if self.use_hotswap:
            self._prepare_hotswap()
            return
        if self.sources.portrait_lora is not None:
            self.has_portrait = self._load_lora(self.sources.portrait_lora, PORTRAIT_ADAPTER)
        if self.sources.lcm_lora is not None:
            self.has_lcm = self._load_lora(self.sources.lcm_lora, LCM_ADAPTER)
        self._load_style_loras()

    def _load_style_loras(self) -> None:
        """Each style's LoRA (where :meth:`_style_source` names one), once, as a named adapter; one that does not
        load makes only its own style unavailable."""
        for style in self.catalogue:
            source = self._style_source(style)
            if source is None:
                continue
            adapter = style_adapter_name(style.name)
            if self._load_lora(source, adapter):
                self.style_adapters[style.name] = adapter
            else:
                self.unavailable_styles[style.name] = source.describe()

    def _style_source(self, style: Style) -> WeightSource | None:
        if style.name in self.sources.style_loras:
            return self.sources.style_loras[style.name]
        return WeightSource.parse(style.lora) if style.lora else None

    def _load_lora(self, source: WeightSource, adapter_name: str) -> bool:
        try:
            self.pipeline.load_lora_weights(source.location, weight_name=source.weight_name, adapter_name=adapter_name)
            return True
        except Exception as error:  # noqa: BLE001
            logger.warning("LoRA %s (%s) not loaded: %s", adapter_name, source.describe(), type(error).__name__)
            return False

    # ------------------------------------------------------------------ hot-swap (compiled UNet)

    def _read_lora_state(self, source: WeightSource) -> dict[str, torch.Tensor] | None:
        try:
            state, _ = type(self.pipeline).lora_state_dict(source.location, weight_name=source.weight_name)
            return {key: value.detach().clone() for key, value in state.items()}
        except Exception as error:  # noqa: BLE001
            logger.warning("LoRA %s not read: %s", source.describe(), type(error).__name__)
            return None

    def _prepare_hotswap(self) -> None:
        """Read every LoRA into memory once and load one per fixed slot.

        Each slot stays active at weight 1; a switch copies the next LoRA's
        tensors, pre-multiplied by its scale, into the slot in place
        (``hotswap=True``), which keeps a compiled UNet's graph valid.
        """
        readable: dict[str, dict[str, torch.Tensor]] = {}
        for slot, source in ((PORTRAIT_ADAPTER, self.sources.portrait_lora), (LCM_ADAPTER, self.sources.lcm_lora)):
            if source is not None and (state := self._read_lora_state(source)) is not None:
                readable[slot] = state
        for style in self.catalogue:
            source = self._style_source(style)
            if source is None:
                continue
            state = self._read_lora_state(source)
            if state is None:
                self.unavailable_styles[style.name] = source.describe()
            else:
                readable[style_adapter_name(style.name)] = state
                self.style_adapters[style.name] = style_adapter_name(style.name)
        self._hotswap_state = readable
        self.has_portrait = PORTRAIT_ADAPTER in readable
        self.has_lcm = LCM_ADAPTER in readable
        ranks = [_lora_rank(state) for state in readable.values()]
        if not ranks:
            return
        self.pipeline.enable_lora_hotswap(target_rank=max(ranks))
        first_style = next(iter(self.style_adapters.values()), None)
        for slot, content in (
            (PORTRAIT_ADAPTER, PORTRAIT_ADAPTER),
            (LCM_ADAPTER, LCM_ADAPTER),
            (STYLE_SLOT, first_style),
        ):
            if content in readable:
                self.pipeline.load_lora_weights(_scaled(readable[content], 0.0), adapter_name=slot)
                self._hotswap_loaded[slot] = (content, 0.0)
        self.pipeline.set_adapters(list(self._hotswap_loaded), [1.0] * len(self._hotswap_loaded))

    def _hotswap_activate(self, adapters: dict[str, float]) -> None:
        wanted: dict[str, tuple[str, float]] = {}
        for slot in self._hotswap_loaded:
            if slot == STYLE_SLOT:
                content = next((name for name in adapters if name.startswith("style_")), None)
                wanted[slot] = (content, adapters[content]) if content else (self._hotswap_loaded[slot][0], 0.0)
            else:
                wanted[slot] = (slot, adapters.get(slot, 0.0))
        for slot, (content, scale) in wanted.items():
            if self._hotswap_loaded[slot] != (content, scale):
                self.pipeline.load_lora_weights(
                    _scaled(self._hotswap_state[content], scale), adapter_name=slot, hotswap=True
                )
                self._hotswap_loaded[slot] = (content, scale)

    def compile(self) -> None:
        """Compile the UNet's repeated transformer blocks once (regional compilation).

        Regional compilation compiles one block and reuses it for its
        siblings, which takes a fraction of compiling the whole UNet.  Three
        things would otherwise recompile it between jobs, each removed here
        or elsewhere: a change of the set of active LoRAs (hot-swap into fixed
        slots instead, :meth:`_prepare_hotswap`), the IP-Adapter strength, a
        Python float the compiled attention guards on (folded into the value
        projections instead, :meth:`set_ip_adapter_strength`), and the batch
        size, which differs between a 1- and a 2-picture job and between
        guidance on and off (compiled with dynamic shapes from the start).
        """
        if self.has_ip_adapter:
            self._ip_value_weights = [
                (parameter, parameter.detach().clone())
                for name, parameter in self.pipeline.unet.named_parameters()
                if ".to_v_ip." in name
            ]
            self.pipeline.set_ip_adapter_scale(1.0)
            self._ip_strength = 1.0
        self.pipeline.unet.compile_repeated_blocks(fullgraph=True, dynamic=True)
        self.compiled = True
        self.warm_up_compiled()

    def warm_up_compiled(self) -> None:
        """Compile now, for every batch shape a job can bring, instead of during the first jobs.

        Dynamic shapes cover every batch of 2 or more pictures with one graph,
        but torch specialises a size of 1 on its own graph; so one step at
        batch 1 and one at batch 2 (guidance on and off, both schedulers)
        compile all the graphs a job can need, and jobs never recompile.
        """
        width, height = self.output_size()
        face = Image.new("RGB", (224, 224), (128, 128, 128))
        conditioning = self.encode_prompt("a person", "")
        for mode, guidance, batch in ((Mode.FAST, 1.0, 1), (Mode.FAST, 1.0, 2), (Mode.QUALITY, 5.0, 1)):
            self.pipeline.scheduler = self.scheduler_for(mode)
            arguments: dict[str, Any] = {**conditioning, **self.encode_face(face, guidance > 1.0)}
            with torch.inference_mode():
                self.pipeline(
                    **arguments,
                    num_inference_steps=2,
                    guidance_scale=guidance,
                    num_images_per_prompt=batch,
                    width=width,
                    height=height,
                    output_type="latent",
                )

    def set_ip_adapter_strength(self, scale: float) -> None:
        """How strongly the selfie's identity steers the picture.

        The IP-Adapter adds ``scale * attention(query, face keys, face values)``
        to each cross-attention; the attention is linear in its values, so the
        same result comes from values projected by ``scale`` times the weights.
        Eager runs use diffusers' own ``set_ip_adapter_scale``; compiled runs
        scale the (bias-free) value projections in place, which changes tensors
        the compiled graph reads but no constant it was specialised on.
        """
        if not self.has_ip_adapter:
            return
        if not self._ip_value_weights:
            self.pipeline.set_ip_adapter_scale(scale)
            return
        if self._ip_strength == scale:
            return
        with torch.no_grad():
            for parameter, original in self._ip_value_weights:
                parameter.copy_(original * scale)
        self._ip_strength = scale

    # ------------------------------------------------------------------ planning

    def plan(self, request: GenerateRequest, overrides: ScaleOverrides | None = None) -> JobPlan:
        """Validate the request against the style and fix every setting."""
        request.validate()
        # A variant keeps its style's name, so the style's LoRA, availability and adapter slot are the same.
        style = self.catalogue.get(request.style).with_variant(request.variant)
        if style.name in self.unavailable_styles:
            raise MmppError(
                ErrorCode.MODEL_UNAVAILABLE,
                f"The style '{style.name}' is unavailable on this worker: its LoRA "
                f"{self.unavailable_styles[style.name]} could not be loaded.",
            )
        # An upscale is the quality pass of a picture people already chose, whatever mode painted it.
        mode = Mode.QUALITY if request.upscale_source is not None else request.mode or style.mode
        if mode is Mode.FAST and not self.has_lcm:
            raise MmppError(
                ErrorCode.MODEL_UNAVAILABLE,
                "Fast mode needs the LCM-LoRA, which this worker could not load; ask for mode quality.",
            )
        steps = request.steps if request.steps is not None else style.default_steps(mode)
        guidance = request.guidance if request.guidance is not None else style.default_guidance(mode)
        low, high = STEP_BOUNDS[mode]
        if not low <= steps <= high:
            raise MmppError(ErrorCode.INVALID_REQUEST, f"{mode.value} mode takes {low} to {high} steps, not {steps}.")
        low_guidance, high_guidance = GUIDANCE_BOUNDS[mode]
        if not low_guidance <= guidance <= high_guidance:
            raise MmppError(
                ErrorCode.INVALID_REQUEST,
                f"{mode.value} mode takes guidance {low_guidance:g} to {high_guidance:g}, not {guidance:g}.",
            )
        overrides = overrides or ScaleOverrides()
        style_scale = style.style_scale if overrides.style_scale is None else overrides.style_scale
        portrait_scale = style.portrait_scale if overrides.portrait_scale is None else overrides.portrait_scale
        ip_scale = style.ip_adapter_scale if overrides.ip_adapter_scale is None else overrides.ip_adapter_scale
        adapters: dict[str, float] = {}
        if self.has_portrait and portrait_scale > 0:
            adapters[PORTRAIT_ADAPTER] = portrait_scale
        if style.name in self.style_adapters and style_scale > 0:
            adapters[self.style_adapters[style.name]] = style_scale
        if mode is Mode.FAST:
            adapters[LCM_ADAPTER] = 1.0
        upscale = self._upscale_plan(request.upscale_source) if request.upscale_source is not None else None
        if upscale is not None and int(steps * upscale.strength) < 1:
            raise MmppError(
                ErrorCode.INVALID_REQUEST,
                f"An upscale at strength {upscale.strength:g} paints no step of {steps}; ask for more steps.",
            )
        seeds, batches = self.seeds_and_batches(request)
        return JobPlan(
            style=style,
            mode=mode,
            steps=steps,
            guidance=guidance,
            prompt=style.compose_prompt(request.prompt),  # INVALID_REQUEST for weights out of bounds
            negative_prompt=style.negative_prompt,
            seeds=seeds,
            adapters=adapters,
            ip_adapter_scale=ip_scale if self.has_ip_adapter else 0.0,
            scales={
                "style_lora": style_scale if style.name in self.style_adapters else 0.0,
                "portrait_lora": portrait_scale if self.has_portrait else 0.0,
                "ip_adapter": ip_scale if self.has_ip_adapter else 0.0,
                "lcm_lora": 1.0 if mode is Mode.FAST else 0.0,
            },
            decoder="tiny" if mode is Mode.FAST and self.tiny_decoder is not None else "full",
            batches=batches,
            upscale=upscale,
        )

    def seeds_and_batches(self, request: GenerateRequest) -> tuple[list[int], list[list[int]]]:
        """Each picture's seed (the request's, +1, +2, ... or a random start) and the pipeline calls they fall in."""
        base_seed = request.seed if request.seed is not None else random.SystemRandom().randrange(2**32)
        seeds = [(base_seed + index) % 2**32 for index in range(request.count)]
        batches = [seeds[start : start + self.max_batch_size] for start in range(0, len(seeds), self.max_batch_size)]
        return seeds, batches

    def _upscale_plan(self, source: bytes) -> UpscalePlan:
        """The picture to upscale, decoded (its header was bounded by the contract) and resized to exactly twice
        its size, the starting point of the image-to-image pass."""
        try:
            with Image.open(io.BytesIO(source), formats=["PNG"]) as opened:
                declared = opened.size
                picture = opened.convert("RGB")
        except Exception:  # noqa: BLE001 - Pillow raises many types for a damaged file
            raise MmppError(ErrorCode.NOT_AN_IMAGE, "The picture to upscale is damaged or not a PNG.") from None
        if picture.size != png_size(source) or picture.size != declared:
            raise MmppError(ErrorCode.NOT_AN_IMAGE, "The picture to upscale is damaged.")
        width, height = picture.size
        doubled = picture.resize((width * UPSCALE_FACTOR, height * UPSCALE_FACTOR), Image.Resampling.LANCZOS)
        return UpscalePlan(image=doubled, identity=picture, strength=self.upscale_strength)

    def image_to_image_pipeline(self) -> Any:
        """The upscales' img2img pipeline: diffusers' own, made from this pipeline's loaded components
        (``from_pipe`` shares the UNet with its LoRAs and IP-Adapter, the text encoders, the VAE), so nothing
        is loaded twice and a style switch reaches both."""
        if self._image_to_image is None:
            from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionXLImg2ImgPipeline

            kind = StableDiffusionXLImg2ImgPipeline if self.family == "sdxl" else StableDiffusionImg2ImgPipeline
            self._image_to_image = kind.from_pipe(self.pipeline)
            self._image_to_image.set_progress_bar_config(disable=True)
        return self._image_to_image

    # ------------------------------------------------------------------ per-job state

    def activate(self, adapters: dict[str, float]) -> None:
        """Make exactly these adapters active at these weights; no disk access."""
        if self.use_hotswap:
            if self._hotswap_loaded:
                self._hotswap_activate(adapters)
            return
        if not adapters:
            if self._lora_enabled and self.pipeline.get_list_adapters():
                self.pipeline.disable_lora()
                self._lora_enabled = False
            return
        if not self._lora_enabled:
            self.pipeline.enable_lora()
            self._lora_enabled = True
        self.pipeline.set_adapters(list(adapters), adapter_weights=list(adapters.values()))

    def scheduler_for(self, mode: Mode) -> Any:
        """A fresh scheduler per job: schedulers keep per-run state."""
        from diffusers import DPMSolverMultistepScheduler, LCMScheduler

        if mode is Mode.FAST:
            return LCMScheduler.from_config(self._scheduler_config)
        return DPMSolverMultistepScheduler.from_config(
            self._scheduler_config, algorithm_type="dpmsolver++", use_karras_sigmas=True
        )

    def encode_prompt(self, prompt: str, negative_prompt: str) -> dict[str, torch.Tensor]:
        """Compel conditioning as keyword arguments for the pipeline call.

        The prompt weights were bounded before (``mmpp.prompts``); should anything still push an embedding
        out of range (a non-finite value, or one float16 cannot hold), the job fails with INVALID_REQUEST
        here, before the UNet paints a black picture from it: refused, not clamped, because a clamped
        embedding is no longer the prompt that was asked for.
        """
        try:
            with torch.no_grad():
                conditioning = self._compel(prompt, negative_prompt=negative_prompt or "")
        except Exception as error:  # noqa: BLE001 - the prompt parser raises its own types
            raise MmppError(
                ErrorCode.INVALID_REQUEST, f"The prompt's weighting syntax could not be read ({type(error).__name__})."
            ) from None
        arguments = {"prompt_embeds": conditioning.embeds, "negative_prompt_embeds": conditioning.negative_embeds}
        if self.family == "sdxl":
            arguments["pooled_prompt_embeds"] = conditioning.pooled_embeds
            arguments["negative_pooled_prompt_embeds"] = conditioning.negative_pooled_embeds
        for name, embedding in arguments.items():
            if embedding is not None and not embedding_in_range(embedding):
                which = "negative prompt" if name.startswith("negative") else "prompt"
                raise MmppError(
                    ErrorCode.INVALID_REQUEST,
                    f"The {which}'s weights push its embedding out of range; lower them "
                    f"(between {MIN_PROMPT_WEIGHT:g} and {MAX_PROMPT_WEIGHT:g}).",
                )
        return arguments

    def output_size(self) -> tuple[int, int]:
        native = self.pipeline.unet.config.sample_size * self.pipeline.vae_scale_factor
        side = self.resolution or native
        side -= side % 8
        return side, side

    def use_decoder(self, decoder: str) -> None:
        """Decode with the tiny or the full VAE; both read the same latents, so this is a swap, not a load."""
        self.pipeline.vae = self.tiny_decoder if decoder == "tiny" and self.tiny_decoder is not None else self.full_vae

    def configure(self, plan: JobPlan) -> None:
        """Everything the pipeline holds that differs between jobs: adapters, IP strength, scheduler, decoder."""
        self.activate(plan.adapters)
        self.set_ip_adapter_strength(plan.ip_adapter_scale)
        self.pipeline.scheduler = self.scheduler_for(plan.mode)
        self.use_decoder(plan.decoder)
        if plan.upscale is not None:  # the img2img pipeline holds its own references to these two
            image_to_image = self.image_to_image_pipeline()
            image_to_image.scheduler = self.pipeline.scheduler
            image_to_image.vae = self.pipeline.vae

    def encode_face(self, face_crop: Image.Image, guided: bool) -> dict[str, Any]:
        """The IP-Adapter's image embedding, computed once per job and shared by all its pictures.

        For the Plus adapters (hidden states through a Resampler) diffusers
        encodes the face and a blank image on every call; the blank one only
        serves the unconditional pass of guidance and is the same for every
        job, so it is encoded once per worker and only added when the job
        runs with guidance.  In fast mode that halves the image encoder's work
        (a ViT-H: seconds on a CPU), with exactly diffusers' arithmetic.
        """
        if not self.has_ip_adapter:
            return {}
        pipeline = self.pipeline
        from diffusers.models.embeddings import ImageProjection

        projections = pipeline.unet.encoder_hid_proj.image_projection_layers
        with torch.inference_mode():
            if len(projections) != 1 or isinstance(projections[0], ImageProjection):
                # Plain IP-Adapters use the pooled embedding and no blank image: diffusers' own path.
                embeds = pipeline.prepare_ip_adapter_image_embeds(face_crop, None, pipeline.device, 1, guided)
                return {"ip_adapter_image_embeds": embeds}
            encoder = pipeline.image_encoder
            pixels = pipeline.feature_extractor(face_crop, return_tensors="pt").pixel_values
            pixels = pixels.to(device=pipeline.device, dtype=next(encoder.parameters()).dtype)
            face = encoder(pixels, output_hidden_states=True).hidden_states[-2][None]
            if guided:
                face = torch.cat([self._blank_face_hidden_states(pixels), face])
        return {"ip_adapter_image_embeds": [face]}

    def _blank_face_hidden_states(self, pixels: torch.Tensor) -> torch.Tensor:
        """The image encoder's view of a blank picture (guidance's unconditional face), encoded once."""
        key = (tuple(pixels.shape), pixels.dtype, pixels.device)
        if self._blank_face is None or self._blank_face[0] != key:
            hidden = self.pipeline.image_encoder(torch.zeros_like(pixels), output_hidden_states=True).hidden_states[-2]
            self._blank_face = (key, hidden[None])
        return self._blank_face[1]

    # ------------------------------------------------------------------ generation

    def generate(
        self,
        request: GenerateRequest,
        on_progress: ProgressCallback | None = None,
        *,
        overrides: ScaleOverrides | None = None,
        deadline: float | None = None,
        on_preview: PreviewCallback | None = None,
    ) -> GenerateResult:
        """Run one job; raise :class:`MmppError` for anything a user can fix.

        ``deadline`` is a ``time.monotonic()`` value; past it the denoising
        loop stops with ``TIMEOUT`` between two steps.  ``on_preview`` gets
        small JPEGs of the picture being painted; previews are best effort and
        never fail or hold up the job.
        """
        timings: dict[str, float] = {}

        def timed(stage: str, started_at: float) -> None:
            timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - started_at

        started = time.perf_counter()
        self.check_family(request)
        plan = self.plan(request, overrides)
        mark = time.perf_counter()
        identity = self.identity_image(request, plan)
        timed("face", mark)
        with self._lock:
            mark = time.perf_counter()
            self.configure(plan)
            timed("adapters", mark)
            mark = time.perf_counter()
            conditioning = self.encode_prompt(plan.prompt, plan.negative_prompt)
            timed("prompt", mark)
            mark = time.perf_counter()
            conditioning.update(self.encode_face(identity, plan.classifier_free_guidance))
            timed("face_embedding", mark)
            images: list[tuple[Image.Image, int]] = []
            for batch_index, seeds in enumerate(plan.batches):
                batch_images, stage_times = self._denoise_and_decode(
                    plan, conditioning, seeds, batch_index, on_progress, on_preview, deadline
                )
                images.extend(zip(batch_images, seeds, strict=True))
                for stage, seconds in stage_times.items():
                    timings[stage] = timings.get(stage, 0.0) + seconds
        mark = time.perf_counter()
        flags = self.safety.flagged([image for image, _ in images])
        timed("safety", mark)
        mark = time.perf_counter()
        pictures = [
            Picture(png=encode_png(image), seed=seed)
            for (image, seed), flagged in zip(images, flags, strict=True)
            if not flagged
        ]
        timed("encode", mark)
        if not pictures:
            raise MmppError(
                ErrorCode.OUTPUT_BLOCKED,
                "The safety filter withheld the pictures; try another style or prompt.",
            )
        if len(pictures) < len(images):
            logger.info(
                "job %s: the safety filter withheld %d of %d pictures",
                request.job_id,
                len(images) - len(pictures),
                len(images),
            )
        timings["total"] = time.perf_counter() - started
        return GenerateResult(
            pictures=pictures,
            style=plan.style.name,
            variant=plan.style.variant,
            family=self.family,
            mode=plan.mode.value,
            steps=plan.steps,
            guidance=plan.guidance,
            scales=plan.scales,
            timings={stage: round(seconds, 4) for stage, seconds in timings.items()},
            model=self.sources.label or self.sources.base,
            test_sized_model=self.sources.test_sized,
            safety_check=self.safety.status,
            job_id=request.job_id,
        )

    def check_family(self, request: GenerateRequest) -> None:
        """Refuse, with ``WRONG_FAMILY``, a job this worker's family must not render: one the bot sent for another
        family (``request.family``), or a variant the catalogue gives to another family.  Rendering it anyway
        would put this model's pictures into the other family's experiment (and its ratings) under its name."""
        request.validate()
        declared = self.catalogue.get(request.style).with_variant(request.variant).family
        wanted = next((family for family in (request.family, declared) if family and family != self.family), "")
        if wanted:
            raise MmppError(
                ErrorCode.WRONG_FAMILY,
                f"This job needs a {wanted} worker and reached a {self.family} worker; it was not painted "
                "(the bot's MMPP_FAMILY_QUEUES or the worker's --queues send it to the wrong workers).",
            )

    def identity_image(self, request: GenerateRequest, plan: JobPlan) -> Image.Image:
        """What the IP-Adapter sees: the selfie's face crop, or for an upscale the picture itself (UpscalePlan)."""
        if plan.upscale is not None:
            return plan.upscale.identity
        return self.face_analyzer.prepare_selfie(request.selfie).crop

    def pipeline_arguments(self, plan: JobPlan, conditioning: dict[str, Any], seeds: list[int]) -> dict[str, Any]:
        """The exact keyword arguments of one batched diffusers call (the benchmark reuses them).

        One generator per picture, seeded with that picture's seed: diffusers
        draws each picture's starting noise from its own generator, so every
        picture keeps the seed recorded for it, whatever the batch.
        """
        arguments: dict[str, Any] = {
            **conditioning,
            "num_inference_steps": plan.steps,
            "guidance_scale": plan.guidance,
            "num_images_per_prompt": len(seeds),
            "generator": [torch.Generator("cpu").manual_seed(seed) for seed in seeds],
            "output_type": "pil",
        }
        if plan.upscale is not None:  # the size is the doubled picture's
            return {**arguments, "image": plan.upscale.image, "strength": plan.upscale.strength}
        width, height = self.output_size()
        return {**arguments, "width": width, "height": height}

    def _denoise_and_decode(
        self,
        plan: JobPlan,
        conditioning: dict[str, Any],
        seeds: list[int],
        batch_index: int,
        on_progress: ProgressCallback | None,
        on_preview: PreviewCallback | None,
        deadline: float | None,
    ) -> tuple[list[Image.Image], dict[str, float]]:
        started = time.perf_counter()
        denoise_end = [started]
        preview_seconds = [0.0]
        last_preview = [time.monotonic()]

        def on_step_end(pipeline: Any, step: int, timestep: Any, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
            if deadline is not None and time.monotonic() > deadline:
                raise MmppError(ErrorCode.TIMEOUT, "The job took too long and was stopped; try fast mode.")
            done = batch_index * plan.painted_steps + step + 1
            if on_progress is not None:
                on_progress(done, plan.total_steps)
            if on_preview is not None and self._preview_due(step + 1, plan.painted_steps, last_preview[0]):
                mark = time.perf_counter()
                last_preview[0] = time.monotonic()
                self._send_preview(callback_kwargs["latents"], done, plan.total_steps, on_preview)
                preview_seconds[0] += time.perf_counter() - mark
            denoise_end[0] = time.perf_counter()
            return callback_kwargs

        arguments = self.pipeline_arguments(plan, conditioning, seeds)
        pipeline = self.pipeline if plan.upscale is None else self.image_to_image_pipeline()
        with torch.inference_mode():
            output = pipeline(**arguments, callback_on_step_end=on_step_end)
        finished = time.perf_counter()
        stages = {
            "denoise": denoise_end[0] - started - preview_seconds[0],
            "vae_decode": finished - denoise_end[0],
        }
        if preview_seconds[0]:
            stages["preview"] = preview_seconds[0]
        return output.images, stages

    @property
    def previews_available(self) -> bool:
        """Whether this engine can draw a live preview: the SD families need their tiny decoder for it."""
        return self.tiny_decoder is not None

    def _preview_due(self, step: int, steps: int, last_sent: float) -> bool:
        """Every ``preview_every_steps`` steps, not more often than ``preview_min_seconds``, never on the last step."""
        if not self.previews_available or self.preview_every_steps <= 0 or step >= steps:
            return False
        if step % self.preview_every_steps:
            return False
        return time.monotonic() - last_sent >= self.preview_min_seconds

    def _send_preview(self, latents: torch.Tensor, done: int, total: int, on_preview: PreviewCallback) -> None:
        try:
            on_preview(done, total, self.preview_jpeg(latents[:1]))
        except Exception:  # a preview is best effort: it must never fail the job
            logger.warning("a preview failed; the job goes on without it", exc_info=True)

    def preview_jpeg(self, latents: torch.Tensor) -> bytes:
        """The current latents of one picture (as the step callback sees them), as a small JPEG."""
        image = self._preview_image(latents)
        image.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE), Image.Resampling.BILINEAR)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=PREVIEW_QUALITY)
        return buffer.getvalue()

    def _preview_image(self, latents: torch.Tensor) -> Image.Image:
        """The tiny decoder's view of the current latents; a family without one replaces this hook."""
        with torch.inference_mode():
            decoded = self.tiny_decoder.decode(latents.to(self.tiny_decoder.dtype), return_dict=False)[0]
        pixels = ((decoded[0].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).cpu()
        return Image.fromarray(pixels.numpy())


def engine_class_for(family: str, requested: type[Engine]) -> type[Engine]:
    """The engine class of ``family``: :class:`Engine` holds the story and the SD families, a family with other
    parts (prompt handling, identity, scheduler) subclasses it and replaces its hooks.  A subclass asked for
    by name (tests, benchmarks) is kept."""
    if requested is not Engine:
        return requested
    if family == KLEIN:
        from engine.klein import KleinEngine

        return KleinEngine
    return Engine


def load_tiny_decoder(source: WeightSource | None, device: torch.device, dtype: torch.dtype) -> Any:
    """The AutoencoderTiny for fast-mode decoding and previews, or ``None`` with one log line.

    Optional by design: without it fast mode decodes with the full VAE (slower,
    same meaning) and no previews are sent.
    """
    if source is None:
        return None
    from diffusers import AutoencoderTiny

    try:
        decoder = AutoencoderTiny.from_pretrained(source.location, dtype=dtype)
    except Exception as error:  # noqa: BLE001 - any failure means: do without it
        logger.info(
            "tiny decoder %s not loaded (%s): fast mode decodes with the full VAE, and no previews are sent",
            source.describe(),
            type(error).__name__,
        )
        return None
    return decoder.to(device)


def quiet_libraries() -> None:
    """Silence the libraries' progress bars and advice meant for notebooks.

    A worker's log should hold our job lines; diffusers' per-load progress
    bars and peft's "multiple adapters" warning (we mean it) drown them.
    """
    import warnings

    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
    warnings.filterwarnings("ignore", message=".*requires torchvision.*")


def encode_png(image: Image.Image) -> bytes:
    """PNG with no metadata: nothing of the upload (EXIF, GPS) can leak out."""
    clean = Image.new("RGB", image.size)
    clean.paste(image.convert("RGB"))
    buffer = io.BytesIO()
    clean.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


#: The largest magnitude an embedding may hold: float16's largest finite value.  Beyond it the UNet, in
#: float16 on most GPUs, would read infinities; nothing a bounded prompt weight gives comes near it.
EMBEDDING_LIMIT = float(torch.finfo(torch.float16).max)


def embedding_in_range(embedding: torch.Tensor) -> bool:
    """Whether every value is finite and within :data:`EMBEDDING_LIMIT` (checked in float32, as computed)."""
    values = embedding.detach().float()
    return bool(torch.isfinite(values).all()) and float(values.abs().max()) <= EMBEDDING_LIMIT


def _scaled(state: dict[str, torch.Tensor], scale: float) -> dict[str, torch.Tensor]:
    """A LoRA state dict whose effect is multiplied by ``scale`` (via its up/B matrices)."""
    scaled = {}
    for key, value in state.items():
        is_up = ".lora_B." in key or ".lora.up." in key or "lora_up" in key
        scaled[key] = value * scale if is_up else value.clone()
    return scaled


def _lora_rank(state: dict[str, torch.Tensor]) -> int:
    ranks = [
        value.shape[0]
        for key, value in state.items()
        if (".lora_A." in key or "lora.down" in key or "lora_down" in key) and value.ndim >= 2
    ]
    return max(ranks, default=4)
